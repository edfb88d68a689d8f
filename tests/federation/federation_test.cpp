// A federation end to end (issue "A real federation"): `ember server` and two `ember client` daemons run as
// separate processes over mutual TLS on loopback, from kits `ember provision` wrote; the admin commands run
// in process, as a user types them. Jobs use ember-test-trainer (no LibTorch), which can take its time per
// task so that aborts land mid-round.

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <fstream>
#include <regex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "child.hpp"
#include "cli_run.hpp"
#include "support.hpp"

namespace ember {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test::slowdown;
using ::testing::HasSubstr;

// A port nobody listens on now (the kernel's choice for a socket bound to port 0).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// `j[key]` when `j` is an object holding it, else an empty object: status fields may be absent or null.
json at(const json& j, const std::string& key) {
  return j.is_object() && j.contains(key) && !j[key].is_null() ? j[key] : json::object();
}
std::string text_at(const json& j, const std::string& key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}

struct JobSpec {
  std::string name = "fed";
  int rounds = 3;
  int delay_ms = 0;
  int min_clients = 1;
  std::string sites;  // [job] sites, as TOML ("" for every site)
};

class Federation : public ::testing::Test {
 protected:
  void SetUp() override {
    port_ = free_port();
    dir_.write("project.toml",
               "[project]\nname = \"fedtest\"\n[server]\nname = \"server\"\nhosts = [\"127.0.0.1\"]\n"
               "port = " +
                   std::to_string(port_) +
                   "\n[[sites]]\nname = \"site-1\"\n[[sites]]\nname = \"site-2\"\n"
                   "[[admins]]\nname = \"ops@example.org\"\n");
    dir_.write("other.toml", "[project]\nname = \"other\"\n[server]\nhosts = [\"127.0.0.1\"]\nport = " +
                                 std::to_string(port_) + "\n[[admins]]\nname = \"ops@example.org\"\n");
    ASSERT_EQ(
        test::cli({"provision", (dir_.path() / "project.toml").string(), "--out", kits().string()}).code, 0);
    ASSERT_EQ(test::cli({"provision", (dir_.path() / "other.toml").string(), "--out",
                         (dir_.path() / "other").string()})
                  .code,
              0);
    start_server();
    start_site("site-1");
    start_site("site-2");
    wait_sites_connected(2);
  }

  void TearDown() override {
    // Sites first, then the server: each daemon ends its jobs, and nothing may outlive them.
    std::vector<pid_t> daemons;
    for (auto& [name, child] : sites_) {
      daemons.push_back(child->pid());
    }
    if (server_) {
      daemons.push_back(server_->pid());
    }
    std::vector<pid_t> below;
    for (pid_t d : daemons) {
      for (pid_t p : test::descendants(d)) {
        below.push_back(p);
      }
    }
    for (auto& [name, child] : sites_) {
      child->stop();
    }
    if (server_) {
      server_->stop();
    }
    for (pid_t p : below) {
      EXPECT_NE(::kill(p, 0), 0) << "process " << p << " outlived its daemon: " << test::command_line(p);
    }
  }

  fs::path kits() const { return dir_.path() / "kits"; }
  std::string admin_kit() const { return (kits() / "ops@example.org").string(); }

  void start_server(const std::string& log = "server.log") {
    server_ = std::make_unique<test::Child>(
        std::vector<std::string>{EMBER_EXE, "server", (kits() / "server").string(), "--workspace",
                                 (dir_.path() / "server-ws").string()},
        dir_.path() / log);
    ASSERT_TRUE(server_->wait_for_output("ember server: project fedtest", 30s)) << server_->output();
  }
  void start_site(const std::string& name) {
    auto child = std::make_unique<test::Child>(
        std::vector<std::string>{EMBER_EXE, "client", (kits() / name).string(), "--workspace",
                                 (dir_.path() / (name + "-ws")).string()},
        dir_.path() / (name + ".log"));
    ASSERT_TRUE(child->wait_for_output("ember client: " + name, 30s)) << child->output();
    sites_[name] = std::move(child);
  }

