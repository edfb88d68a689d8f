#pragma once
// Processes and folders for pipe_bench: a child that is always reaped, a temporary folder that is always
// removed, and a live process's peak resident memory.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ember/result.hpp>

namespace ember::bench {

/// The running program's own file, so that it can start itself in another role.
std::string self_exe();

/// Peak resident memory of a live process (VmHWM in /proc/<pid>/status), in KiB; 0 when unreadable.
std::uint64_t peak_rss_kib(pid_t pid);

/// A child process (started with posix_spawn, without the caller's EMBER_* variables) that is always
/// reaped: killed with SIGKILL if it still runs when the object goes.
class Child {
 public:
  static Result<std::unique_ptr<Child>> spawn(const std::vector<std::string>& argv);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  /// The wait status once the child has ended, waiting at most `timeout`; nullopt while it runs.
  std::optional<int> wait_for(std::chrono::milliseconds timeout);

 private:
  explicit Child(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  std::optional<int> status_;
};

/// "exit 0", "exit 3", "signal 9": a wait status for messages.
std::string describe_status(int status);

/// Waits at most `timeout` for `child` to exit with status 0; the error says how it ended otherwise.
Result<void> expect_clean_exit(Child& child, std::chrono::milliseconds timeout, const std::string& what);

/// A folder removed, with everything in it, when the object goes.
class TempDir {
 public:
  /// Makes `parent`/`prefix`.XXXXXX.
  static Result<TempDir> make(const std::filesystem::path& parent, const std::string& prefix);
  TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  explicit TempDir(std::filesystem::path path) : path_(std::move(path)) {}
  std::filesystem::path path_;
};

}  // namespace ember::bench
