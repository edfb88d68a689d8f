#include "docker_handle.hpp"

#include <signal.h>

#include <algorithm>
#include <array>
#include <cstring>

#include <base/line_splitter.hpp>
#include <nlohmann/json.hpp>

namespace ember::docker_launcher {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// How long the destructor lets a container end on SIGTERM before it kills it.
constexpr auto destroy_grace = 1s;
// How long the followed log may outlive the container before it is cut (it normally ends with it).
constexpr auto log_drain = 2s;
// How long stop() waits for the end after SIGKILL: the engine needs a moment to notice and record it.
constexpr auto kill_bound = 10s;
// A bound on the log-follow and wait requests, which last as long as the container runs; the monitor's
// cancel check cuts them sooner.
constexpr auto forever = std::chrono::hours(24 * 365);

Clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  return Clock::now() + std::clamp(timeout, std::chrono::milliseconds(0),
                                   std::chrono::duration_cast<std::chrono::milliseconds>(forever));
}

// Splits the engine's multiplexed log stream (no TTY): frames of an 8-byte header, [stream, 0, 0, 0,
// length as 32-bit big-endian], then the payload. Stream 1 is stdout, 2 stderr (0, stdin, is not sent).
class Demuxer {
 public:
  template <class Emit>
  void feed(std::string_view data, Emit&& emit) {
    while (!data.empty()) {
      if (remaining_ == 0) {
        auto take = std::min(data.size(), header_.size() - header_fill_);
        std::memcpy(header_.data() + header_fill_, data.data(), take);
        header_fill_ += take;
        data.remove_prefix(take);
        if (header_fill_ < header_.size()) {
          return;
        }
        header_fill_ = 0;
        stream_ = header_[0];
        remaining_ = (std::uint32_t{header_[4]} << 24) | (std::uint32_t{header_[5]} << 16) |
                     (std::uint32_t{header_[6]} << 8) | std::uint32_t{header_[7]};
        continue;
      }
      auto take = std::min<std::size_t>(data.size(), remaining_);
      emit(stream_, data.substr(0, take));
      remaining_ -= static_cast<std::uint32_t>(take);
      data.remove_prefix(take);
    }
  }

 private:
  std::array<unsigned char, 8> header_{};
  std::size_t header_fill_ = 0;
  unsigned char stream_ = 1;
  std::uint32_t remaining_ = 0;
};

}  // namespace

ExitStatus exit_status_from_engine(std::int64_t code) {
  if (code > 128 && code <= 128 + 64) {
    return ExitStatus{ExitStatus::How::signaled, static_cast<int>(code - 128)};
  }
  return ExitStatus{ExitStatus::How::exited, static_cast<int>(code)};
}

DockerHandle::DockerHandle(EngineClient engine, std::string container_id, std::string name, std::string where,
                           OutputPolicy output, std::chrono::milliseconds request_timeout)
    : engine_(std::move(engine)),
      id_(std::move(container_id)),
      name_(std::move(name)),
      where_(std::move(where)),
      prefix_("[" + name_ + " container " + id_.substr(0, 12) + "] "),
      output_(std::move(output)),
      request_timeout_(request_timeout),
      out_lines_(output_.max_line_bytes),
      err_lines_(output_.max_line_bytes) {
  monitor_ = std::thread([this] { monitor(); });
}

DockerHandle::~DockerHandle() {
  auto stopped = stop(destroy_grace);
  if (!stopped) {
    output_.logger->error(stopped.error().message);
  }
  quit_ = true;
  monitor_.join();
  remove();  // the monitor removes the container once it has ended; this covers a container it never saw end
}

RunState DockerHandle::state() {
  std::lock_guard lock(mutex_);
  if (lost_) {
    return RunState::failed;
  }
  return base::run_state(status_, stop_requested_);
}

