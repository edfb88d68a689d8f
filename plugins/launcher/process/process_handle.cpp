#include "process_handle.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

namespace ember::process_launcher {

namespace {

using namespace std::chrono_literals;

// How long the destructor lets a program end on SIGTERM before it kills the group.
constexpr auto destroy_grace = 1s;
// How long stop() waits for the group to vanish after SIGKILL; the kernel needs no more than a moment.
constexpr auto kill_bound = 5s;
// How often waits look for members that ended: no notification comes for re-parented descendants.
constexpr auto reap_slice = 20ms;
// Reads per stream before the monitor looks at the other one, so a chatty stream cannot starve it.
constexpr int reads_per_turn = 16;

std::chrono::steady_clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  // Clamped so that a caller's "forever" (milliseconds::max()) cannot overflow the clock.
  constexpr std::chrono::milliseconds longest = std::chrono::hours(24 * 365);
  return std::chrono::steady_clock::now() + std::clamp(timeout, std::chrono::milliseconds(0), longest);
}

}  // namespace

ProcessHandle::ProcessHandle(std::shared_ptr<Spawner> spawner, Child child, std::string name,
                             OutputPolicy output)
    : spawner_(std::move(spawner)),
      pid_(child.pid),
      name_(std::move(name)),
      prefix_("[" + name_ + " pid " + std::to_string(pid_) + "] "),
      output_(std::move(output)),
      out_(std::move(child.out)),
      err_(std::move(child.err)),
      pidfd_(std::move(child.pidfd)),
      wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  monitor_ = std::thread([this] { monitor(); });
}

ProcessHandle::~ProcessHandle() {
  auto stopped = stop(destroy_grace);
  if (!stopped) {
    output_.logger->error(stopped.error().message);
  }
  quit_ = true;
  if (wake_) {
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t written = write(wake_.get(), &one, sizeof one);
  }
  monitor_.join();
}

RunState ProcessHandle::state() {
  std::lock_guard lock(mutex_);
  reap();
  if (status_lost_) {
    return RunState::failed;
  }
  return base::run_state(status_, stop_requested_);
}

Result<std::optional<ExitStatus>> ProcessHandle::wait(std::chrono::milliseconds timeout) {
  auto deadline = deadline_after(timeout);
  Lock lock(mutex_);
  while (true) {
    reap();
    if (status_) {
      return status_;
    }
    if (status_lost_) {
      return fail(lost_status());
    }
    auto now = Clock::now();
    if (now >= deadline) {
      return std::optional<ExitStatus>();
    }
    // The monitor wakes this wait when the child's pidfd fires; the slice covers kernels without pidfds.
    changed_.wait_until(lock, std::min(deadline, now + 2 * reap_slice));
  }
}

Result<ExitStatus> ProcessHandle::stop(std::chrono::milliseconds grace) {
  std::lock_guard serial(stop_mutex_);
  Lock lock(mutex_);
  reap();
  if (!group_gone()) {
    if (!status_ && !status_lost_) {
      stop_requested_ = true;
    }
    signal_group(SIGTERM);
    signal_group(SIGCONT);  // a stopped member would keep SIGTERM pending until the SIGKILL
    if (!settle(lock, deadline_after(grace))) {
      signal_group(SIGKILL);
      if (!settle(lock, deadline_after(kill_bound))) {
        signal_group(SIGKILL);
        return fail(Errc::timeout, "launcher.process: '" + name_ + "': process group " + id() +
                                       " still has members " + std::to_string(kill_bound.count()) +
                                       "s after SIGKILL");
      }
    }
  }
  if (status_lost_) {
    return fail(lost_status());
  }
  return *status_;
}

void ProcessHandle::reap() {
  while (true) {
    int raw = 0;
    // -pid: the group, so that descendants re-parented to this (subreaper) process are collected as well.
    pid_t got = waitpid(-pid_, &raw, WNOHANG);
    if (got == 0) {
      return;
    }
    if (got < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno == ECHILD && !status_ && !status_lost_) {
        // The main child is a session leader and cannot leave its group, so it is gone, reaped by someone
        // else (SIGCHLD ignored, or a waitpid(-1) elsewhere in the process).
        status_lost_ = true;
        changed_.notify_all();
      }
      return;
    }
    if (got == pid_) {
      status_ = WIFSIGNALED(raw) ? ExitStatus{ExitStatus::How::signaled, WTERMSIG(raw)}
                                 : ExitStatus{ExitStatus::How::exited, WEXITSTATUS(raw)};
      changed_.notify_all();
      log_end();
    }
  }
}

bool ProcessHandle::group_gone() {
  if (!group_gone_ && (status_ || status_lost_) && kill(-pid_, 0) == -1 && errno == ESRCH) {
    group_gone_ = true;
  }
  return group_gone_;
}

