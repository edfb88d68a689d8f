// `ember server KIT`: the federation's server. It admits the project's sites and admins, deploys the jobs
// admins submit, runs each job's workflow as its own process (`server.<job_id>`), and keeps every job's
// status: per site, per round, and how each process ended.

#include <sys/stat.h>

#include <algorithm>
#include <deque>
#include <fstream>
#include <ostream>
#include <set>

#include <nlohmann/json.hpp>

#include <ember/launcher.hpp>

#include "codec.hpp"
#include "daemons.hpp"
#include "exit_codes.hpp"
#include "federation.hpp"
#include "job_executor.hpp"
#include "workspace.hpp"

namespace ember::kernel::fed {

struct DaemonSetup {
  SiteConfig site;
  std::filesystem::path workspace;
  std::optional<WorkspaceLock> lock;
};
Result<DaemonSetup> setup_daemon(Kernel& kernel, const DaemonOptions& o, std::string_view role,
                                 std::string_view command);
int setup_exit_code(const Error& error);

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;
using SysClock = std::chrono::system_clock;

constexpr std::size_t max_events = 10000;  // progress events kept per job for `status --watch`

std::string iso_time(SysClock::time_point t) {
  const std::time_t tt = SysClock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// "0.0.0.0:8002" is where the server listens; its own job processes reach it on loopback.
std::string loopback_of(const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    return address;
  }
  const std::string host = address.substr(0, colon);
  if (host == "0.0.0.0" || host.empty()) {
    return "127.0.0.1" + address.substr(colon);
  }
  if (host == "[::]") {
    return "[::1]" + address.substr(colon);
  }
  return address;
}

// One submitted job.
struct JobRecord {
  std::string id;
  std::string name;
  fs::path dir;
  std::vector<std::string> sites;
  JobTimeouts timeouts;
  std::string token;
  SysClock::time_point submitted = SysClock::now();
  std::optional<SysClock::time_point> ended;
  // Under Server::mutex_:
  std::string state = "submitted";  // submitted, deploying, running, finished, failed, aborted
  std::string error;
  std::map<std::string, json> site_state;
  std::deque<json> events;
  std::uint64_t events_dropped = 0;
  json rounds = json::array();
  std::optional<ExitStatus> server_exit;
  bool abort_requested = false;
  std::vector<std::string> deployed;
  std::shared_ptr<Launcher> launcher;
  std::shared_ptr<LaunchHandle> handle;
  std::jthread runner;
};

bool terminal(const std::string& state) {
  return state == "finished" || state == "failed" || state == "aborted";
}

class Server {
 public:
  Server(Kernel& kernel, const SiteConfig& site, fs::path workspace, fs::path exe,
         std::shared_ptr<Logger> log)
      : kernel_(kernel),
        site_(site),
        workspace_(std::move(workspace)),
        exe_(std::move(exe)),
        log_(std::move(log)) {}

  ~Server() { stop_all(); }

  std::optional<std::string> admit(const cell::PeerClaim& claim) {
    const auto& project = *site_.project;
    const bool tls = !site_.cell->insecure;
    if (std::find(project.sites.begin(), project.sites.end(), claim.fqcn) != project.sites.end()) {
      if (tls && claim.cert_name != claim.fqcn) {
        return "its certificate is for '" + claim.cert_name + "', not '" + claim.fqcn + "'";
      }
      return std::nullopt;
    }
    if (claim.fqcn.starts_with(site_.name + ".")) {
      const std::string rest = claim.fqcn.substr(site_.name.size() + 1);
      const std::string job = rest.substr(0, rest.find('.'));
      if (tls && claim.cert_name != site_.name) {
        return "a server job must present the server's certificate, not '" + claim.cert_name + "'";
      }
      std::lock_guard lock(mutex_);
      auto it = jobs_.find(job);
      if (it == jobs_.end() || it->second->token.empty() || it->second->token != claim.token) {
        return "no running job '" + job + "' with that token";
      }
      return std::nullopt;
    }
    if (claim.fqcn.starts_with("admin-")) {
      if (!tls) {
        return std::nullopt;
      }
      if (std::find(project.admins.begin(), project.admins.end(), claim.cert_name) == project.admins.end()) {
        return "'" + claim.cert_name + "' is not an admin of project '" + project.name + "'";
      }
      return std::nullopt;
    }
    return "'" + claim.fqcn + "' is not a site or an admin of project '" + project.name + "'";
  }