  json status(const std::string& job = {}) {
    std::vector<std::string> args{"status", "--kit", admin_kit(), "--json"};
    if (!job.empty()) {
      args.insert(args.begin() + 1, job);
    }
    auto run = test::cli(args);
    EXPECT_EQ(run.code, 0) << run.err;
    auto parsed = json::parse(run.out, nullptr, false);
    return parsed.is_discarded() ? json::object() : parsed;
  }

  void wait_sites_connected(std::size_t n) {
    const auto deadline = Clock::now() + 30s;
    while (Clock::now() < deadline) {
      std::size_t connected = 0;
      for (const auto& s : status().value("sites", json::array())) {
        connected += s.value("connected", false) ? 1 : 0;
      }
      if (connected == n) {
        return;
      }
      std::this_thread::sleep_for(100ms);
    }
    FAIL() << "the sites did not join the server within 30 s\n" << server_->output();
  }

  fs::path write_job(const JobSpec& spec) {
    std::ostringstream toml;
    toml << "schema_version = 1\n[job]\nname = \"" << spec.name << "\"\n"
         << (spec.sites.empty() ? std::string() : "sites = " + spec.sites + "\n")
         << "[timeouts]\nlaunch = \"20s\"\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"5s\"\n"
         << "task_wait = \"10s\"\nresult_wait = \"2m\"\nshutdown_grace = \"2s\"\nstream_idle = \"10s\"\n"
         << "[components.fedavg]\ntype = \"workflow.fedavg\"\nrounds = " << spec.rounds
         << "\nmin_clients = " << spec.min_clients << "\n"
         << "[components.trainer]\ntype = \"executor.external-trainer\"\ncommand = [\"" EMBER_TEST_TRAINER
            "\", \"--delay-ms\", \""
         << spec.delay_ms << "\"]\n"
         << "[components.launcher]\ntype = \"launcher.process\"\n"
         << "[components.pipe]\ntype = \"pipe.socket\"\n";
    const fs::path job = dir_.path() / ("job-" + spec.name);
    fs::create_directories(job);
    std::ofstream(job / "job.toml") << toml.str();
    return job;
  }

  std::string submit(const fs::path& job) {
    auto run = test::cli({"submit", job.string(), "--kit", admin_kit(), "--json"});
    EXPECT_EQ(run.code, 0) << run.err;
    return json::parse(run.out, nullptr, false).value("job_id", "");
  }

  // Polls the job's status until `done` says so (at most `bound`); the last status.
  json wait_job(const std::string& id, const std::function<bool(const json&)>& done,
                std::chrono::seconds bound = 60s) {
    const auto deadline = Clock::now() + bound;
    json last;
    while (Clock::now() < deadline) {
      last = status(id);
      if (done(last)) {
        return last;
      }
      std::this_thread::sleep_for(100ms);
    }
    ADD_FAILURE() << "job " << id << " did not get there within " << bound.count() << " s: " << last.dump();
    return last;
  }
  static bool over(const json& s) {
    const std::string state = s.value("state", "");
    return state == "finished" || state == "failed" || state == "aborted";
  }
  static std::size_t rounds_done(const json& s) { return s.value("rounds", json::array()).size(); }

  // The trainers (ember-test-trainer processes) running below a site's daemon.
  std::vector<pid_t> trainers(const std::string& site) {
    std::vector<pid_t> found;
    for (pid_t p : test::descendants(sites_[site]->pid())) {
      if (test::command_line(p).find("ember-test-trainer") != std::string::npos) {
        found.push_back(p);
      }
    }
    return found;
  }
  std::size_t processes_below_daemons() {
    std::size_t n = test::descendants(server_->pid()).size();
    for (auto& [name, child] : sites_) {
      n += child->running() ? test::descendants(child->pid()).size() : 0;
    }
    return n;
  }

