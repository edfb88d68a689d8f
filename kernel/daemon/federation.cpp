#include "federation.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "base/unique_fd.hpp"
#include "codec.hpp"

namespace ember::kernel::fed {

Result<cell::Config> cell_config(const SiteConfig& site, std::string fqcn, std::string parent,
                                 std::string listen) {
  if (!site.cell) {
    return fail(
        Errc::invalid_config,
        site.file.string() + ": no [cell] table: a daemon needs a startup kit's kit.toml (ember provision)");
  }
  const auto& c = *site.cell;
  cell::Config config;
  config.fqcn = std::move(fqcn);
  config.parent = std::move(parent);
  config.listen = std::move(listen);
  config.parent_name = c.server_name;
  config.insecure = c.insecure;
  if (!c.insecure || (!c.ca.empty() && !c.cert.empty() && !c.key.empty())) {
    if (c.ca.empty() || c.cert.empty() || c.key.empty()) {
      return fail(Errc::invalid_config,
                  site.file.string() + ": cell.ca, cell.cert and cell.key are required (or insecure = true)");
    }
    config.tls = cell::TlsFiles{c.ca, c.cert, c.key};
    config.insecure = false;
  }
  config.packet_bytes = static_cast<std::uint32_t>(c.packet_bytes);
  config.max_message_bytes = c.max_message_bytes;
  config.connect_timeout = c.connect_timeout;
  config.keepalive = c.keepalive;
  config.keepalive_timeout = c.keepalive_timeout;
  config.backoff_initial = c.backoff_initial;
  config.backoff_max = c.backoff_max;
  return config;
}

std::string random_token() {
  unsigned char bytes[32];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    }
  }
  static constexpr char hex[] = "0123456789abcdef";
  std::string text;
  for (unsigned char b : bytes) {
    text += hex[b >> 4];
    text += hex[b & 15];
  }
  return text;
}

Result<std::string> read_token_file(const std::filesystem::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    return fail(Errc::io_error, file.string() + ": cannot read the job token: " + std::strerror(errno));
  }
  if ((st.st_mode & 077) != 0) {
    return fail(Errc::invalid_argument,
                file.string() + ": the job token is readable by others (want mode 0600)");
  }
  auto text = read_text_file(file, 4096);
  if (!text) {
    return fail(std::move(text.error()));
  }
  while (!text->empty() && (text->back() == '\n' || text->back() == '\r')) {
    text->pop_back();
  }
  if (text->empty()) {
    return fail(Errc::invalid_argument, file.string() + ": the job token file is empty");
  }
  return *text;
}

Result<void> write_token_file(const std::filesystem::path& file, const std::string& token) {
  base::UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) {
    return fail(Errc::io_error, file.string() + ": cannot write the job token: " + std::strerror(errno));
  }
  const std::string line = token + "\n";
  if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    return fail(Errc::io_error, file.string() + ": cannot write the job token: " + std::strerror(errno));
  }
  return ok();
}

namespace {

// The start time of a process in clock ticks since boot (/proc/<pid>/stat, field 22): with the pid, it
// tells a process from a later one that reused its pid.
std::optional<std::uint64_t> start_time(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');
  if (close == std::string::npos || close + 2 > text.size()) {
    return std::nullopt;
  }
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) {
      return std::strtoull(field.c_str(), nullptr, 10);
    }
  }
  return std::nullopt;
}

}  // namespace

void record_process(const std::filesystem::path& file, long pid) {
  auto t = start_time(pid);
  if (!t) {
    return;
  }
  std::ofstream out(file, std::ios::trunc);
  out << "{\"pid\": " << pid << ", \"start_time\": " << *t << "}\n";
}

