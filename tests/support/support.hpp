#pragma once
// Helpers shared by the test suites: temporary folders, kernels with the reference plugins, and running
// the ember binary.

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kernel.hpp"

namespace ember::test {

/// How soon a call blocked with a 10 s deadline must return once something wakes it (a close from
/// another thread, a stop, room in the pipe). A call that was not woken returns only at its deadline, ten
/// times later, so this still tells a wake from a timeout; it is generous because the suite runs two
/// tests at a time on two cores, under sanitizers too, where a woken thread may wait 100 ms for a core.
inline constexpr std::chrono::milliseconds kWakeBound{1000};

/// Whole milliseconds from `from` to `to`, for assertions that print readably.
inline long long ms_between(std::chrono::steady_clock::time_point from,
                            std::chrono::steady_clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}

/// A fresh folder under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const noexcept { return path_; }
  /// Writes `text` to `name` inside the folder and returns the full path.
  std::filesystem::path write(const std::string& name, const std::string& text) const;

 private:
  std::filesystem::path path_;
};

/// A kernel that searches no folder and has the four reference plugins registered statically.
std::unique_ptr<kernel::Kernel> static_kernel();

/// A kernel that searches only `paths` (no environment, no defaults), plugins already loaded; components
/// it creates get `workspace` (and `{workspace}` substitutes to it).
std::unique_ptr<kernel::Kernel> kernel_with_paths(std::vector<std::filesystem::path> paths,
                                                  const std::filesystem::path& workspace = ".");

/// The build tree's folders, from the test environment.
std::filesystem::path build_root();
std::filesystem::path source_root();

/// What a finished child process printed and how it exited.
struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

/// Runs a program with arguments (no shell), captures stdout and stderr, and waits at most `timeout_s`
/// seconds before killing it (then exit_code is -1).
RunResult run_program(const std::vector<std::string>& argv, int timeout_s = 60);

}  // namespace ember::test
