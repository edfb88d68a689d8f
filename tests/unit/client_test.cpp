// The Client API without a job: the bootstrap file's checks, and what ranks other than 0 are told.

#include <sys/stat.h>

#include <fstream>
#include <iterator>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/client.hpp>

#include <nlohmann/json.hpp>

#include "session/bootstrap.hpp"
#include "support.hpp"

namespace ember {
namespace {

using ::testing::HasSubstr;

session::Bootstrap sample() {
  session::Bootstrap b;
  b.job_id = "job-1";
  b.job_name = "hello";
  b.site = "site-1";
  b.token = std::string(64, 'c');
  b.workspace = "/tmp/ws";
  b.pipe.type = "pipe.socket";
  b.pipe.file = "/x/ember-pipe-socket.so";
  b.pipe.options.set("address", std::string("unix:/tmp/ws/t.sock"));
  b.pipe.options.set("max_frame_bytes", std::int64_t{1024});
  b.pipe.options.set("allow_remote", false);
  b.pipe.options.set("ratio", 0.25);
  b.pipe.options.set("idle", std::chrono::milliseconds(1500));
  b.pipe.options.set("list", std::vector<std::string>{"a", "b"});
  b.converters.push_back(session::ComponentRef{"converter.torch", "", {}});
  b.timeouts.launch = std::chrono::milliseconds(1234);
  b.max_resends = 5;
  b.plugin_paths = {"/p1", "/p2"};
  b.config_json = R"({"lr":0.5,"nested":{"k":[1,2]}})";
  b.task_names.train = "fit";
  return b;
}

TEST(Bootstrap, RoundTripsEveryFieldAndOptionType) {
  test::TempDir dir;
  auto file = dir.path() / "bootstrap.json";
  ASSERT_TRUE(session::write_bootstrap(file, sample()));
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto back = session::read_bootstrap(file);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->job_id, "job-1");
  EXPECT_EQ(back->site, "site-1");
  EXPECT_EQ(back->token, std::string(64, 'c'));
  EXPECT_EQ(back->pipe.type, "pipe.socket");
  EXPECT_EQ(back->pipe.options.values(), sample().pipe.options.values());
  ASSERT_EQ(back->converters.size(), 1u);
  EXPECT_EQ(back->converters[0].type, "converter.torch");
  EXPECT_EQ(back->timeouts.launch, std::chrono::milliseconds(1234));
  EXPECT_EQ(back->max_resends, 5);
  EXPECT_EQ(back->plugin_paths, (std::vector<std::filesystem::path>{"/p1", "/p2"}));
  EXPECT_EQ(back->config_json, R"({"lr":0.5,"nested":{"k":[1,2]}})");
  EXPECT_EQ(back->task_names.train, "fit");
  EXPECT_EQ(back->task_names.evaluate, "evaluate");
}

TEST(Bootstrap, AFileWithoutTheOptionalKeysGetsTheirDefaults) {
  test::TempDir dir;
  auto file = dir.path() / "bootstrap.json";
  ASSERT_TRUE(session::write_bootstrap(file, sample()));
  std::string text;
  {
    std::ifstream in(file);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto doc = nlohmann::json::parse(text);
  doc.erase("config");
  doc.erase("task_names");
  auto older = dir.write("older.json", doc.dump());
  ::chmod(older.c_str(), 0600);
  auto back = session::read_bootstrap(older);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->config_json, "{}");
  EXPECT_EQ(back->task_names.train, "train");
  doc["task_names"] = {{"train", 3}};
  auto wrong = dir.write("wrong.json", doc.dump());
  ::chmod(wrong.c_str(), 0600);
  auto refused = session::read_bootstrap(wrong);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, HasSubstr("wrong.json: key 'task_names.train': must be a string"));
}

TEST(Bootstrap, AFileOthersCanReadIsRefused) {
  test::TempDir dir;
  auto file = dir.path() / "bootstrap.json";
  ASSERT_TRUE(session::write_bootstrap(file, sample()));
  ::chmod(file.c_str(), 0644);
  auto back = session::read_bootstrap(file);
  ASSERT_FALSE(back);
  EXPECT_EQ(back.error().code, Errc::invalid_config);
  EXPECT_THAT(back.error().message, HasSubstr("must not be readable by group or others"));
}

TEST(Bootstrap, AMissingOrMistypedKeyIsNamed) {
  test::TempDir dir;
  auto file = dir.path() / "bootstrap.json";
  ASSERT_TRUE(session::write_bootstrap(file, sample()));
  std::string text;
  {
    std::ifstream in(file);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto at = text.find("\"max_resends\": 5");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 16, "\"max_resends\": \"5\"");
  auto broken = dir.write("broken.json", text);
  ::chmod(broken.c_str(), 0600);
  auto back = session::read_bootstrap(broken);
  ASSERT_FALSE(back);
  EXPECT_THAT(back.error().message, HasSubstr("broken.json: key 'max_resends': must be an integer"));
}

TEST(ClientApi, RanksOtherThanZeroGetAClearAnswer) {
  ASSERT_TRUE(client::init(client::InitOptions{"/nonexistent/bootstrap.json", 3}));
  EXPECT_FALSE(client::is_rank0());
  EXPECT_TRUE(client::is_running());
  auto got = client::receive(std::chrono::milliseconds(10));
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, Errc::unsupported);
  EXPECT_THAT(got.error().message, HasSubstr("rank 3 does not talk to the job"));
  auto sent = client::send(client::FLModel{});
  ASSERT_FALSE(sent);
  EXPECT_EQ(sent.error().code, Errc::unsupported);
  EXPECT_EQ(client::get_config(), "{}");
  EXPECT_EQ(client::config_value("lr"), std::nullopt);
  EXPECT_TRUE(client::clear("nothing to decline")) << "without a task, clear() does nothing";
  auto again = client::init();  // warns, and the first init's state stays
  EXPECT_TRUE(again);
  EXPECT_FALSE(client::is_rank0());
  client::shutdown();
  EXPECT_FALSE(client::is_running());
}

}  // namespace
}  // namespace ember