  test::TempDir dir_;
  int port_ = 0;
  std::unique_ptr<test::Child> server_;
  std::map<std::string, std::unique_ptr<test::Child>> sites_;
};

TEST_F(Federation, RunsAJobToTheSameModelAsSimulation) {
  const fs::path job = write_job({.name = "hello", .rounds = 3});
  const std::string id = submit(job);
  ASSERT_FALSE(id.empty());
  std::set<std::string> stages;  // every (site, state) seen while it ran
  json last = wait_job(id, [&](const json& s) {
    const json sites = at(s, "sites");
    for (const auto& [site, entry] : sites.items()) {
      stages.insert(site + ":" + text_at(entry, "state"));
      stages.insert(site + ":" + text_at(at(entry, "live"), "status"));
    }
    return over(s);
  });
  EXPECT_EQ(last.value("state", ""), "finished") << last.dump(2);
  EXPECT_EQ(rounds_done(last), 4u) << "three rounds and the final evaluation";
  for (const std::string site : {"site-1", "site-2"}) {
    EXPECT_EQ(text_at(at(at(last, "sites"), site), "state"), "stopped") << last.dump(2);
    EXPECT_EQ(at(at(at(last, "sites"), site), "exit").value("code", -1), 0) << last.dump(2);
    EXPECT_TRUE(stages.contains(site + ":started")) << "status never showed " << site << " started";
  }

  // The same job in `ember simulate`: the same final model (the test trainer adds one per round: 3).
  auto sim = test::run_program({EMBER_EXE, "simulate", job.string(), "--clients", "2", "--workspace",
                                (dir_.path() / "sim").string(), "--job-id", "sim", "--quiet"},
                               120);
  ASSERT_EQ(sim.exit_code, 0) << sim.err;
  auto download = test::cli({"download", id, "--kit", admin_kit(), "--out", (dir_.path() / "dl").string()});
  ASSERT_EQ(download.code, 0) << download.err;
  // The test trainer answers round 0 with ones and adds one each round: three rounds make 3 everywhere.
  auto weights = [](const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<float> values(4, 0.0f);
    if (bytes.size() >= 16) {
      std::memcpy(values.data(), bytes.data() + bytes.size() - 16, 16);
    }
    return values;
  };
  const auto fed_model = weights(dir_.path() / "dl" / "server" / "model.safetensors");
  EXPECT_EQ(fed_model, std::vector<float>(4, 3.0f));
  EXPECT_EQ(fed_model, weights(dir_.path() / "sim" / "server" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(dir_.path() / "dl" / "site-1" / "log.txt"));
  EXPECT_TRUE(fs::exists(dir_.path() / "dl" / "server" / "metrics.jsonl"));
  EXPECT_THAT(test::cli({"logs", id, "site-2", "--kit", admin_kit()}).out, HasSubstr("site-2"));
  EXPECT_EQ(processes_below_daemons(), 0u);
}

TEST_F(Federation, AbortMidRoundLeavesNoProcessWithinTheGrace) {
  const std::string id = submit(write_job({.name = "slow", .rounds = 200, .delay_ms = 300}));
  wait_job(id, [](const json& s) { return rounds_done(s) >= 2; });
  ASSERT_FALSE(trainers("site-1").empty());
  const auto t0 = Clock::now();
  auto aborted = test::cli({"abort", id, "--kit", admin_kit()});
  EXPECT_EQ(aborted.code, 0) << aborted.err;
  EXPECT_THAT(aborted.out, HasSubstr("aborted"));
  // shutdown_grace (2 s) + 1 s: no process of the job on any site or the server.
  while (processes_below_daemons() > 0 && Clock::now() - t0 < slowdown * 3s) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(processes_below_daemons(), 0u)
      << "processes left " << test::ms_between(t0, Clock::now()) << " ms after the abort";
  json last = status(id);
  EXPECT_EQ(last.value("state", ""), "aborted");
  EXPECT_EQ(text_at(at(at(last, "sites"), "site-1"), "state"), "stopped") << last.dump(2);
}

TEST_F(Federation, AbortOfOneTaskKeepsTheTrainerAndTheNextRoundWorks) {
  const std::string id = submit(write_job({.name = "task", .rounds = 200, .delay_ms = 1500}));
  json s = wait_job(id, [](const json& j) { return rounds_done(j) >= 1; });
  auto before = trainers("site-1");
  ASSERT_EQ(before.size(), 1u);
  // Mid-task (each takes 1.5 s): only site-1's current task.
  std::this_thread::sleep_for(300ms);
  auto aborted = test::cli({"abort", id, "--task", "--site", "site-1", "--kit", admin_kit(), "--json"});
  ASSERT_EQ(aborted.code, 0) << aborted.err;
  EXPECT_TRUE(at(at(json::parse(aborted.out, nullptr, false), "sites"), "site-1").value("aborted", false))
      << aborted.out;
  const std::size_t at_abort = rounds_done(status(id));
  // A later round with site-1 answering again, from the same trainer.
  json later = wait_job(id, [&](const json& j) {
    if (rounds_done(j) < at_abort + 2) {
      return false;
    }
    return at(j["rounds"].back(), "metrics").value("clients_ok", 0.0) == 2.0;
  });
  EXPECT_EQ(trainers("site-1"), before) << "the trainer was restarted";
  bool failed_once = false;
  for (const auto& e : status(id).value("events", json::array())) {
    failed_once |=
        e.value("event", "") == "site_result" && e.value("site", "") == "site-1" && !e.value("ok", true);
  }
  EXPECT_TRUE(failed_once) << "the aborted task was not reported as failed";
  (void)test::cli({"abort", id, "--kit", admin_kit()});
}

TEST_F(Federation, AKilledSiteIsReportedAndReapsWhatItLeftWhenRestarted) {
  const std::string id = submit(write_job({.name = "kill", .rounds = 200, .delay_ms = 300}));
  wait_job(id, [](const json& s) { return rounds_done(s) >= 2; });
  sites_["site-1"]->signal(SIGKILL);
  ASSERT_TRUE(sites_["site-1"]->wait_exit(5s));
  // The server notices the site is gone; the job goes on with site-2 (min_clients = 1).
  const auto deadline = Clock::now() + 20s;
  bool gone = false;
  while (!gone && Clock::now() < deadline) {
    for (const auto& s : status().value("sites", json::array())) {
      gone |= s.value("name", "") == "site-1" && !s.value("connected", true);
    }
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(gone) << "the server still shows site-1 connected";
  const std::size_t rounds = rounds_done(status(id));
  wait_job(id, [&](const json& s) { return rounds_done(s) >= rounds + 2; });
  start_site("site-1");
  EXPECT_TRUE(sites_["site-1"]->wait_for_output("was left by an earlier daemon; reaped", 20s))
      << sites_["site-1"]->output();
  json s = wait_job(id, [](const json& j) {
    return text_at(at(at(j, "sites"), "site-1"), "error").find("reaped") != std::string::npos;
  });
  EXPECT_EQ(text_at(at(at(s, "sites"), "site-1"), "state"), "failed") << s.dump(2);
  (void)test::cli({"abort", id, "--kit", admin_kit()});
  EXPECT_TRUE(trainers("site-1").empty());
}

TEST_F(Federation, ARestartedServerReportsTheJobItLostAndItsSitesEndIt) {
  const std::string id = submit(write_job({.name = "restart", .rounds = 200, .delay_ms = 300}));
  wait_job(id, [](const json& s) { return rounds_done(s) >= 2; });
  server_->signal(SIGKILL);
  ASSERT_TRUE(server_->wait_exit(5s));
  start_server("server-2.log");
  wait_sites_connected(2);
  json s = wait_job(id, [](const json& j) {
    return j["sites"]["site-1"].value("state", "") == "stopped" &&
           j["sites"]["site-2"].value("state", "") == "stopped";
  });
  EXPECT_EQ(s.value("state", ""), "failed");
  EXPECT_THAT(s.value("error", ""), HasSubstr("the server stopped while the job was running"));
  const auto t0 = Clock::now();
  while ((!trainers("site-1").empty() || !trainers("site-2").empty()) && Clock::now() - t0 < slowdown * 5s) {
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(trainers("site-1").empty() && trainers("site-2").empty());
}

TEST_F(Federation, AnAdminWithoutAValidCertificateIsRefusedWithAReason) {
  // A kit of another project: the admin cannot even trust the server, and says why.
  auto foreign = test::cli({"status", "--kit", (dir_.path() / "other" / "ops@example.org").string()});
  EXPECT_EQ(foreign.code, 8) << foreign.err;
  EXPECT_THAT(foreign.err, HasSubstr("cannot reach the server"));
  EXPECT_THAT(foreign.err, HasSubstr("does not chain to this kit's CA"));
  // Another project's certificate next to this project's CA (mixed kits): refused before connecting.
  const fs::path mixed = dir_.path() / "mixed";
  fs::copy(dir_.path() / "other" / "ops@example.org", mixed, fs::copy_options::recursive);
  fs::copy_file(kits() / "ca" / "ca.crt", mixed / "ca.crt", fs::copy_options::overwrite_existing);
  auto own = test::cli({"status", "--kit", mixed.string()});
  EXPECT_EQ(own.code, 3) << own.err;
  EXPECT_THAT(own.err, HasSubstr("was not issued by"));
  // A certificate of this project that is not an admin's (a site's, in an admin kit): the server refuses it
  // at the hello and says why.
  const fs::path posing = dir_.path() / "posing";
  fs::copy(kits() / "site-1", posing, fs::copy_options::recursive);
  std::ofstream(posing / "kit.toml")
      << "schema_version = 1\n[site]\nname = \"site-1\"\nrole = \"admin\"\n[cell]\n"
         "server = \"127.0.0.1:"
      << port_
      << "\"\nserver_name = \"server\"\n"
         "ca = \"ca.crt\"\ncert = \"cert.crt\"\nkey = \"cert.key\"\n";
  auto posed = test::cli({"status", "--kit", posing.string()});
  EXPECT_EQ(posed.code, 8) << posed.err;
  EXPECT_THAT(posed.err, HasSubstr("'site-1' is not an admin of project 'fedtest'"));
  // Not an admin's kit, or none at all.
  auto site_kit = test::cli({"status", "--kit", (kits() / "site-1").string()});
  EXPECT_EQ(site_kit.code, 3);
  EXPECT_THAT(site_kit.err, HasSubstr("admin commands need an admin's kit"));
  auto no_kit = test::cli({"status"});
  EXPECT_EQ(no_kit.code, 2);
  EXPECT_THAT(no_kit.err, HasSubstr("--kit"));
}

TEST_F(Federation, ABadJobIsRefusedAtSubmitNamingTheKey) {
  auto run = test::cli(
      {"submit", write_job({.name = "bad", .sites = "[\"site-9\"]"}).string(), "--kit", admin_kit()});
  EXPECT_EQ(run.code, 3) << run.err;
  EXPECT_THAT(run.err, HasSubstr("job.sites: 'site-9' is not a site of project 'fedtest'"));
  const fs::path empty = dir_.path() / "empty";
  fs::create_directories(empty);
  auto none = test::cli({"submit", empty.string(), "--kit", admin_kit()});
  EXPECT_EQ(none.code, 7) << none.err;
  EXPECT_THAT(none.err, HasSubstr("no job.toml"));
}

#ifdef EMBER_TEST_HELLO_TRAINER
// The README's hello job (LibTorch trainers, non-IID data per site) through the federation: the same final
// accuracy as `ember simulate` of the same job (FedAvg sums the sites' results in arrival order, so the
// last digits may differ).
TEST_F(Federation, TheHelloJobReachesTheAccuracyOfSimulation) {
  const fs::path job = test::source_root() / "configs" / "jobs" / "hello-fedavg";
  const std::string id = submit(job);
  ASSERT_FALSE(id.empty());
  json last = wait_job(id, over, 300s);
  ASSERT_EQ(last.value("state", ""), "finished") << last.dump(2);
  const json final_round = last.value("rounds", json::array()).back();
  ASSERT_TRUE(final_round.value("final", false)) << last.dump(2);
  const double federated = at(final_round, "metrics").value("val_accuracy", -1.0);

  auto sim = test::run_program({EMBER_EXE, "simulate", job.string(), "--clients", "2", "--workspace",
                                (dir_.path() / "sim").string(), "--job-id", "sim", "--quiet"},
                               300);
  ASSERT_EQ(sim.exit_code, 0) << sim.err;
  double simulated = -1.0;
  std::uint64_t last_round = 0;
  std::ifstream metrics(dir_.path() / "sim" / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    auto m = json::parse(line, nullptr, false);
    if (m.is_object() && m.value("source", "") == "server" && m.value("key", "") == "val_accuracy" &&
        m.value("round", std::uint64_t{0}) >= last_round) {
      last_round = m.value("round", std::uint64_t{0});
      simulated = m.value("value", -1.0);
    }
  }
  EXPECT_GT(federated, 0.5) << "the federated model did not learn";
  EXPECT_NEAR(federated, simulated, 0.01) << "federation " << federated << ", simulation " << simulated;
}
#endif

}  // namespace
}  // namespace ember
