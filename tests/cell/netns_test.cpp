// The cell network across real interfaces: the server and each site run as processes in network namespaces
// of their own, joined by veth pairs this test makes (addresses only inside those namespaces), over mutual
// TLS. A site's link is cut for longer than the keepalive: the server reports it gone, and the site comes
// back when the link does. Where namespaces cannot be made (not root, no `ip`), it says so and exits 77.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "netns.hpp"
#include "provision/certs.hpp"
#include "provision/files.hpp"

namespace {

using namespace std::chrono_literals;
using ember::test::in_ns;
using ember::test::Namespaces;
using ember::test::sh;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string tag() {
  return std::to_string(::getpid() % 100000);
}

// A child process with its stdin and stdout on pipes, killed (with its group) when it goes out of scope.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv) {
    int in[2];
    int out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) {
      return;
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setpgid(0, 0);
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      std::vector<char*> args;
      for (const auto& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
      }
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = in[1];
    from_ = out[0];
  }
  ~Child() { stop(); }

  void say(const std::string& line) {
    std::string text = line + "\n";
    [[maybe_unused]] auto n = ::write(to_, text.data(), text.size());
  }

  // The next line that starts with `prefix`, within `bound`.
  std::optional<std::string> wait_for(const std::string& prefix, std::chrono::milliseconds bound) {
    auto deadline = Clock::now() + bound;
    for (;;) {
      for (auto nl = buffer_.find('\n'); nl != std::string::npos; nl = buffer_.find('\n')) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        seen_ += line + "\n";
        if (line.rfind(prefix, 0) == 0) {
          return line;
        }
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        return std::nullopt;
      }
      pollfd pfd{from_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) {
        continue;
      }
      char chunk[4096];
      auto n = ::read(from_, chunk, sizeof chunk);
      if (n <= 0) {
        return std::nullopt;
      }
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }
  const std::string& seen() const { return seen_; }

  void stop() {
    if (pid_ > 0) {
      ::close(to_);
      ::kill(-pid_, SIGTERM);
      for (int i = 0; i < 20; ++i) {
        if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
          pid_ = -1;
          break;
        }
        std::this_thread::sleep_for(50ms);
      }
      if (pid_ > 0) {
        ::kill(-pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        pid_ = -1;
      }
      ::close(from_);
    }
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
  std::string buffer_;
  std::string seen_;
};

fs::path cell_node() {
  return fs::path(EMBER_CELL_NODE);
}

struct Kit {
  fs::path dir;
};

void write_kit(const fs::path& root, const std::string& name, const ember::provision::Credentials& ca,
               ember::provision::Role role, const std::vector<std::string>& sans) {
  using namespace ember::provision;
  auto now = ember::provision::Clock::now();
  auto own = issue(ca, name, role, sans, now - std::chrono::hours(1), now + std::chrono::hours(24));
  ASSERT_TRUE(own) << own.error().message;
  auto dir = root / name;
  ASSERT_TRUE(make_dir(dir, 0700));
  ASSERT_TRUE(write_file_atomic(dir / "ca.crt", ca.cert_pem, 0644));
  ASSERT_TRUE(write_file_atomic(dir / "cert.crt", own->cert_pem, 0644));
  ASSERT_TRUE(write_file_atomic(dir / "cert.key", own->key_pem, 0600));
}