  void install(cell::Cell& cell) {
    cell_ = &cell;
    auto admin_only = [this](auto handler) {
      return [this, handler](cell::Message& m) -> cell::Reply {
        if (!m.from.starts_with("admin-") || m.from.find('.') != std::string::npos) {
          return cell::Reply::error(cell::Rc::handler_error,
                                    site_.name + ": admin commands come from admins");
        }
        return handler(m);
      };
    };
    cell.handle(topic::submit, admin_only([this](cell::Message& m) { return submit(m); }));
    cell.handle(topic::status, admin_only([this](cell::Message& m) { return status(m); }));
    cell.handle(topic::abort, admin_only([this](cell::Message& m) { return abort(m); }));
    cell.handle(topic::abort_task, admin_only([this](cell::Message& m) { return abort_task(m); }));
    cell.handle(topic::logs, admin_only([this](cell::Message& m) { return logs(m); }));
    cell.handle(topic::download, admin_only([this](cell::Message& m) { return download(m); }));
    cell.handle(topic::job_state, [this](cell::Message& m) { return job_state(m); });
    cell.handle(topic::progress, [this](cell::Message& m) { return progress(m); });
  }

  void stop_all() {
    std::vector<std::shared_ptr<JobRecord>> running;
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, job] : jobs_) {
        if (!terminal(job->state)) {
          job->abort_requested = true;
          running.push_back(job);
        }
      }
    }
    for (auto& job : running) {
      job->runner.request_stop();
    }
    for (auto& job : running) {
      if (job->runner.joinable()) {
        job->runner.join();
      }
    }
  }

 private:
  std::shared_ptr<JobRecord> find(const std::string& id) {
    std::lock_guard lock(mutex_);
    auto it = jobs_.find(id);
    return it == jobs_.end() ? nullptr : it->second;
  }

  cell::Reply submit(cell::Message& m) {
    const fs::path incoming = workspace_ / (".incoming-" + random_token().substr(0, 12));
    auto cleanup = [&] {
      std::error_code ec;
      fs::remove_all(incoming, ec);
    };
    if (auto made = make_private_dir(incoming); !made) {
      return error_reply(made.error());
    }
    auto files = unpack_folder(m.payload, incoming, "the job folder from " + m.from);
    if (!files) {
      cleanup();
      return error_reply(files.error());
    }
    auto job = load_job(incoming, kernel_.registry());
    if (!job) {
      cleanup();
      return error_reply(job.error());
    }
    for (const char* kind : {"workflow", "executor"}) {
      if (auto id = only_component(*job, kind, "a job"); !id) {
        cleanup();
        return error_reply(id.error());
      }
    }
    const auto& project = *site_.project;
    std::vector<std::string> sites = job->sites.empty() ? project.sites : job->sites;
    for (const auto& s : sites) {
      if (std::find(project.sites.begin(), project.sites.end(), s) == project.sites.end()) {
        cleanup();
        return error_reply(
            Error{Errc::invalid_config,
                  "job.toml: job.sites: '" + s + "' is not a site of project '" + project.name + "'"});
      }
    }
    if (sites.empty()) {
      cleanup();
      return error_reply(
          Error{Errc::invalid_config, "project '" + project.name + "' has no sites to run the job"});
    }
    auto record = std::make_shared<JobRecord>();
    record->name = job->name;
    record->sites = sites;
    record->timeouts = job->timeouts;
    record->token = random_token();
    {
      std::lock_guard lock(mutex_);
      std::string id = job->name + "-" + utc_stamp();
      for (int n = 2; jobs_.contains(id) || fs::exists(workspace_ / id); ++n) {
        id = job->name + "-" + utc_stamp() + "-" + std::to_string(n);
      }
      record->id = id;
      record->dir = workspace_ / id;
      jobs_[id] = record;
    }
    std::error_code ec;
    if (auto made = make_private_dir(record->dir); !made) {
      cleanup();
      return error_reply(made.error());
    }
    fs::rename(incoming, record->dir / "job", ec);
    if (ec) {
      cleanup();
      return error_reply(
          Error{Errc::io_error, record->dir.string() + ": cannot store the job: " + ec.message()});
    }
    log_->info("job " + record->id + " submitted by " + m.from + " for " + std::to_string(sites.size()) +
               " sites");
    record->runner = std::jthread([this, record](std::stop_token stop) { run(record, stop); });
    return json_reply(json{{"job_id", record->id}, {"sites", sites}});
  }

  void set_state(JobRecord& job, std::string state, std::string error = {}) {
    std::lock_guard lock(mutex_);
    if (terminal(job.state)) {
      return;
    }
    job.state = std::move(state);
    if (!error.empty()) {
      job.error = std::move(error);
    }
    if (terminal(job.state)) {
      job.ended = SysClock::now();
    }
    persist(job);
    log_->info("job " + job.id + ": " + job.state + (job.error.empty() ? "" : " (" + job.error + ")"));
  }

  // The job's record on disk (record.json, replaced atomically): what a restarted server reports. Called
  // with mutex_ held.
  void persist(const JobRecord& job) {
    json record{{"job_id", job.id},
                {"name", job.name},
                {"sites", job.sites},
                {"deployed", job.deployed},
                {"state", job.state},
                {"error", job.error},
                {"site_state", job.site_state},
                {"rounds", job.rounds},
                {"submitted", SysClock::to_time_t(job.submitted)},
                {"shutdown_grace_ms", job.timeouts.shutdown_grace.count()}};
    if (job.ended) {
      record["ended"] = SysClock::to_time_t(*job.ended);
    }
    if (job.server_exit) {
      record["server_exit"] = describe_exit(*job.server_exit);
    }
    const fs::path tmp = job.dir / "record.json.tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << record.dump() << "\n";
      if (!out) {
        log_->warn("job " + job.id + ": cannot write " + tmp.string());
        return;
      }
    }
    std::error_code ec;
    fs::rename(tmp, job.dir / "record.json", ec);
  }

 public:
  // Loads the records an earlier server left in the workspace. A job that was not over then is over now: its
  // server job died with that server (and is reaped here if it did not). Its sites are told to abort it once
  // they are back (recover()), and what they report is recorded. Returns the jobs to recover.
  std::vector<std::shared_ptr<JobRecord>> load() {
    std::vector<std::shared_ptr<JobRecord>> unfinished;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(workspace_, ec)) {
      std::ifstream in(entry.path() / "record.json");
      if (!in) {
        continue;
      }
      auto r = json::parse(in, nullptr, false);
      if (r.is_discarded() || !r.is_object() || r.value("job_id", "") != entry.path().filename().string()) {
        log_->warn(entry.path().string() + "/record.json: unreadable, skipped");
        continue;
      }
      auto job = std::make_shared<JobRecord>();
      job->id = r.value("job_id", "");
      job->name = r.value("name", "");
      job->dir = entry.path();
      job->sites = r.value("sites", std::vector<std::string>{});
      job->deployed = r.value("deployed", std::vector<std::string>{});
      job->state = r.value("state", "failed");
      job->error = r.value("error", "");
      const json site_state = r.value("site_state", json::object());
      for (const auto& [site, state] : site_state.items()) {
        job->site_state[site] = state;
      }
      job->rounds = r.value("rounds", json::array());
      job->submitted = SysClock::from_time_t(r.value("submitted", std::time_t{0}));
      job->timeouts.shutdown_grace = std::chrono::milliseconds(r.value("shutdown_grace_ms", 10000));
      if (r.contains("ended")) {
        job->ended = SysClock::from_time_t(r["ended"].get<std::time_t>());
      }
      if (auto reaped = reap_recorded(job->dir / "run.json")) {
        log_->warn("job " + job->id + ": reaped its server job (" + *reaped +
                   "), left by the earlier server");
      }
      if (!terminal(job->state)) {
        job->error =
            "the server stopped while the job was " + job->state + "; its sites are told to abort it";
        job->state = "failed";
        job->ended = SysClock::now();
        persist(*job);
        unfinished.push_back(job);
      }
      std::lock_guard lock(mutex_);
      jobs_[job->id] = job;
    }
    return unfinished;
  }

  // Tells the sites of a job an earlier server left unfinished to abort it, as each comes back (bounded:
  // five minutes); their reports of how it ended are recorded as they arrive.
  void recover(const std::shared_ptr<JobRecord>& job, std::stop_token stop) {
    std::set<std::string> left(job->deployed.begin(), job->deployed.end());
    const auto bound = SysClock::now() + 5min;
    while (!left.empty() && SysClock::now() < bound && !stop.stop_requested()) {
      for (const auto& peer : cell_->children()) {
        if (peer.connected && left.contains(peer.fqcn)) {
          auto reply = cell_->request(peer.fqcn, topic::site_abort, {{"job_id", job->id}, {"mode", "abort"}},
                                      {}, job->timeouts.shutdown_grace + 10s, stop);
          if (reply.ok()) {
            left.erase(peer.fqcn);
            std::lock_guard lock(mutex_);
            auto info = parse_payload(reply.message.payload);
            if (info.is_object() && info.value("status", "") != "not_started") {
              job->site_state[peer.fqcn]["last_known"] = info;
            }
            persist(*job);
          }
        }
      }
      sleep_for(500ms, stop);
    }
    for (const auto& site : left) {
      log_->warn("job " + job->id + ": " + site + " did not come back to be told the job is over");
    }
  }

 private:
  // Tells every site the job was deployed to that it ended (`end`) or is aborted, in parallel; returns when
  // each answered or its bound passed.
  void end_sites(JobRecord& job, bool end) {
    std::vector<std::string> sites;
    {
      std::lock_guard lock(mutex_);
      sites = job.deployed;
    }
    if (sites.empty()) {
      return;
    }
    auto replies =
        cell_->broadcast(sites, topic::site_abort, {{"job_id", job.id}, {"mode", end ? "end" : "abort"}}, {},
                         job.timeouts.shutdown_grace + 10s);
    for (const auto& r : replies) {
      if (!r.reply.ok()) {
        log_->warn("job " + job.id + ": " + r.target + " did not confirm the job's end: " + r.reply.reason);
      }
    }
  }

  void run(const std::shared_ptr<JobRecord>& job, std::stop_token stop) {
    set_state(*job, "deploying");
    auto bundle = pack_folder(job->dir / "job", max_job_folder_bytes);
    if (!bundle) {
      set_state(*job, "failed", bundle.error().message);
      return;
    }
    auto replies = cell_->broadcast(job->sites, topic::deploy, {{"job_id", job->id}, {"token", job->token}},
                                    *bundle, 60s, stop);
    {
      std::lock_guard lock(mutex_);
      for (const auto& r : replies) {
        auto error = r.reply.ok() ? get_error(r.reply.message.headers) : std::nullopt;
        if (r.reply.ok() && !error) {
          job->deployed.push_back(r.target);
          if (!job->site_state.contains(r.target)) {
            job->site_state[r.target] = json{{"state", "starting"}};
          }
        } else {
          job->site_state[r.target] = json{
              {"state", "failed"}, {"error", error ? error->message : r.reply.reason}, {"exit", nullptr}};
        }
      }
    }
    {
      std::lock_guard lock(mutex_);
      persist(*job);
    }
    std::vector<std::string> deployed;
    bool aborted = false;
    {
      std::lock_guard lock(mutex_);
      deployed = job->deployed;
      aborted = job->abort_requested;
    }
    if (deployed.empty()) {
      set_state(*job, "failed", "no site took the job");
      return;
    }
    if (aborted || stop.stop_requested()) {
      end_sites(*job, false);
      set_state(*job, "aborted");
      return;
    }
    auto launched = launch_server_job(*job, deployed);
    if (!launched) {
      end_sites(*job, false);
      set_state(*job, "failed", launched.error().message);
      return;
    }
    set_state(*job, "running");
    std::optional<ExitStatus> exit = wait_launched(*job->handle, job->timeouts.shutdown_grace, stop);
    {
      std::lock_guard lock(mutex_);
      job->server_exit = exit;
      aborted = job->abort_requested;
    }
    std::error_code ec;
    fs::remove(job->dir / "run.json", ec);
    log_->info("job " + job->id + ": server job ended with " + describe_exit(*exit));
    end_sites(*job, !aborted && exit->success());
    if (aborted) {
      set_state(*job, "aborted");
    } else if (exit->success()) {
      set_state(*job, "finished");
    } else {
      set_state(*job, "failed", "the server job ended with " + describe_exit(*exit));
    }
    std::lock_guard lock(mutex_);
    job->token.clear();  // no process of this job may join any more
  }

  Result<void> launch_server_job(JobRecord& job, const std::vector<std::string>& sites) {
    auto launcher = kernel_.registry().create_as<Launcher>("launcher.process", Options{});
    if (!launcher) {
      return fail(std::move(launcher.error()));
    }
    const fs::path token_file = job.dir / "token";
    if (auto written = write_token_file(token_file, job.token); !written) {
      return fail(std::move(written.error()));
    }
    std::string site_list;
    for (const auto& s : sites) {
      site_list += (site_list.empty() ? "" : ",") + s;
    }
    LaunchSpec spec;
    spec.name = site_.name + "." + job.id;
    spec.argv =
        job_process_argv(exe_, site_.file, kernel_.search_paths(), "server",
                         {"--job-dir", (job.dir / "job").string(), "--job-id", job.id, "--workspace",
                          (job.dir / site_.name).string(), "--parent", loopback_of(cell_->listen_address()),
                          "--token-file", token_file.string(), "--sites", site_list});
    spec.cwd = job.dir;
    auto handle = (*launcher)->launch(spec);
    if (!handle) {
      return fail(std::move(handle.error()));
    }
    record_process(job.dir / "run.json", std::strtol((*handle)->id().c_str(), nullptr, 10));
    std::lock_guard lock(mutex_);
    job.launcher = *launcher;
    job.handle = std::move(*handle);
    return ok();
  }

  cell::Reply status(cell::Message& m) {
    const std::string& id = header_or_empty(m, "job_id");
    if (id.empty()) {
      return json_reply(overview());
    }
    auto job = find(id);
    if (!job) {
      return error_reply(Error{Errc::not_found, "no job '" + id + "' on this server"});
    }
    std::uint64_t since = 0;
    if (const std::string* s = m.header("since")) {
      since = std::strtoull(s->c_str(), nullptr, 10);
    }
    // Live answers from the sites where the job runs, all under one bound.
    std::vector<std::string> live;
    {
      std::lock_guard lock(mutex_);
      if (!terminal(job->state)) {
        live = job->deployed;
      }
    }
    std::vector<cell::TargetReply> answers;
    if (!live.empty()) {
      answers = cell_->broadcast(live, topic::site_status, {{"job_id", id}}, {}, query_timeout);
    }
    std::lock_guard lock(mutex_);
    json sites = json::object();
    for (const auto& s : job->sites) {
      json entry = job->site_state.contains(s) ? job->site_state[s] : json{{"state", "not_started"}};
      for (const auto& a : answers) {
        if (a.target == s) {
          if (a.reply.ok()) {
            entry["live"] = parse_payload(a.reply.message.payload);
          } else {
            entry["live_error"] = a.reply.reason;
          }
        }
      }
      sites[s] = entry;
    }
    json events = json::array();
    const std::uint64_t first = job->events_dropped;
    for (std::uint64_t i = std::max(since, first); i < first + job->events.size(); ++i) {
      events.push_back(job->events[i - first]);
    }
    json out{{"job_id", job->id},   {"name", job->name},
             {"state", job->state}, {"submitted", iso_time(job->submitted)},
             {"sites", sites},      {"rounds", job->rounds},
             {"events", events},    {"next_event", first + job->events.size()}};
    if (job->ended) {
      out["ended"] = iso_time(*job->ended);
    }
    if (!job->error.empty()) {
      out["error"] = job->error;
    }
    if (job->server_exit) {
      out["server_exit"] = describe_exit(*job->server_exit);
    }
    return json_reply(out);
  }

  json overview() {
    json sites = json::array();
    std::map<std::string, cell::PeerInfo> peers;
    for (auto& p : cell_->children()) {
      peers[p.fqcn] = p;
    }
    for (const auto& s : site_.project->sites) {
      json entry{{"name", s}, {"connected", false}};
      if (auto it = peers.find(s); it != peers.end()) {
        entry["connected"] = it->second.connected;
        entry["address"] = it->second.address;
        entry["last_contact"] = iso_time(it->second.last_contact);
      }
      sites.push_back(entry);
    }
    json jobs = json::array();
    std::lock_guard lock(mutex_);
    for (const auto& [id, job] : jobs_) {
      jobs.push_back(json{{"job_id", id},
                          {"name", job->name},
                          {"state", job->state},
                          {"submitted", iso_time(job->submitted)}});
    }
    return json{{"project", site_.project->name}, {"server", site_.name}, {"sites", sites}, {"jobs", jobs}};
  }

  cell::Reply abort(cell::Message& m) {
    auto job = find(header_or_empty(m, "job_id"));
    if (!job) {
      return error_reply(
          Error{Errc::not_found, "no job '" + header_or_empty(m, "job_id") + "' on this server"});
    }
    std::shared_ptr<LaunchHandle> handle;
    {
      std::lock_guard lock(mutex_);
      if (terminal(job->state)) {
        return json_reply(json{{"job_id", job->id}, {"state", job->state}});
      }
      job->abort_requested = true;
      handle = job->handle;
    }
    log_->info("job " + job->id + ": abort requested by " + m.from);
    // The workflow first (it stops sending tasks), then every site, in parallel with the workflow's end.
    if (handle) {
      (void)cell_->request(site_.name + "." + job->id, topic::job_abort, {}, {}, query_timeout);
    }
    end_sites(*job, false);
    if (handle) {
      auto waited = handle->wait(job->timeouts.shutdown_grace + 1s);
      if (!waited || !*waited) {
        (void)handle->stop(std::min<std::chrono::milliseconds>(job->timeouts.shutdown_grace, 5s));
      }
    }
    // The runner records the end once the server job is gone and the sites confirmed.
    const auto bound = SysClock::now() + job->timeouts.shutdown_grace + 15s;
    for (;;) {
      {
        std::lock_guard lock(mutex_);
        if (terminal(job->state) || SysClock::now() > bound) {
          return json_reply(json{{"job_id", job->id}, {"state", job->state}});
        }
      }
      std::this_thread::sleep_for(50ms);
    }
  }

  cell::Reply abort_task(cell::Message& m) {
    auto job = find(header_or_empty(m, "job_id"));
    if (!job) {
      return error_reply(
          Error{Errc::not_found, "no job '" + header_or_empty(m, "job_id") + "' on this server"});
    }
    std::vector<std::string> sites;
    {
      std::lock_guard lock(mutex_);
      sites = job->deployed;
    }
    const std::string& only = header_or_empty(m, "site");
    if (!only.empty()) {
      sites = {only};
    }
    json result = json::object();
    for (const auto& r :
         cell_->broadcast(sites, topic::site_abort_task, {{"job_id", job->id}}, {}, query_timeout)) {
      result[r.target] =
          r.reply.ok() ? parse_payload(r.reply.message.payload) : json{{"error", r.reply.reason}};
    }
    return json_reply(json{{"job_id", job->id}, {"sites", result}});
  }

  cell::Reply logs(cell::Message& m) {
    auto job = find(header_or_empty(m, "job_id"));
    if (!job) {
      return error_reply(
          Error{Errc::not_found, "no job '" + header_or_empty(m, "job_id") + "' on this server"});
    }
    const std::string& site = header_or_empty(m, "site");
    if (site.empty() || site == site_.name) {
      std::ifstream in(job->dir / site_.name / "log.txt", std::ios::binary);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      cell::Reply reply;
      reply.message.payload.resize(text.size());
      std::memcpy(reply.message.payload.data(), text.data(), text.size());
      return reply;
    }
    if (std::find(job->sites.begin(), job->sites.end(), site) == job->sites.end()) {
      return error_reply(Error{Errc::not_found, "job " + job->id + " does not run on '" + site + "'"});
    }
    auto reply = cell_->request(site, topic::site_logs, {{"job_id", job->id}}, {}, 30s);
    if (!reply.ok()) {
      return error_reply(Error{Errc::peer_gone, site + ": " + reply.reason});
    }
    return reply;
  }

  cell::Reply download(cell::Message& m) {
    auto job = find(header_or_empty(m, "job_id"));
    if (!job) {
      return error_reply(
          Error{Errc::not_found, "no job '" + header_or_empty(m, "job_id") + "' on this server"});
    }
    FileMap files;
    std::uint64_t total = 0;
    const fs::path server_dir = job->dir / site_.name;
    std::error_code ec;
    if (fs::is_directory(server_dir, ec)) {
      if (auto read = read_folder(server_dir, site_.name + "/", std::uint64_t{4} << 30, files, total);
          !read) {
        return error_reply(read.error());
      }
    }
    for (const auto& s : job->sites) {
      auto reply = cell_->request(s, topic::site_logs, {{"job_id", job->id}}, {}, 30s);
      if (reply.ok() && !get_error(reply.message.headers)) {
        files[s + "/log.txt"] =
            std::make_shared<const std::vector<std::byte>>(std::move(reply.message.payload));
      }
    }
    auto bundle = pack_files(files);
    if (!bundle) {
      return error_reply(bundle.error());
    }
    cell::Reply reply;
    reply.message.payload = std::move(*bundle);
    return reply;
  }

  cell::Reply job_state(cell::Message& m) {
    json state = parse_payload(m.payload);
    const std::string id = header_or_empty(m, "job_id");
    auto job = find(id);
    if (!job || !state.is_object()) {
      return cell::Reply{};
    }
    std::lock_guard lock(mutex_);
    if (std::find(job->sites.begin(), job->sites.end(), m.from) == job->sites.end()) {
      log_->warn("job " + id + ": state report from '" + m.from + "', not one of its sites: ignored");
      return cell::Reply{};
    }
    state.erase("job_id");
    state.erase("site");
    job->site_state[m.from] = state;
    persist(*job);
    log_->info("job " + id + ": " + m.from + " " + state.value("state", "?") +
               (state.contains("error") ? " (" + state["error"].get<std::string>() + ")" : ""));
    return cell::Reply{};
  }

  cell::Reply progress(cell::Message& m) {
    const std::string id = header_or_empty(m, "job_id");
    if (m.from != site_.name + "." + id) {
      return cell::Reply{};
    }
    auto job = find(id);
    json event = parse_payload(m.payload);
    if (!job || !event.is_object()) {
      return cell::Reply{};
    }
    event.erase("job_id");
    std::lock_guard lock(mutex_);
    if (event.value("event", "") == "round") {
      job->rounds.push_back(event);
    }
    job->events.push_back(std::move(event));
    if (job->events.size() > max_events) {
      job->events.pop_front();
      ++job->events_dropped;
    }
    return cell::Reply{};
  }

  Kernel& kernel_;
  const SiteConfig& site_;
  fs::path workspace_;
  fs::path exe_;
  std::shared_ptr<Logger> log_;
  cell::Cell* cell_ = nullptr;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<JobRecord>> jobs_;
};

}  // namespace

