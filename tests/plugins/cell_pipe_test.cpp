// pipe.cell through a site's cell listener, over mutual TLS: both ends join the site with the site's
// certificate and the job's token, frames cross in order both ways, and the site keeps out a process that
// does not hold the token or the site's certificate. (Self-hosted, it runs the conformance suite and the
// session and job end-to-end tests like every pipe.)

#include <sys/stat.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/pipe.hpp>

#include "cell/cell.hpp"
#include "provision/certs.hpp"
#include "provision/files.hpp"
#include "support.hpp"

namespace ember {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

class NullLogger final : public Logger {
 public:
  void log(LogLevel, std::string_view) noexcept override {}
  bool enabled(LogLevel) const noexcept override { return false; }
  std::string_view name() const noexcept override { return "test"; }
};

class CellPipeThroughASite : public ::testing::Test {
 protected:
  void SetUp() override {
    kernel_ = test::kernel_with_paths({test::build_root() / "plugins"}, ws_.path());
    ASSERT_TRUE(kernel_->registry().contains("pipe.cell"));
    auto ca = provision::make_ca("pipe test CA", 2);
    ASSERT_TRUE(ca);
    auto now = provision::Clock::now();
    for (const char* site : {"site-1", "site-2"}) {
      auto own = provision::issue(*ca, site, provision::Role::site, {}, now - std::chrono::hours(1),
                                  now + std::chrono::hours(24));
      ASSERT_TRUE(own);
      auto dir = ws_.path() / site;
      ASSERT_TRUE(provision::make_dir(dir, 0700));
      ASSERT_TRUE(provision::write_file_atomic(dir / "ca.crt", ca->cert_pem, 0644));
      ASSERT_TRUE(provision::write_file_atomic(dir / "cert.crt", own->cert_pem, 0644));
      ASSERT_TRUE(provision::write_file_atomic(dir / "cert.key", own->key_pem, 0600));
    }
    cell::Config config;
    config.fqcn = "site-1";
    config.listen = "127.0.0.1:0";
    config.tls = cell::TlsFiles{ws_.path() / "site-1" / "ca.crt", ws_.path() / "site-1" / "cert.crt",
                                ws_.path() / "site-1" / "cert.key"};
    auto site = cell::Cell::start(config, std::make_shared<NullLogger>());
    ASSERT_TRUE(site) << site.error().message;
    site_ = std::move(*site);
    site_->admit_job("J", "job-secret");
    token_file_ = ws_.write("job.token", "job-secret\n");
    ::chmod(token_file_.c_str(), 0600);
  }

  Options options(const std::string& kit, const fs::path& token_file) {
    Options o;
    o.set("site_address", site_->listen_address());
    o.set("site", std::string("site-1"));
    o.set("job_id", std::string("J"));
    o.set("token_file", token_file.string());
    o.set("ca", (ws_.path() / kit / "ca.crt").string());
    o.set("cert", (ws_.path() / kit / "cert.crt").string());
    o.set("key", (ws_.path() / kit / "cert.key").string());
    o.set("server_name", std::string("site-1"));
    return o;
  }

  std::shared_ptr<Pipe> make(Options o) {
    auto pipe = kernel_->registry().create_as<Pipe>("pipe.cell", o, "pipe");
    EXPECT_TRUE(pipe) << pipe.error().message;
    return pipe ? *pipe : nullptr;
  }