std::optional<std::string> reap_recorded(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) {
    return std::nullopt;
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::error_code ec;
  std::filesystem::remove(file, ec);
  long pid = 0;
  unsigned long long recorded = 0;
  if (std::sscanf(text.c_str(), "{\"pid\": %ld, \"start_time\": %llu}", &pid, &recorded) != 2 || pid <= 1) {
    return "an unreadable process record";
  }
  if (start_time(pid) != recorded) {
    return "process group " + std::to_string(pid) + ", already gone";  // or its pid is another process's now
  }
  // The recorded process led its own group (a launcher.process child); its own children are in theirs, which
  // it ends when told: TERM the group, give it time, then KILL.
  ::kill(-static_cast<pid_t>(pid), SIGTERM);
  for (int i = 0; i < 50 && start_time(pid) == recorded; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (start_time(pid) == recorded) {
    ::kill(-static_cast<pid_t>(pid), SIGKILL);
  }
  return "process group " + std::to_string(pid) + ", ended";
}

cell::Reply text_reply(std::string_view text) {
  cell::Reply reply;
  reply.message.payload.resize(text.size());
  std::memcpy(reply.message.payload.data(), text.data(), text.size());
  return reply;
}

cell::Reply json_reply(const nlohmann::json& value) {
  return text_reply(value.dump());
}

cell::Reply error_reply(const Error& error) {
  cell::Reply reply;
  put_error(reply.message.headers, error);
  return reply;
}

const std::string& header_or_empty(const cell::Message& m, std::string_view key) {
  static const std::string empty;
  const std::string* value = m.header(key);
  return value != nullptr ? *value : empty;
}

nlohmann::json parse_payload(std::span<const std::byte> payload) {
  const auto* begin = reinterpret_cast<const char*>(payload.data());
  auto parsed = nlohmann::json::parse(begin, begin + payload.size(), nullptr, false);
  return parsed.is_discarded() ? nlohmann::json(nullptr) : parsed;
}

cell::LinkObserver link_logger(std::shared_ptr<Logger> log) {
  return [log = std::move(log)](const cell::LinkEvent& e) {
    const bool admin = e.peer.starts_with("admin-");
    switch (e.kind) {
      case cell::LinkEvent::Kind::child_joined:
        if (!admin) {
          log->info(e.peer + " joined");
        }
        break;
      case cell::LinkEvent::Kind::child_left:
        if (!admin) {
          log->warn(e.peer + " left: " + e.detail);
        }
        break;
      case cell::LinkEvent::Kind::parent_up:
        log->info("joined the server");
        break;
      case cell::LinkEvent::Kind::parent_down:
        log->warn("lost the server: " + e.detail);
        break;
      case cell::LinkEvent::Kind::refused:
        log->warn(e.peer + " refused: " + e.detail);
        break;
    }
  };
}

std::vector<std::string> job_process_argv(const std::filesystem::path& exe, const std::filesystem::path& kit,
                                          const std::vector<std::filesystem::path>& search_paths,
                                          const std::string& role, const std::vector<std::string>& args) {
  std::vector<std::string> argv{exe.string(), "--site", kit.string(), "--no-env-plugin-path"};
  for (const auto& p : search_paths) {
    argv.insert(argv.end(), {"--plugin-path", p.string()});
  }
  argv.insert(argv.end(), {"run-job", role});
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

ExitStatus wait_launched(LaunchHandle& handle, std::chrono::milliseconds grace, std::stop_token stop) {
  for (;;) {
    auto waited =
        handle.wait(stop.stop_requested() ? std::chrono::milliseconds(0) : std::chrono::milliseconds(200));
    if (!waited) {
      return ExitStatus{ExitStatus::How::exited, 1};
    }
    if (*waited) {
      return **waited;
    }
    if (stop.stop_requested()) {
      auto stopped = handle.stop(grace);
      return stopped ? *stopped : ExitStatus{ExitStatus::How::signaled, SIGKILL};
    }
  }
}

bool sleep_for(std::chrono::milliseconds d, std::stop_token stop) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  cv.wait_for(lock, stop, d, [] { return false; });
  return !stop.stop_requested();
}

}  // namespace ember::kernel::fed
