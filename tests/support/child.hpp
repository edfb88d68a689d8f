#pragma once
// A program a test starts and must not leave behind: its own process group, its output (stdout and stderr)
// appended to a file the test can read, and SIGTERM then SIGKILL to the whole group when it goes out of
// scope. Header-only; used by the tests that drive `ember` daemons as separate processes.

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace ember::test {

/// How much longer a bound the product sets (an abort within shutdown_grace + 1 s) may take in a test:
/// under the sanitizers every process runs several times slower and checks its memory at exit, so such a
/// bound stretches as the suite's timeouts do (--timeout-multiplier 3).
#if defined(__SANITIZE_ADDRESS__)
inline constexpr int slowdown = 3;
#else
inline constexpr int slowdown = 1;
#endif

/// The pids of every process below `root` (children, grandchildren, ...), from /proc.
inline std::vector<pid_t> descendants(pid_t root) {
  std::multimap<pid_t, pid_t> children;  // parent -> child
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    std::ifstream in(entry.path() / "stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto close = text.rfind(')');
    if (close == std::string::npos || close + 4 > text.size()) {
      continue;
    }
    char state = 0;
    long parent = 0;
    if (std::sscanf(text.c_str() + close + 2, "%c %ld", &state, &parent) == 2 && state != 'Z') {
      children.emplace(static_cast<pid_t>(parent), static_cast<pid_t>(std::stol(name)));
    }
  }
  std::vector<pid_t> found;
  std::vector<pid_t> todo{root};
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    auto [begin, end] = children.equal_range(p);
    for (auto it = begin; it != end; ++it) {
      found.push_back(it->second);
      todo.push_back(it->second);
    }
  }
  return found;
}

/// The command line of `pid` with spaces between arguments ("" once it is gone).
inline std::string command_line(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (auto& c : text) {
    c = c == '\0' ? ' ' : c;
  }
  return text;
}

class Child {
 public:
  /// Starts `argv` (argv[0] a path, or looked up in PATH) in a process group of its own, with `env` added
  /// to this process's environment, its stdout and stderr appended to `log`.
  Child(const std::vector<std::string>& argv, std::filesystem::path log,
        const std::vector<std::pair<std::string, std::string>>& env = {})
      : log_(std::move(log)) {
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setpgid(0, 0);
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      for (const auto& [k, v] : env) {
        ::setenv(k.c_str(), v.c_str(), 1);
      }
      std::vector<char*> args;
      for (const auto& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
      }
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      ::_exit(127);
    }
    if (pid_ > 0) {
      ::setpgid(pid_, pid_);  // also from here: no race with a signal sent right after
    }
  }
  ~Child() { stop(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !status_; }

  /// Everything it printed so far.
  std::string output() const {
    std::ifstream in(log_);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  /// Waits until its output contains `needle`; false after `bound`, or once it exited without printing it.
  bool wait_for_output(const std::string& needle, std::chrono::milliseconds bound) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    while (std::chrono::steady_clock::now() < deadline) {
      if (output().find(needle) != std::string::npos) {
        return true;
      }
      if (exited()) {
        return output().find(needle) != std::string::npos;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  /// Sends `sig` to the process (not its group).
  void signal(int sig) {
    if (running()) {
      ::kill(pid_, sig);
    }
  }
  /// Waits for its exit: its exit code, 128 + the signal that killed it, or nullopt after `bound`.
  std::optional<int> wait_exit(std::chrono::milliseconds bound) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    while (!exited() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return status_;
  }
  /// Ends it and its group: SIGTERM, up to 10 s, then SIGKILL. Idempotent.
  void stop() {
    if (pid_ <= 0) {
      return;
    }
    if (!exited()) {
      ::kill(-pid_, SIGTERM);
      if (!wait_exit(std::chrono::seconds(10))) {
        ::kill(-pid_, SIGKILL);
        int raw = 0;
        ::waitpid(pid_, &raw, 0);
        status_ = 128 + SIGKILL;
      }
    }
    ::kill(-pid_, SIGKILL);  // anything of its group that outlived it
  }

 private:
  bool exited() {
    if (status_ || pid_ <= 0) {
      return true;
    }
    int raw = 0;
    if (::waitpid(pid_, &raw, WNOHANG) == pid_) {
      status_ = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
      return true;
    }
    return false;
  }

  std::filesystem::path log_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

}  // namespace ember::test