bool ProcessHandle::settle(Lock& lock, Clock::time_point deadline) {
  while (true) {
    reap();
    if (group_gone()) {
      return true;
    }
    auto now = Clock::now();
    if (now >= deadline) {
      return false;
    }
    changed_.wait_until(lock, std::min(deadline, now + reap_slice));
  }
}

void ProcessHandle::signal_group(int signal) {
  // Once the group is known to be empty its id may be reused: never signal it again.
  if (!group_gone_) {
    kill(-pid_, signal);
  }
}

void ProcessHandle::log_end() {
  std::string message = "'" + name_ + "' (pid " + id() + ") ";
  if (status_->how == ExitStatus::How::exited) {
    message += "exited with code " + std::to_string(status_->value);
  } else {
    const char* abbrev = sigabbrev_np(status_->value);
    message += "was killed by signal " + std::to_string(status_->value) +
               (abbrev != nullptr ? std::string(" (SIG") + abbrev + ")" : std::string());
  }
  output_.logger->log(status_->success() ? LogLevel::info : LogLevel::warn, message);
}

Error ProcessHandle::lost_status() const {
  return Error{Errc::internal, "launcher.process: '" + name_ + "': the exit status of pid " + id() +
                                   " was collected elsewhere in this process (is SIGCHLD ignored?)"};
}

void ProcessHandle::log_line(LogLevel level, std::string_view line) {
  if (output_.logger->enabled(level)) {
    std::string message = prefix_;
    message += line;
    output_.logger->log(level, message);
  }
}

ProcessHandle::Pumped ProcessHandle::pump(int fd, LogLevel level, LineSplitter& lines,
                                          std::vector<char>& buffer) {
  auto emit = [&](std::string_view line) { log_line(level, line); };
  for (int i = 0; i < reads_per_turn; ++i) {
    ssize_t got = read(fd, buffer.data(), buffer.size());
    if (got > 0) {
      lines.feed(std::string_view(buffer.data(), static_cast<std::size_t>(got)), emit);
      continue;
    }
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return Pumped::drained;
    }
    lines.finish(emit);  // end of file (or a broken pipe): the last line may lack its newline
    return Pumped::closed;
  }
  return Pumped::more;
}

void ProcessHandle::monitor() {
  std::vector<char> buffer(64 * 1024);
  LineSplitter out_lines(output_.max_line_bytes);
  LineSplitter err_lines(output_.max_line_bytes);
  bool out_open = true;
  bool err_open = true;
  while (true) {
    bool main_done = false;
    {
      std::lock_guard lock(mutex_);
      main_done = status_ || status_lost_;
    }
    if (main_done && !out_open && !err_open) {
      return;
    }
    // Without a pidfd (or once the main child is reaped, while others still hold its pipes) the loop wakes
    // now and then to reap; with one, it sleeps until something happens.
    bool use_pidfd = pidfd_ && !main_done;
    int timeout = use_pidfd && wake_ ? -1 : static_cast<int>((main_done ? 10 : 2) * reap_slice.count());
    pollfd fds[] = {{out_open ? out_.get() : -1, POLLIN, 0},
                    {err_open ? err_.get() : -1, POLLIN, 0},
                    {use_pidfd ? pidfd_.get() : -1, POLLIN, 0},
                    {wake_.get(), POLLIN, 0}};
    int ready = poll(fds, std::size(fds), timeout);
    if (ready < 0 && errno != EINTR) {
      break;
    }
    if (quit_ || fds[3].revents != 0) {
      break;
    }
    if (out_open && fds[0].revents != 0) {
      out_open = pump(out_.get(), output_.stdout_level, out_lines, buffer) != Pumped::closed;
    }
    if (err_open && fds[1].revents != 0) {
      err_open = pump(err_.get(), output_.stderr_level, err_lines, buffer) != Pumped::closed;
    }
    if (ready == 0 || fds[2].revents != 0) {
      std::lock_guard lock(mutex_);
      reap();
    }
  }
  // Told to finish (the group has been stopped): log what is still buffered in the pipes, without
  // waiting for writers that may have escaped the group.
  for (int round = 0; round < 64 && out_open; ++round) {
    auto pumped = pump(out_.get(), output_.stdout_level, out_lines, buffer);
    out_open = pumped != Pumped::closed;
    if (pumped != Pumped::more) {
      break;
    }
  }
  for (int round = 0; round < 64 && err_open; ++round) {
    auto pumped = pump(err_.get(), output_.stderr_level, err_lines, buffer);
    err_open = pumped != Pumped::closed;
    if (pumped != Pumped::more) {
      break;
    }
  }
  auto flush = [&](LogLevel level, LineSplitter& lines) {
    lines.finish([&](std::string_view line) { log_line(level, line); });
  };
  flush(output_.stdout_level, out_lines);
  flush(output_.stderr_level, err_lines);
}

}  // namespace ember::process_launcher