TEST(CellAcrossNamespaces, RoutesOverRealInterfacesAndSurvivesACutLink) {
  Namespaces nets;
  std::string why;
  ASSERT_TRUE(nets.make(why)) << why;  // main() probed that this works
  auto root = fs::temp_directory_path() / ("ember-netns-" + tag());
  fs::create_directories(root);
  std::shared_ptr<void> cleanup(nullptr, [&](void*) { fs::remove_all(root); });
  auto ca = ember::provision::make_ca("netns test CA", 2);
  ASSERT_TRUE(ca);
  write_kit(root, "server", *ca, ember::provision::Role::server, {"10.231.1.1", "10.231.2.1"});
  write_kit(root, "site-1", *ca, ember::provision::Role::site, {});
  write_kit(root, "site-2", *ca, ember::provision::Role::site, {});
  std::vector<std::string> fast{"--keepalive-ms",   "1000", "--keepalive-timeout-ms", "1000",
                                "--backoff-max-ms", "1000"};
  auto args = [&](std::vector<std::string> a) {
    a.insert(a.end(), fast.begin(), fast.end());
    return a;
  };
  Child server(
      in_ns(nets.ns("srv"), args({cell_node().string(), "--fqcn", "server", "--listen", "0.0.0.0:7001",
                                  "--kit", (root / "server").string(), "--allow", "site-1,site-2"})));
  ASSERT_TRUE(server.wait_for("LISTEN", 10s)) << server.seen();
  Child site1(
      in_ns(nets.ns("s1"), args({cell_node().string(), "--fqcn", "site-1", "--parent", "10.231.1.1:7001",
                                 "--parent-name", "server", "--listen", "127.0.0.1:7002", "--kit",
                                 (root / "site-1").string(), "--admit", "J=job-token"})));
  Child site2(
      in_ns(nets.ns("s2"), args({cell_node().string(), "--fqcn", "site-2", "--parent", "10.231.2.1:7001",
                                 "--parent-name", "server", "--kit", (root / "site-2").string()})));
  ASSERT_TRUE(site1.wait_for("PARENT_UP", 10s)) << site1.seen();
  ASSERT_TRUE(site2.wait_for("PARENT_UP", 10s)) << site2.seen();
  // A job on site-1's host joins the site's internal listener with the site's certificate and its token.
  Child job(in_ns(nets.ns("s1"), args({cell_node().string(), "--fqcn", "site-1.J", "--parent",
                                       "127.0.0.1:7002", "--parent-name", "site-1", "--kit",
                                       (root / "site-1").string(), "--token", "job-token"})));
  ASSERT_TRUE(job.wait_for("PARENT_UP", 10s)) << job.seen();

  // Server to the job through its site, across a veth; and site-2 to it, across both.
  server.say("request site-1.J sink 10485760 10000");
  auto reply = server.wait_for("REPLY", 20s);
  ASSERT_TRUE(reply) << server.seen();
  EXPECT_NE(reply->find("rc=ok bytes=10485760"), std::string::npos) << *reply;
  auto crc = reply->substr(reply->find(" crc=") + 5);
  auto sent = reply->substr(reply->find("sent_crc=") + 9);
  EXPECT_EQ(crc.substr(0, crc.find(' ')), sent.substr(0, sent.find(' '))) << *reply;
  site2.say("request site-1.J echo 1000 10000");
  reply = site2.wait_for("REPLY", 20s);
  ASSERT_TRUE(reply) << site2.seen();
  EXPECT_NE(reply->find("rc=ok bytes=1000"), std::string::npos) << *reply;

  // Cut site-1's link (the server's end: packets vanish, no error) for longer than the keepalive.
  ASSERT_EQ(sh("ip -n " + nets.ns("srv") + " link set " + nets.veth("s1", 0) + " down"), 0);
  auto cut = Clock::now();
  auto left = server.wait_for("LEFT site-1", 10s);
  ASSERT_TRUE(left) << server.seen();
  std::cerr << "server noticed the cut after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - cut).count()
            << " ms: " << *left << "\n";
  server.say("children");
  auto child = server.wait_for("CHILD site-1", 5s);
  ASSERT_TRUE(child) << server.seen();
  EXPECT_NE(child->find("connected=0"), std::string::npos) << *child;
  server.say("request site-1.J echo 10 2000");
  reply = server.wait_for("REPLY", 5s);
  ASSERT_TRUE(reply);
  EXPECT_NE(reply->find("rc=unreachable"), std::string::npos) << *reply;
  // site-2 goes on meanwhile.
  server.say("request site-2 echo 10 5000");
  reply = server.wait_for("REPLY", 10s);
  ASSERT_TRUE(reply);
  EXPECT_NE(reply->find("rc=ok"), std::string::npos) << *reply;

  // The link comes back: site-1 joins again by itself.
  ASSERT_EQ(sh("ip -n " + nets.ns("srv") + " link set " + nets.veth("s1", 0) + " up"), 0);
  auto back = Clock::now();
  ASSERT_TRUE(server.wait_for("JOINED site-1", 20s)) << server.seen() << site1.seen();
  std::cerr << "site-1 joined again "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - back).count()
            << " ms after the link came back\n";
  server.say("request site-1.J sink 1048576 10000");
  reply = server.wait_for("REPLY", 20s);
  ASSERT_TRUE(reply);
  EXPECT_NE(reply->find("rc=ok bytes=1048576"), std::string::npos) << *reply;
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // The real part needs network namespaces; where they cannot be made, say so and skip (77), never pass.
  if (std::string why; !ember::test::can_make_namespaces(why)) {
    std::cout << "SKIP: " << why << "\n";
    return 77;
  }
  return RUN_ALL_TESTS();
}