Result<std::optional<ExitStatus>> DockerHandle::wait(std::chrono::milliseconds timeout) {
  Lock lock(mutex_);
  changed_.wait_until(lock, deadline_after(timeout), [this] { return status_ || lost_; });
  if (lost_) {
    return fail(*lost_);
  }
  return status_;
}

Result<ExitStatus> DockerHandle::stop(std::chrono::milliseconds grace) {
  std::lock_guard serial(stop_mutex_);
  Lock lock(mutex_);
  if (!status_ && !lost_) {
    stop_requested_ = true;
    lock.unlock();
    // An error here (the container ended meanwhile, the engine went away) shows in what the waits see.
    auto termed = signal("SIGTERM");
    if (!termed && termed.error().code == Errc::peer_gone) {
      return fail(std::move(termed.error()));  // no engine to ask: waiting would only add the grace
    }
    lock.lock();
    if (!changed_.wait_until(lock, deadline_after(grace), [this] { return status_ || lost_; })) {
      lock.unlock();
      auto killed = signal("SIGKILL");
      if (!killed && killed.error().code == Errc::peer_gone) {
        return fail(std::move(killed.error()));
      }
      lock.lock();
      if (!changed_.wait_until(lock, deadline_after(kill_bound), [this] { return status_ || lost_; })) {
        std::string cause = !killed ? killed.error().message : !termed ? termed.error().message : "";
        return fail(Errc::timeout, where_ + ": container " + id_.substr(0, 12) + " had not ended " +
                                       std::to_string(kill_bound.count()) + "s after SIGKILL" +
                                       (cause.empty() ? std::string() : " (" + cause + ")"));
      }
    }
  }
  if (lost_) {
    return fail(*lost_);
  }
  return *status_;
}

Result<void> DockerHandle::signal(const char* name) {
  auto reply = engine_.call("POST", "/containers/" + id_ + "/kill?signal=" + name, "",
                            deadline_after(request_timeout_));
  if (!reply) {
    return fail(reply.error().code, where_ + ": cannot send " + name + ": " + reply.error().message);
  }
  // 409 (Docker) or 500 (podman, "container state improper"): it is not running any more; the monitor
  // collects how it ended.
  if (!reply->ok() && reply->status != 409 && reply->status != 500) {
    return fail(Errc::rejected, where_ + ": the engine refused " + name + ": " + reply->message());
  }
  return ok();
}

void DockerHandle::monitor() {
  std::thread log_thread([this] {
    pump_log(true);
    std::lock_guard lock(log_mutex_);
    log_done_ = true;
    log_changed_.notify_all();
  });
  auto status = collect_exit();
  {
    // The followed log ends with the container. Podman may keep it open when the container ended just as the
    // request came: then it is cut after a bound and what is left is read without following.
    std::unique_lock lock(log_mutex_);
    if (!log_changed_.wait_for(lock, log_drain, [this] { return log_done_ || quit_.load(); })) {
      log_cut_ = true;
    }
  }
  log_thread.join();
  if (!status && status.error().code == Errc::cancelled) {
    return;  // the destructor cut the wait; it removes the container
  }
  if (log_cut_ && status) {
    pump_log(false);
  }
  out_lines_.finish([&](std::string_view line) { log_line(output_.stdout_level, line); });
  err_lines_.finish([&](std::string_view line) { log_line(output_.stderr_level, line); });
  // Logged before it is published, so whoever sees the end finds its log line already written.
  if (status) {
    log_end(*status);
  } else {
    output_.logger->error(status.error().message);
  }
  {
    std::lock_guard lock(mutex_);
    if (status) {
      status_ = *status;
    } else {
      lost_ = status.error();
    }
    changed_.notify_all();
  }
  remove();
}

void DockerHandle::log_line(LogLevel level, std::string_view line) {
  if (output_.logger->enabled(level)) {
    std::string message = prefix_;
    message += line;
    output_.logger->log(level, message);
  }
}

