// launcher.docker: runs a program in a container through the Docker Engine HTTP API on a Unix socket (Docker,
// or podman's compatible service), never a CLI. The image is the job's and must be one the site allows; the
// container sees the workspace read-write, the job folder and the startup kit read-only, and only the host
// folders the site lists; its output goes into the job log line by line; stop is SIGTERM, a grace, SIGKILL;
// the exit status is kept. Containers carry labels naming the site, the job and the launching process, so a
// later launcher of the site reaps what a dead one left behind.
//
// engine_client.hpp   HTTP over the socket (Boost.Beast), bounded and cancellable
// mount_policy.hpp    which host folders a container may see
// docker_handle.hpp   the handle: log, exit status, stop, removal

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string_view>

#include <ember/launcher.hpp>
#include <ember/plugin.hpp>

#include <nlohmann/json.hpp>

#include "docker_handle.hpp"
#include "engine_client.hpp"
#include "mount_policy.hpp"

namespace ember::docker_launcher {
using base::has_nul;
using base::valid_env_name;

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::string_view default_socket = "/var/run/docker.sock";

// Launcher objects of this process, numbered: part of the label that says who launched a container.
std::atomic<std::uint64_t> instances{0};

// The socket from the option, else DOCKER_HOST when it is unix://, else Docker's default.
Result<std::string> socket_path(const std::string& option) {
  std::string value = option;
  std::string from = "option 'socket'";
  if (value.empty()) {
    const char* host = std::getenv("DOCKER_HOST");
    if (host == nullptr || *host == 0) {
      return std::string(default_socket);
    }
    value = host;
    from = "DOCKER_HOST";
    if (!value.starts_with("unix://")) {
      return fail(Errc::invalid_option, from + " is '" + value +
                                            "': launcher.docker speaks to the engine over a Unix socket only "
                                            "(unix:///path); set the option 'socket'");
    }
  }
  if (value.starts_with("unix://")) {
    value = value.substr(7);
  }
  if (value.empty() || value.front() != '/') {
    return fail(Errc::invalid_option, from + ": '" + value + "' is not an absolute socket path");
  }
  return value;
}

// Whether `image` is allowed: an entry equal to it, or an entry ending in '*' that is a prefix of it.
bool image_allowed(const std::string& image, const std::vector<std::string>& allowed) {
  return std::any_of(allowed.begin(), allowed.end(), [&](const std::string& entry) {
    if (!entry.empty() && entry.back() == '*') {
      return image.starts_with(std::string_view(entry).substr(0, entry.size() - 1));
    }
    return image == entry;
  });
}

// A container name from free text: [a-zA-Z0-9][a-zA-Z0-9_.-]*.
std::string sanitize_name(std::string_view text) {
  std::string out;
  for (char c : text) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                 c == '.' || c == '-';
    out += plain ? c : '_';
  }
  return out;
}

// The start time of a process, in clock ticks since boot (field 22 of /proc/PID/stat); empty when it is gone.
std::string start_time_of(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');
  if (close == std::string::npos) {
    return {};
  }
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) {
      return field;
    }
  }
  return {};
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) {
    return "unknown";
  }
  return name;
}

std::string url_encode(std::string_view text) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
        c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

class DockerLauncher final : public Launcher {
 public:
  struct Settings {
    std::string socket;
    std::string image;
    std::vector<std::string> allowed_images;
    std::vector<AllowedMount> allowed_mounts;
    std::vector<Mount> mounts;
    fs::path startup_kit;
    std::vector<std::pair<std::string, std::string>> env;
    std::string network;
    double cpus = 0;
    std::int64_t memory_bytes = 0;
    std::string user;
    std::chrono::milliseconds request_timeout{30000};
    OutputPolicy output;
    fs::path workspace;
    fs::path job_dir;
    std::string site = "local";
    std::string job_id = "job";
  };

