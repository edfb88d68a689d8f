// The admin commands: `ember submit`, `status`, `abort`, `logs` and `download`. Each joins the server's cell
// with an admin's startup kit (as "admin-<random>", admitted by its certificate's name), asks, prints the
// answer for a person or as JSON, and leaves.

#include <cstdlib>
#include <iomanip>
#include <ostream>
#include <thread>

#include <nlohmann/json.hpp>

#include "codec.hpp"
#include "daemons.hpp"
#include "exit_codes.hpp"
#include "federation.hpp"
#include "logging.hpp"

namespace ember::kernel::fed {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

std::span<const std::byte> no_payload() {
  return {};
}

// The exit code of an error the server answered with.
int code_for_answer(const Error& error) {
  switch (error.code) {
    case Errc::invalid_config:
    case Errc::invalid_option:
      return exit_code::invalid_config;
    case Errc::not_found:
    case Errc::invalid_argument:
      return exit_code::usage;
    case Errc::io_error:
      return exit_code::io_error;
    default:
      return exit_code::job_failed;
  }
}

std::string metric_list(const json& metrics) {
  std::string text;
  for (const auto& [k, v] : metrics.items()) {
    std::ostringstream value;
    if (v.is_number()) {
      value << std::setprecision(4) << v.get<double>();
    } else {
      value << v.dump();
    }
    text += (text.empty() ? "" : "  ") + k + "=" + value.str();
  }
  return text;
}

// One line per progress event, as `status --watch` prints them.
std::string event_line(const json& e) {
  const std::string kind = e.value("event", "");
  if (kind == "round_started") {
    if (e.value("round", 0) >= e.value("total_rounds", 0) && e.value("total_rounds", 0) > 0) {
      return "final evaluation: " + e.value("task", std::string("task")) + " sent to " +
             std::to_string(e.value("sites", 0)) + " sites";
    }
    return "round " + std::to_string(e.value("round", 0) + 1) + "/" +
           std::to_string(e.value("total_rounds", 0)) + ": " + e.value("task", std::string("task")) +
           " sent to " + std::to_string(e.value("sites", 0)) + " sites";
  }
  if (kind == "site_result") {
    std::ostringstream s;
    s << "  " << e.value("site", std::string("?")) << (e.value("ok", false) ? " answered " : " FAILED ")
      << e.value("task", std::string("?")) << " in " << std::fixed << std::setprecision(1)
      << e.value("seconds", 0.0) << " s (" << e.value("answered", 0) << "/" << e.value("total", 0) << ")";
    if (e.contains("error")) {
      s << ": " << e["error"].get<std::string>();
    }
    return s.str();
  }
  if (kind == "round") {
    return (e.value("final", false) ? std::string("final: ")
                                    : "round " + std::to_string(e.value("round", 0) + 1) + ": ") +
           metric_list(e.value("metrics", json::object()));
  }
  if (kind == "finished") {
    return e.value("ok", false) ? "the workflow finished"
                                : "the workflow failed: " + e.value("error", std::string());
  }
  return e.dump();
}

void print_overview(const json& o, std::ostream& out) {
  out << "project " << o.value("project", std::string()) << ", server " << o.value("server", std::string())
      << "\n";
  out << "sites:\n";
  for (const auto& s : o["sites"]) {
    out << "  " << std::left << std::setw(20) << s.value("name", std::string()) << std::setw(14)
        << (s.value("connected", false) ? "connected" : "not connected")
        << (s.contains("last_contact") ? "last contact " + s["last_contact"].get<std::string>()
                                       : std::string())
        << "\n";
  }
  out << "jobs:" << (o["jobs"].empty() ? " none" : "") << "\n";
  for (const auto& j : o["jobs"]) {
    out << "  " << std::left << std::setw(40) << j.value("job_id", std::string()) << std::setw(11)
        << j.value("state", std::string()) << "submitted " << j.value("submitted", std::string()) << "\n";
  }
}

void print_job(const json& j, std::ostream& out) {
  out << "job " << j.value("job_id", std::string()) << " (" << j.value("name", std::string())
      << "): " << j.value("state", std::string());
  if (j.contains("error")) {
    out << ": " << j["error"].get<std::string>();
  }
  out << "\n";
  for (const auto& [name, s] : j["sites"].items()) {
    std::string state = s.value("state", std::string("?"));
    const json live = s.value("live", json::object());
    if (live.contains("status")) {
      state = live["status"].get<std::string>();
    }
    out << "  " << std::left << std::setw(20) << name << state;
    const json job = live.value("job", json::object());
    if (job.contains("tasks_done")) {
      out << ", " << job["tasks_done"] << " tasks done";
      if (!job.value("current_task", std::string()).empty()) {
        out << ", running " << job["current_task"].get<std::string>();
      }
    }
    if (s.contains("exit") && s["exit"].is_object()) {
      out << ", " << s["exit"].value("text", std::string());
    }
    if (s.contains("error")) {
      out << ": " << s["error"].get<std::string>();
    }
    out << "\n";
  }
  for (const auto& r : j["rounds"]) {
    out << "  " << event_line(r) << "\n";
  }
}

int state_exit(const std::string& state) {
  if (state == "finished") {
    return exit_code::ok;
  }
  if (state == "aborted") {
    return exit_code::interrupted;
  }
  return state == "failed" ? exit_code::job_failed : exit_code::ok;
}

}  // namespace