void DockerHandle::pump_log(bool follow) {
  Demuxer demuxer;
  std::uint64_t out_seen = 0;
  std::uint64_t err_seen = 0;
  auto on_data = [&](std::string_view data) {
    demuxer.feed(data, [&](unsigned char stream, std::string_view payload) {
      const bool is_err = stream == 2;
      std::uint64_t& seen = is_err ? err_seen : out_seen;
      std::uint64_t& logged = is_err ? err_logged_ : out_logged_;
      // A second read of the log (after a cut) starts from the beginning: skip what is logged already.
      if (seen < logged) {
        auto skip = std::min<std::uint64_t>(logged - seen, payload.size());
        seen += skip;
        payload.remove_prefix(static_cast<std::size_t>(skip));
      }
      seen += payload.size();
      logged += payload.size();
      (is_err ? err_lines_ : out_lines_).feed(payload, [&](std::string_view line) {
        log_line(is_err ? output_.stderr_level : output_.stdout_level, line);
      });
    });
  };
  std::string target = "/containers/" + id_ + "/logs?stdout=1&stderr=1" + (follow ? "&follow=1" : "");
  auto reply = engine_.stream("GET", target, "", on_data,
                              follow ? Clock::now() + forever : deadline_after(request_timeout_),
                              [this, follow] { return quit_.load() || (follow && log_cut_.load()); });
  if (!reply && reply.error().code != Errc::cancelled) {
    output_.logger->warn(where_ + ": the container's log stopped: " + reply.error().message);
  } else if (reply && !reply->ok()) {
    output_.logger->warn(where_ + ": the engine refused the container's log: " + reply->message());
  }
}

Result<ExitStatus> DockerHandle::collect_exit() {
  // The default condition, not-running: podman 4.3 answers "removed" with 0 whatever the exit code.
  auto reply = engine_.call("POST", "/containers/" + id_ + "/wait", "", Clock::now() + forever,
                            [this] { return quit_.load(); });
  if (!reply) {
    return fail(reply.error().code,
                where_ + ": lost the container while waiting for its end: " + reply.error().message);
  }
  if (!reply->ok()) {
    return fail(Errc::peer_gone,
                where_ + ": the engine cannot say how the container ended: " + reply->message());
  }
  auto parsed = nlohmann::json::parse(reply->body, nullptr, false);
  if (!parsed.is_object() || !parsed.contains("StatusCode") || !parsed["StatusCode"].is_number_integer()) {
    return fail(Errc::malformed, where_ + ": the engine's answer to wait has no StatusCode: " + reply->body);
  }
  return exit_status_from_engine(parsed["StatusCode"].get<std::int64_t>());
}

void DockerHandle::remove() {
  {
    std::lock_guard lock(mutex_);
    if (removed_) {
      return;
    }
    removed_ = true;
  }
  auto reply =
      engine_.call("DELETE", "/containers/" + id_ + "?force=1&v=1", "", deadline_after(request_timeout_));
  if (!reply) {
    output_.logger->error(where_ + ": cannot remove container " + id_.substr(0, 12) + ": " +
                          reply.error().message);
  } else if (!reply->ok() && reply->status != 404) {
    output_.logger->error(where_ + ": the engine refused to remove container " + id_.substr(0, 12) + ": " +
                          reply->message());
  }
}

void DockerHandle::log_end(const ExitStatus& status) {
  std::string message = "'" + name_ + "' (container " + id_.substr(0, 12) + ") ";
  if (status.how == ExitStatus::How::exited) {
    message += "exited with code " + std::to_string(status.value);
  } else {
    const char* abbrev = sigabbrev_np(status.value);
    message += "was killed by signal " + std::to_string(status.value) +
               (abbrev != nullptr ? std::string(" (SIG") + abbrev + ")" : std::string());
  }
  output_.logger->log(status.success() ? LogLevel::info : LogLevel::warn, message);
}

}  // namespace ember::docker_launcher