  static Result<std::unique_ptr<DockerLauncher>> create(const ComponentContext& context) {
    const Options& options = context.options();
    Settings s;
    auto socket = socket_path(options.string("socket"));
    if (!socket) {
      return fail(std::move(socket.error()));
    }
    s.socket = *socket;
    s.image = options.string("image");
    s.allowed_images = options.string_list("allowed_images");
    auto allowed = parse_allowed_mounts(options.string_list("allowed_mounts"));
    if (!allowed) {
      return fail(std::move(allowed.error()));
    }
    s.allowed_mounts = std::move(*allowed);
    auto mounts = parse_mounts(options.string_list("mounts"));
    if (!mounts) {
      return fail(std::move(mounts.error()));
    }
    s.mounts = std::move(*mounts);
    s.startup_kit = options.string("startup_kit");
    if (!s.startup_kit.empty() && s.startup_kit.is_relative()) {
      return fail(Errc::invalid_option,
                  "option 'startup_kit': '" + s.startup_kit.string() + "' is not an absolute path");
    }
    auto env = base::env_entries(options);
    if (!env) {
      return fail(std::move(env.error()));
    }
    s.env = std::move(*env);
    s.network = options.string("network");
    s.cpus = options.number("cpus");
    s.memory_bytes = options.integer("memory_bytes");
    s.user = options.string("user");
    if (s.user.empty()) {
      s.user = std::to_string(getuid()) + ":" + std::to_string(getgid());
    }
    s.request_timeout = options.duration("request_timeout");
    auto output = base::output_policy(options, context.logger_ptr());
    if (!output) {
      return fail(std::move(output.error()));
    }
    s.output = std::move(*output);
    // Absolute: bind mounts need absolute paths, and the container sees them where the host has them.
    s.workspace = fs::absolute(context.workspace()).lexically_normal();
    if (const JobInfo* job = context.registry().job()) {
      s.job_dir = job->job_dir.empty() ? fs::path() : fs::absolute(job->job_dir).lexically_normal();
      s.site = job->site.empty() ? s.site : job->site;
      s.job_id = job->job_id.empty() ? s.job_id : job->job_id;
    }
    return std::unique_ptr<DockerLauncher>(new DockerLauncher(std::move(s), context.stop_token()));
  }

  Result<std::unique_ptr<LaunchHandle>> launch(const LaunchSpec& spec) override {
    std::string where = "launcher.docker: job '" + settings_.job_id + "', '" + spec.name + "'";
    try {
      auto body = plan(spec, where);
      if (!body) {
        return fail(std::move(body.error()));
      }
      auto t0 = Clock::now();
      if (auto ready = prepare(where); !ready) {
        return fail(std::move(ready.error()));
      }
      debug_took("checking the engine and reaping", t0);
      return run(spec, *body, where);
    } catch (const std::exception& e) {
      return fail(Errc::internal, where + ": " + e.what());
    }
  }

 private:
  DockerLauncher(Settings settings, std::stop_token stop)
      : settings_(std::move(settings)),
        engine_(settings_.socket),
        stop_(std::move(stop)),
        instance_(++instances),
        owner_(host_name() + "/" + std::to_string(getpid()) + "/" + start_time_of(getpid()) + "/" +
               std::to_string(instance_)) {}

  Clock::time_point request_deadline() const { return Clock::now() + settings_.request_timeout; }