  test::TempDir ws_;
  std::unique_ptr<kernel::Kernel> kernel_;
  std::unique_ptr<cell::Cell> site_;
  fs::path token_file_;
};

TEST_F(CellPipeThroughASite, FramesCrossInOrderBothWaysAndTheCloseIsSeen) {
  auto job_pipe = make(options("site-1", token_file_));
  ASSERT_TRUE(job_pipe);
  auto job = job_pipe->open(PipeSide::job, 5s);
  ASSERT_TRUE(job) << job.error().message;
  EXPECT_THAT(job_pipe->address(), HasSubstr("/site-1.J.pipe-trainer/site-1.J.trainer"));
  auto trainer_options = options("site-1", token_file_);
  trainer_options.set("address", job_pipe->address());
  auto trainer_pipe = make(trainer_options);
  ASSERT_TRUE(trainer_pipe);
  auto trainer = trainer_pipe->open(PipeSide::trainer, 5s);
  ASSERT_TRUE(trainer) << trainer.error().message;
  // Many frames of mixed sizes, small ones among big ones: they arrive in the order they were sent.
  std::vector<std::vector<std::byte>> sent;
  for (std::size_t i = 0; i < 40; ++i) {
    std::size_t size = i % 5 == 0 ? (6u << 20) + i : 10 + i;
    std::vector<std::byte> frame(size, static_cast<std::byte>(i));
    ASSERT_TRUE((*job)->send(frame, 10s));
    sent.push_back(std::move(frame));
  }
  for (std::size_t i = 0; i < sent.size(); ++i) {
    auto got = (*trainer)->receive(10s);
    ASSERT_TRUE(got && got->has_value()) << i;
    EXPECT_EQ(**got, sent[i]) << i;
  }
  std::vector<std::byte> back(1000, std::byte{9});
  ASSERT_TRUE((*trainer)->send(back, 5s));
  auto got = (*job)->receive(5s);
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ(**got, back);
  (*trainer)->close();
  Result<std::optional<std::vector<std::byte>>> after = std::optional<std::vector<std::byte>>();
  for (int i = 0; i < 50 && after && !after->has_value(); ++i) {
    after = (*job)->receive(100ms);
  }
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().code, Errc::closed);
}

TEST_F(CellPipeThroughASite, TheSiteKeepsOutAWrongTokenAndAnotherSitesCertificate) {
  auto job_pipe = make(options("site-1", token_file_));
  auto job = job_pipe->open(PipeSide::job, 5s);
  ASSERT_TRUE(job) << job.error().message;
  auto wrong = ws_.write("wrong.token", "guess\n");
  ::chmod(wrong.c_str(), 0600);
  auto stranger_options = options("site-1", wrong);
  stranger_options.set("address", job_pipe->address());
  auto stranger = make(stranger_options)->open(PipeSide::trainer, 1500ms);
  ASSERT_FALSE(stranger);
  EXPECT_THAT(stranger.error().message, HasSubstr("wrong token for job 'J'"));
  auto other_site = options("site-2", token_file_);
  other_site.set("address", job_pipe->address());
  // site-2's kit names site-2: the pipe's own check refuses it before any connection.
  auto refused = make(other_site)->open(PipeSide::trainer, 1500ms);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, HasSubstr("is for 'site-2', but this cell is 'site-1"));
  // A token file others can read is refused.
  ::chmod(token_file_.c_str(), 0644);
  auto loose = make(options("site-1", token_file_))->open(PipeSide::job, 1s);
  ASSERT_FALSE(loose);
  EXPECT_THAT(loose.error().message, HasSubstr("readable by others"));
}

TEST_F(CellPipeThroughASite, OptionsThatCannotWorkAreRefusedAtCreate) {
  Options half;
  half.set("ca", std::string("/x/ca.crt"));
  auto made = kernel_->registry().create_as<Pipe>("pipe.cell", half, "pipe");
  ASSERT_FALSE(made);
  EXPECT_THAT(made.error().message, HasSubstr("ca, cert and key are given together"));
  Options remote;
  remote.set("listen", std::string("0.0.0.0:0"));
  made = kernel_->registry().create_as<Pipe>("pipe.cell", remote, "pipe");
  ASSERT_FALSE(made);
  EXPECT_THAT(made.error().message, HasSubstr("loopback"));
  Options channel;
  channel.set("channel", std::string("a.b"));
  made = kernel_->registry().create_as<Pipe>("pipe.cell", channel, "pipe");
  ASSERT_FALSE(made);
  EXPECT_THAT(made.error().message, HasSubstr("one name part"));
}

}  // namespace
}  // namespace ember
