// A federation across network namespaces: `ember server` in a namespace of its own and each `ember client`
// in another, joined by veth pairs this test makes (addresses only inside those namespaces), over mutual TLS.
// The admin runs in site-1's namespace. A job runs to its end, its trainers inside the sites' namespaces;
// then an abort mid-round leaves nothing. Where namespaces cannot be made, it says so and exits 77 (a skip).

#include <fstream>
#include <iostream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "child.hpp"
#include "cli_run.hpp"
#include "netns.hpp"
#include "support.hpp"

namespace ember {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test::slowdown;

class FederationAcrossNamespaces : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    ASSERT_TRUE(nets_.make(why)) << why;
    const std::string port = "18123";
    dir_.write("project.toml", "[project]\nname = \"netns\"\n[server]\nhosts = [\"" +
                                   test::Namespaces::server_address(1) + "\", \"" +
                                   test::Namespaces::server_address(2) + "\"]\nport = " + port +
                                   "\n[[sites]]\nname = \"site-1\"\n[[sites]]\nname = \"site-2\"\n"
                                   "[[admins]]\nname = \"ops@example.org\"\n");
    ASSERT_EQ(
        test::cli({"provision", (dir_.path() / "project.toml").string(), "--out", kits().string()}).code, 0);
    // site-2 reaches the server on its own link.
    std::ifstream in(kits() / "site-2" / "kit.toml");
    std::string kit((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto at = kit.find(test::Namespaces::server_address(1));
    ASSERT_NE(at, std::string::npos) << kit;
    kit.replace(at, test::Namespaces::server_address(1).size(), test::Namespaces::server_address(2));
    std::ofstream(kits() / "site-2" / "kit.toml") << kit;

    server_ = start("srv", {"server", (kits() / "server").string()}, "server");
    ASSERT_TRUE(server_->wait_for_output("ember server: project netns", 30s)) << server_->output();
    site1_ = start("s1", {"client", (kits() / "site-1").string()}, "site-1");
    site2_ = start("s2", {"client", (kits() / "site-2").string()}, "site-2");
    const auto deadline = Clock::now() + 30s;
    while (Clock::now() < deadline) {
      std::size_t connected = 0;
      for (const auto& s : admin({"status"}).value("sites", json::array())) {
        connected += s.value("connected", false) ? 1 : 0;
      }
      if (connected == 2) {
        return;
      }
      std::this_thread::sleep_for(200ms);
    }
    FAIL() << "the sites did not join across the namespaces\n" << site1_->output() << site2_->output();
  }

  void TearDown() override {
    site1_.reset();
    site2_.reset();
    server_.reset();
  }

  fs::path kits() const { return dir_.path() / "kits"; }

  std::unique_ptr<test::Child> start(const std::string& ns, std::vector<std::string> args,
                                     const std::string& name) {
    args.insert(args.begin(), EMBER_EXE);
    args.insert(args.end(), {"--workspace", (dir_.path() / (name + "-ws")).string()});
    return std::make_unique<test::Child>(test::in_ns(nets_.ns(ns), args), dir_.path() / (name + ".log"));
  }

  // An admin command in site-1's namespace, its JSON answer.
  json admin(std::vector<std::string> args) {
    args.insert(args.begin(), EMBER_EXE);
    args.insert(args.end(), {"--kit", (kits() / "ops@example.org").string(), "--json"});
    auto run = test::run_program(test::in_ns(nets_.ns("s1"), args), 60);
    EXPECT_EQ(run.exit_code, 0) << run.err;
    auto parsed = json::parse(run.out, nullptr, false);
    EXPECT_TRUE(parsed.is_object()) << run.out;
    return parsed.is_object() ? parsed : json::object();
  }

  json wait_job(const std::string& id, const std::function<bool(const json&)>& done) {
    const auto deadline = Clock::now() + 90s;
    json last;
    while (Clock::now() < deadline) {
      last = admin({"status", id});
      if (done(last)) {
        return last;
      }
      std::this_thread::sleep_for(200ms);
    }
    ADD_FAILURE() << "job " << id << ": " << last.dump();
    return last;
  }

  fs::path write_job(const std::string& name, int rounds, int delay_ms) {
    const fs::path job = dir_.path() / name;
    fs::create_directories(job);
    std::ofstream(job / "job.toml")
        << "schema_version = 1\n[job]\nname = \"" << name << "\"\n[timeouts]\nlaunch = \"20s\"\n"
        << "task_wait = \"10s\"\nresult_wait = \"2m\"\nshutdown_grace = \"2s\"\n"
        << "[components.fedavg]\ntype = \"workflow.fedavg\"\nrounds = " << rounds << "\nmin_clients = 2\n"
        << "[components.trainer]\ntype = \"executor.external-trainer\"\ncommand = [\"" EMBER_TEST_TRAINER
           "\", \"--delay-ms\", \""
        << delay_ms << "\"]\n[components.launcher]\ntype = \"launcher.process\"\n"
        << "[components.pipe]\ntype = \"pipe.socket\"\n";
    return job;
  }

  // Processes below the daemons (`ip netns exec` execs the daemon, so these are its jobs and trainers).
  std::size_t left() {
    std::size_t n = 0;
    for (auto* c : {server_.get(), site1_.get(), site2_.get()}) {
      n += test::descendants(c->pid()).size();
    }
    return n;
  }

  test::Namespaces nets_;
  test::TempDir dir_;
  std::unique_ptr<test::Child> server_, site1_, site2_;
};

TEST_F(FederationAcrossNamespaces, RunsAJobAndAnAbortLeavesNothing) {
  const std::string id = admin({"submit", write_job("across", 3, 0).string()}).value("job_id", "");
  ASSERT_FALSE(id.empty());
  json done = wait_job(id, [](const json& s) {
    return s.value("state", "") == "finished" || s.value("state", "") == "failed";
  });
  EXPECT_EQ(done.value("state", ""), "finished") << done.dump(2);
  EXPECT_EQ(done.value("rounds", json::array()).size(), 4u);
  const json sites = done.value("sites", json::object());
  for (const auto& [site, entry] : sites.items()) {
    EXPECT_EQ(entry.value("state", ""), "stopped") << site << ": " << entry.dump();
  }

  const std::string slow = admin({"submit", write_job("slow", 500, 300).string()}).value("job_id", "");
  wait_job(slow, [](const json& s) { return s.value("rounds", json::array()).size() >= 2; });
  const auto t0 = Clock::now();
  EXPECT_EQ(admin({"abort", slow}).value("state", ""), "aborted");
  while (left() > 0 && Clock::now() - t0 < slowdown * 3s) {  // shutdown_grace (2 s) + 1 s
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(left(), 0u);
}

}  // namespace
}  // namespace ember

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // The real part needs network namespaces; where they cannot be made, say so and skip (77), never pass.
  if (std::string why; !ember::test::can_make_namespaces(why)) {
    std::cout << "SKIP: " << why << "\n";
    return 77;
  }
  return RUN_ALL_TESTS();
}