  // At debug level, how long a step took: where a launch spends its time is the engine's business mostly.
  void debug_took(std::string_view step, Clock::time_point since) const {
    if (settings_.output.logger->enabled(LogLevel::debug)) {
      auto ms = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - since).count() / 1000.0;
      settings_.output.logger->debug(std::string(step) + ": " + std::to_string(ms) + " ms");
    }
  }
  EngineClient::Cancelled cancelled() const {
    return [this] { return stop_.stop_requested(); };
  }

  // The container's create body, everything checked: nothing reaches the engine before this succeeds.
  Result<json> plan(const LaunchSpec& spec, const std::string& where) const {
    if (spec.argv.empty() || spec.argv.front().empty()) {
      return fail(Errc::invalid_argument, where + ": no program to run (argv is empty)");
    }
    for (std::size_t i = 0; i < spec.argv.size(); ++i) {
      if (has_nul(spec.argv[i])) {
        return fail(Errc::invalid_argument, where + ": argv[" + std::to_string(i) + "] contains a NUL byte");
      }
    }
    if (settings_.image.empty()) {
      return fail(Errc::invalid_option, where + ": no image to run (set the option 'image')");
    }
    if (!image_allowed(settings_.image, settings_.allowed_images)) {
      std::string list;
      for (const auto& entry : settings_.allowed_images) {
        list += (list.empty() ? "" : ", ") + entry;
      }
      return fail(Errc::rejected, where + ": the image '" + settings_.image +
                                      "' is not one the site allows (allowed_images: " +
                                      (list.empty() ? std::string("none") : list) + ")");
    }
    std::vector<Mount> own;
    own.push_back({settings_.workspace, settings_.workspace, false});
    if (!settings_.job_dir.empty()) {
      own.push_back({settings_.job_dir, settings_.job_dir, true});
    }
    if (!settings_.startup_kit.empty()) {
      own.push_back({settings_.startup_kit, settings_.startup_kit, true});
    }
    std::error_code ec;
    fs::create_directories(settings_.workspace, ec);
    auto mounts = check_mounts(own, settings_.mounts, settings_.allowed_mounts, settings_.socket);
    if (!mounts) {
      return fail(mounts.error().code,
                  where + " (image '" + settings_.image + "'): " + mounts.error().message);
    }

    std::map<std::string, std::string> env;
    for (const auto& [name, value] : settings_.env) {
      env[name] = value;
    }
    for (const auto& [name, value] : spec.env) {
      if (!valid_env_name(name) || has_nul(value)) {
        return fail(Errc::invalid_argument, where + ": environment variable '" + name +
                                                "' has an invalid name or a NUL byte in its value");
      }
      env[name] = value;
    }
    json env_list = json::array();
    for (const auto& [name, value] : env) {
      env_list.push_back(name + "=" + value);
    }
    json binds = json::array();
    for (const auto& m : *mounts) {
      binds.push_back(m.host.string() + ":" + m.container.string() + (m.read_only ? ":ro" : ":rw"));
    }
    json host_config = {{"Binds", binds},          {"NetworkMode", settings_.network},
                        {"AutoRemove", false},     {"Privileged", false},
                        {"ReadonlyRootfs", false}, {"SecurityOpt", json::array({"no-new-privileges"})}};
    if (settings_.cpus > 0) {
      host_config["NanoCpus"] = static_cast<std::int64_t>(settings_.cpus * 1e9);
    }
    if (settings_.memory_bytes > 0) {
      host_config["Memory"] = settings_.memory_bytes;
    }
    if (!spec.gpus.empty()) {
      for (const auto& gpu : spec.gpus) {
        if (gpu.empty() || has_nul(gpu)) {
          return fail(Errc::invalid_argument, where + ": a GPU id is empty");
        }
      }
      host_config["DeviceRequests"] = json::array(
          {{{"Driver", ""}, {"Count", 0}, {"DeviceIDs", spec.gpus}, {"Capabilities", {{"gpu"}}}}});
    }
    // The program runs as given: the entrypoint is argv[0], so an image's own entrypoint does not wrap it.
    json cmd = json::array();
    for (std::size_t i = 1; i < spec.argv.size(); ++i) {
      cmd.push_back(spec.argv[i]);
    }
    json body = {{"Image", settings_.image},
                 {"Entrypoint", json::array({spec.argv.front()})},
                 {"Cmd", cmd},
                 {"Env", env_list},
                 {"WorkingDir", (settings_.workspace / spec.cwd).lexically_normal().string()},
                 {"User", settings_.user},
                 {"Tty", false},
                 {"OpenStdin", false},
                 {"AttachStdin", false},
                 {"Labels",
                  {{"ember.site", settings_.site},
                   {"ember.job", settings_.job_id},
                   {"ember.name", spec.name},
                   {"ember.launcher", owner_}}},
                 {"HostConfig", host_config}};
    return body;
  }

  // Once per launcher, before its first container: the engine answers, speaks a recent enough API, and
  // what dead launchers of this site left behind is reaped.
  Result<void> prepare(const std::string& where) {
    std::lock_guard lock(mutex_);
    if (prepared_) {
      return ok();
    }
    // /_ping, not /version: podman gathers its whole system information for /version (about a second here);
    // every answer carries the API version in a header.
    auto version = engine_.call("GET", "/_ping", "", request_deadline(), cancelled());
    if (!version) {
      return fail(version.error().code,
                  where + " (image '" + settings_.image + "'): " + version.error().message);
    }
    if (!version->ok()) {
      return fail(Errc::unsupported, where + ": the container engine at '" + settings_.socket +
                                         "' refused API version " + std::string(api_version) + ": " +
                                         version->message());
    }
    const std::string& api = version->api_version;
    if (!api_at_least(api)) {
      return fail(Errc::unsupported, where + ": the container engine at '" + settings_.socket +
                                         "' speaks API version '" + api + "'; launcher.docker needs " +
                                         std::string(api_version) + " or newer");
    }
    if (auto reaped = reap(where); !reaped) {
      return fail(std::move(reaped.error()));
    }
    prepared_ = true;
    return ok();
  }

  static bool api_at_least(const std::string& api) {
    int major = 0;
    int minor = 0;
    char dot = 0;
    std::istringstream in(api);
    if (!(in >> major >> dot >> minor) || dot != '.') {
      return false;
    }
    return major > 1 || (major == 1 && minor >= 41);
  }

  // Stops and removes the containers of this site whose launching process is gone (same host, its pid no
  // longer running with the recorded start time): a launcher or client daemon that crashed left them.
  Result<void> reap(const std::string& where) {
    std::string filter = json({{"label", json::array({"ember.site=" + settings_.site})}}).dump();
    auto listed = engine_.call("GET", "/containers/json?all=1&filters=" + url_encode(filter), "",
                               request_deadline(), cancelled());
    if (!listed) {
      return fail(listed.error().code,
                  where + ": cannot list the site's containers: " + listed.error().message);
    }
    if (!listed->ok()) {
      return fail(Errc::rejected, where + ": the engine refused to list containers: " + listed->message());
    }
    auto containers = json::parse(listed->body, nullptr, false);
    if (!containers.is_array()) {
      return ok();
    }
    const std::string this_host = host_name();
    for (const auto& c : containers) {
      if (!c.is_object() || !c.contains("Id") || !c["Id"].is_string() || !c.contains("Labels") ||
          !c["Labels"].is_object()) {
        continue;
      }
      const auto& labels = c["Labels"];
      std::string owner = labels.value("ember.launcher", "");
      std::istringstream parts(owner);
      std::string host, pid, started;
      std::getline(parts, host, '/');
      std::getline(parts, pid, '/');
      std::getline(parts, started, '/');
      if (host != this_host || pid.empty() || started.empty()) {
        continue;  // another machine's (a shared engine), or not one of ours
      }
      long owner_pid = std::strtol(pid.c_str(), nullptr, 10);
      if (owner_pid > 0 && start_time_of(owner_pid) == started) {
        continue;  // its launcher still runs (another job of this site, or this process)
      }
      std::string id = c["Id"].get<std::string>();
      auto removed =
          engine_.call("DELETE", "/containers/" + id + "?force=1&v=1", "", request_deadline(), cancelled());
      if (!removed) {
        return fail(removed.error().code,
                    where + ": cannot reap container " + id.substr(0, 12) + ": " + removed.error().message);
      }
      if (removed->ok() || removed->status == 404) {
        settings_.output.logger->warn(
            "reaped container " + id.substr(0, 12) + " of job '" + labels.value("ember.job", "") + "' ('" +
            labels.value("ember.name", "") + "'), left by a launcher that is gone (pid " + pid + ")");
      } else {
        settings_.output.logger->error(where + ": cannot reap container " + id.substr(0, 12) + ": " +
                                       removed->message());
      }
    }
    return ok();
  }

  Result<std::unique_ptr<LaunchHandle>> run(const LaunchSpec& spec, const json& body,
                                            const std::string& where) {
    std::string image_where = where + " (image '" + settings_.image + "')";
    // Unique among this process's launchers (two jobs of a site may give their trainers the same name).
    std::string name = "ember-" + sanitize_name(settings_.site + "-" + settings_.job_id + "-" + spec.name) +
                       "-" + std::to_string(instance_) + "-" + std::to_string(++launches_);
    auto t0 = Clock::now();
    auto created = engine_.call("POST", "/containers/create?name=" + url_encode(name), body.dump(),
                                request_deadline(), cancelled());
    debug_took("creating the container", t0);
    if (!created) {
      return fail(created.error().code, image_where + ": " + created.error().message);
    }
    if (!created->ok()) {
      return fail(create_error(created->status), image_where + ": the engine cannot create the container '" +
                                                     name + "': " + created->message());
    }
    auto answer = json::parse(created->body, nullptr, false);
    if (!answer.is_object() || !answer.contains("Id") || !answer["Id"].is_string()) {
      return fail(Errc::malformed,
                  image_where + ": the engine's answer to create has no Id: " + created->body);
    }
    std::string id = answer["Id"].get<std::string>();
    t0 = Clock::now();
    auto started = engine_.call("POST", "/containers/" + id + "/start", "", request_deadline(), cancelled());
    debug_took("starting the container", t0);
    if (!started || !started->ok()) {
      // Never started, so never seen by a handle: removed here.
      engine_.call("DELETE", "/containers/" + id + "?force=1&v=1", "", request_deadline());
      if (!started) {
        return fail(started.error().code, image_where + ": " + started.error().message);
      }
      return fail(Errc::rejected,
                  image_where + ": the engine cannot start the container: " + started->message());
    }
    settings_.output.logger->info("started '" + spec.name + "' as container " + id.substr(0, 12) + " (" +
                                  name + ", image " + settings_.image + ": " + spec.argv.front() + ")");
    return std::unique_ptr<LaunchHandle>(std::make_unique<DockerHandle>(
        engine_, id, spec.name, where, settings_.output, settings_.request_timeout));
  }

  static Errc create_error(unsigned status) {
    switch (status) {
      case 404:
        return Errc::not_found;  // no such image
      case 409:
        return Errc::duplicate_name;  // Docker's name conflict (podman answers 500, with the cause)
      default:
        return Errc::rejected;
    }
  }

  Settings settings_;
  const EngineClient engine_;
  std::stop_token stop_;
  const std::uint64_t instance_;  // this launcher's number in this process
  const std::string owner_;       // "<host>/<pid>/<pid's start time>/<instance>", the ember.launcher label
  std::mutex mutex_;
  bool prepared_ = false;
  std::atomic<std::uint64_t> launches_{0};
};

}  // namespace
}  // namespace ember::docker_launcher