int run_admin(const AdminOptions& o, std::ostream& out, std::ostream& err) {
  const std::string cmd = "ember " + o.command;
  fs::path kit = o.kit;
  if (kit.empty()) {
    const char* env = std::getenv("EMBER_KIT");
    kit = env != nullptr ? env : "";
  }
  if (kit.empty()) {
    err << cmd
        << ": which admin kit? Give --kit DIR (an admin's startup kit from ember provision) or set "
           "EMBER_KIT\n";
    return exit_code::usage;
  }
  auto site = load_site(kit_file(kit));
  if (!site) {
    err << cmd << ": " << site.error().message << "\n";
    return site.error().code == Errc::not_found ? exit_code::io_error : exit_code_for(site.error());
  }
  if (site->role != "admin") {
    err << cmd << ": " << kit_file(kit).string() << ": site.role is '" << site->role
        << "': admin commands need an admin's kit (role = \"admin\")\n";
    return exit_code::invalid_config;
  }
  // Read what to send before connecting.
  std::vector<std::byte> job_bundle;
  if (o.command == "submit") {
    fs::path dir = o.job;
    std::error_code ec;
    if (fs::is_regular_file(dir, ec)) {
      dir = dir.parent_path();
    }
    if (!fs::is_regular_file(dir / "job.toml", ec)) {
      err << cmd << ": " << o.job << ": not a job folder (no job.toml)\n";
      return exit_code::io_error;
    }
    auto bundle = pack_folder(dir, max_job_folder_bytes);
    if (!bundle) {
      err << cmd << ": " << bundle.error().message << "\n";
      return bundle.error().code == Errc::io_error ? exit_code::io_error : exit_code::usage;
    }
    job_bundle = std::move(*bundle);
  }
  auto config =
      cell_config(*site, "admin-" + random_token().substr(0, 12), site->cell ? site->cell->server : "", "");
  if (!config) {
    err << cmd << ": " << config.error().message << "\n";
    return exit_code::invalid_config;
  }
  config->certificate_name = site->name;
  LogSettings quiet;
  quiet.level = LogLevel::error;
  LogHub logs(quiet);
  auto cell = cell::Cell::start(std::move(*config), logs.get("admin"));
  if (!cell) {
    err << cmd << ": " << cell.error().message << "\n";
    return exit_code_for(cell.error());
  }
  // One attempt is enough to know: a refusal or a failed handshake is not going to change for a command.
  bool joined = false;
  const auto deadline = std::chrono::steady_clock::now() + site->cell->connect_timeout + 5s;
  auto tried = [&] {
    const std::string why = (*cell)->parent_error();
    return !why.empty() && why != "not connected yet";
  };
  while (!joined && std::chrono::steady_clock::now() < deadline && !tried()) {
    joined = (*cell)->wait_parent(100ms);
  }
  if (!joined) {
    std::string why = (*cell)->parent_error();
    if (why.find("certificate verify failed") != std::string::npos) {
      why += " (the server's certificate does not chain to this kit's CA, " + site->cell->ca.string() +
             ": is the kit from the server's project?)";
    }
    err << cmd << ": cannot reach the server at " << site->cell->server << (why.empty() ? "" : ": " + why)
        << "\n";
    return exit_code::unreachable;
  }
  auto ask = [&](const char* topic, const wire::Headers& headers, std::span<const std::byte> payload,
                 std::chrono::milliseconds bound) -> Result<cell::Message> {
    auto reply = (*cell)->request("server", topic, headers, payload, bound);
    if (!reply.ok()) {
      return fail(Errc::peer_gone, reply.reason);
    }
    if (auto error = get_error(reply.message.headers)) {
      return fail(std::move(*error));
    }
    return std::move(reply.message);
  };
  auto failed = [&](const Error& error) {
    err << cmd << ": " << error.message << "\n";
    return error.code == Errc::peer_gone ? exit_code::unreachable : code_for_answer(error);
  };
  auto as_json = [](const cell::Message& m) {
    auto parsed = json::parse(m.payload.begin(), m.payload.end(), nullptr, false);
    return parsed.is_discarded() ? json::object() : parsed;
  };

  if (o.command == "submit") {
    auto answer = ask(topic::submit, {}, job_bundle, 120s);
    if (!answer) {
      return failed(answer.error());
    }
    json j = as_json(*answer);
    if (o.json) {
      out << j.dump() << "\n";
    } else {
      out << "submitted " << j.value("job_id", std::string()) << " to " << j["sites"].size() << " sites\n";
    }
    return exit_code::ok;
  }
  if (o.command == "status") {
    wire::Headers headers;
    if (!o.job.empty()) {
      headers.emplace_back("job_id", o.job);
    }
    if (!o.watch || o.job.empty()) {
      auto answer = ask(topic::status, headers, no_payload(), 30s);
      if (!answer) {
        return failed(answer.error());
      }
      json j = as_json(*answer);
      if (o.json) {
        out << j.dump() << "\n";
      } else if (o.job.empty()) {
        print_overview(j, out);
      } else {
        print_job(j, out);
      }
      return exit_code::ok;
    }
    // --watch: every event as it comes, until the job ends (or Ctrl-C).
    std::stop_source stop;
    SignalStop signals(stop);
    std::uint64_t next = 0;
    for (;;) {
      wire::Headers h = headers;
      h.emplace_back("since", std::to_string(next));
      auto answer = ask(topic::status, h, no_payload(), 30s);
      if (!answer) {
        return failed(answer.error());
      }
      json j = as_json(*answer);
      for (const auto& e : j["events"]) {
        out << (o.json ? e.dump() : event_line(e)) << "\n";
      }
      out << std::flush;
      next = j.value("next_event", next);
      const std::string state = j.value("state", std::string());
      if (state == "finished" || state == "failed" || state == "aborted") {
        if (o.json) {
          j.erase("events");
          out << j.dump() << "\n";
        } else {
          print_job(j, out);
        }
        return state_exit(state);
      }
      if (!sleep_for(500ms, stop.get_token())) {
        return exit_code::interrupted;
      }
    }
  }
  if (o.command == "abort") {
    wire::Headers headers{{"job_id", o.job}};
    if (!o.site.empty()) {
      headers.emplace_back("site", o.site);
    }
    auto answer = ask(o.task ? topic::abort_task : topic::abort, headers, no_payload(), 300s);
    if (!answer) {
      return failed(answer.error());
    }
    json j = as_json(*answer);
    if (o.json) {
      out << j.dump() << "\n";
    } else if (o.task) {
      for (const auto& [name, r] : j["sites"].items()) {
        out << name << ": "
            << (r.value("aborted", false) ? "current task aborted"
                : r.contains("error")     ? r["error"].get<std::string>()
                                          : "no task running")
            << "\n";
      }
    } else {
      out << "job " << o.job << ": " << j.value("state", std::string()) << "\n";
    }
    return exit_code::ok;
  }
  if (o.command == "logs") {
    wire::Headers headers{{"job_id", o.job}};
    if (!o.site.empty()) {
      headers.emplace_back("site", o.site);
    }
    auto answer = ask(topic::logs, headers, no_payload(), 60s);
    if (!answer) {
      return failed(answer.error());
    }
    out.write(reinterpret_cast<const char*>(answer->payload.data()),
              static_cast<std::streamsize>(answer->payload.size()));
    return exit_code::ok;
  }
  if (o.command == "download") {
    auto answer = ask(topic::download, {{"job_id", o.job}}, no_payload(), 3600s);
    if (!answer) {
      return failed(answer.error());
    }
    const fs::path dir = o.out.empty() ? fs::current_path() / o.job : o.out;
    std::error_code ec;
    if (fs::exists(dir, ec)) {
      err << cmd << ": " << dir.string() << " exists; give --out for another folder\n";
      return exit_code::io_error;
    }
    auto files = unpack_folder(answer->payload, dir, "the workspace of job " + o.job);
    if (!files) {
      return failed(files.error());
    }
    if (o.json) {
      out << json{{"job_id", o.job}, {"folder", dir.string()}, {"files", *files}}.dump() << "\n";
    } else {
      out << "job " << o.job << ": " << files->size() << " files in " << dir.string() << "\n";
    }
    return exit_code::ok;
  }
  err << cmd << ": unknown admin command\n";
  return exit_code::usage;
}

}  // namespace ember::kernel::fed