int run_server(Kernel& kernel, const DaemonOptions& o, std::ostream& out, std::ostream& err) {
  auto setup = setup_daemon(kernel, o, "server", "server");
  if (!setup) {
    err << "ember server: " << setup.error().message << "\n";
    return setup_exit_code(setup.error());
  }
  const SiteConfig& site = setup->site;
  if (!site.project) {
    err << "ember server: " << site.file.string() << ": no [project] table: the server must know its sites\n";
    return exit_code::invalid_config;
  }
  if (site.cell->listen.empty()) {
    err << "ember server: " << site.file.string() << ": cell.listen: where to listen, is missing\n";
    return exit_code::invalid_config;
  }
  auto log = kernel.logs().get("server");
  std::stop_source stop;
  SignalStop signals(stop);
  auto config = cell_config(site, site.name, "", site.cell->listen);
  if (!config) {
    err << "ember server: " << config.error().message << "\n";
    return exit_code::invalid_config;
  }
  config->handler_threads = 16;
  std::error_code ec;
  Server server(kernel, site, setup->workspace, fs::read_symlink("/proc/self/exe", ec), log);
  // What an earlier server left is known (and its processes reaped) before anyone can ask.
  auto unfinished = server.load();
  auto cell = cell::Cell::start(std::move(*config), kernel.logs().get("cell"), link_logger(log));
  if (!cell) {
    err << "ember server: " << cell.error().message << "\n";
    return exit_code_for(cell.error());
  }
  (*cell)->set_admission([&server](const cell::PeerClaim& claim) { return server.admit(claim); });
  server.install(**cell);
  std::vector<std::jthread> recovering;
  for (auto& job : unfinished) {
    log->warn("job " + job->id + ": " + job->error);
    recovering.emplace_back([&server, job](std::stop_token s) { server.recover(job, s); });
  }
  out << "ember server: project " << site.project->name << ", listening on " << (*cell)->listen_address()
      << "; workspace " << setup->workspace.string() << "\n"
      << std::flush;
  log->info("listening on " + (*cell)->listen_address());
  while (sleep_for(1s, stop.get_token())) {
  }
  log->info("stopping (signal " + std::to_string(signals.signal()) + "): aborting running jobs");
  for (auto& r : recovering) {
    r.request_stop();
  }
  recovering.clear();
  server.stop_all();
  (*cell)->stop();
  return exit_code::ok;
}

}  // namespace ember::kernel::fed