namespace {

constexpr ember::OptionSpec docker_options[] = {
    {"socket", ember::OptionType::string, "",
     "the engine's Unix socket (path or unix://path); empty: DOCKER_HOST if unix://, else "
     "/var/run/docker.sock"},
    {"image", ember::OptionType::string, "",
     "the image to run (the job's); must be allowed by allowed_images"},
    {"allowed_images", ember::OptionType::string_list, "[]",
     "the site's allowed images: exact names, or prefixes ending in *; empty allows none"},
    {"allowed_mounts", ember::OptionType::string_list, "[]",
     "the site's host folders containers may see: /PATH (read-only) or /PATH:rw"},
    {"mounts", ember::OptionType::string_list, "[]",
     "more bind mounts, HOST[:CONTAINER][:ro|rw] (read-only by default), each inside allowed_mounts"},
    {"startup_kit", ember::OptionType::string, "",
     "the site's startup kit folder, mounted read-only (empty: none)"},
    {.name = "env",
     .type = ember::OptionType::string_list,
     .default_value = "[]",
     .doc = "NAME=VALUE variables of the container (a launch's own variables are set after them)",
     .choices = "<name>=<any>"},
    {"network", ember::OptionType::string, "none",
     "the container's network mode: none, host, bridge or a network's name"},
    {.name = "cpus",
     .type = ember::OptionType::number,
     .default_value = "0",
     .doc = "CPU limit in CPUs (0.5 = half of one); 0: none",
     .minimum = "0",
     .maximum = "4096"},
    {.name = "memory_bytes",
     .type = ember::OptionType::integer,
     .default_value = "0",
     .doc = "memory limit in bytes; 0: none",
     .minimum = "0"},
    {"user", ember::OptionType::string, "", "UID:GID the program runs as; empty: the launching process's"},
    {.name = "request_timeout",
     .type = ember::OptionType::duration,
     .default_value = "30s",
     .doc = "bound of each request to the engine (create, start, signal, remove)",
     .minimum = "100ms",
     .maximum = "10m"},
    ember::base::stdout_level_option,
    ember::base::stderr_level_option,
    ember::base::max_line_bytes_option,
};

constexpr ember::ComponentDescriptor components[] = {
    ember::component<ember::docker_launcher::DockerLauncher>(
        "docker", "Runs a program in a container through the Docker Engine API on a Unix socket",
        docker_options),
};

}  // namespace

EMBER_PLUGIN(docker_launcher, "docker-launcher", "0.1.0",
             "A launcher for containers: Docker Engine API, site allow-lists, labels, exact exit status",
             "Apache-2.0", components)
