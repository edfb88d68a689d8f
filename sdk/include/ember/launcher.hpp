#pragma once
// Launchers: start a job or a trainer as a process tree or a container, watch it and stop it.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ember/component.hpp>

namespace ember {

/// What to launch.
struct LaunchSpec {
  std::string name;                        ///< a label for logs ("site-1.trainer")
  std::vector<std::string> argv;           ///< program and arguments; argv[0] is looked up in PATH
  std::map<std::string, std::string> env;  ///< variables set on top of the launcher's environment policy
  std::filesystem::path cwd;               ///< working directory; empty = the workspace
  std::vector<std::string> gpus;           ///< GPU ids, passed as CUDA_VISIBLE_DEVICES (or device requests)
};

/// The life of what a launcher started.
enum class RunState : std::uint32_t { not_started = 0, starting = 1, started = 2, stopped = 3, failed = 4 };

/// The state's name ("started").
constexpr std::string_view to_string(RunState state) noexcept {
  switch (state) {
    case RunState::not_started:
      return "not_started";
    case RunState::starting:
      return "starting";
    case RunState::started:
      return "started";
    case RunState::stopped:
      return "stopped";
    case RunState::failed:
      return "failed";
  }
  return "unknown";
}

/// How it ended, kept exactly: an exit code or the signal that killed it.
struct ExitStatus {
  enum class How : std::uint32_t { exited = 0, signaled = 1 };
  How how = How::exited;
  int value = 0;  ///< the exit code, or the signal number

  bool success() const noexcept { return how == How::exited && value == 0; }
  friend bool operator==(const ExitStatus&, const ExitStatus&) = default;
};

/// A handle on one launched process tree or container. Destroying it stops what it launched.
/// Thread-safe: wait() and state() may run on one thread (a watcher) while stop() comes from another.
class EMBER_API LaunchHandle {
 public:
  virtual ~LaunchHandle() = default;

  /// A stable id for logs (a pid, a container id).
  virtual std::string id() const = 0;
  /// The current state.
  virtual RunState state() = 0;
  /// Waits up to `timeout` for the end; nullopt if still running then.
  virtual Result<std::optional<ExitStatus>> wait(std::chrono::milliseconds timeout) = 0;
  /// Asks it to stop, waits `grace`, then forces it; returns how it ended. Idempotent.
  virtual Result<ExitStatus> stop(std::chrono::milliseconds grace) = 0;
};

/// A launcher component. Thread-safe: several sites' executors may launch through one launcher at once.
class EMBER_API Launcher : public Component {
 public:
  /// Starts what `spec` describes.
  virtual Result<std::unique_ptr<LaunchHandle>> launch(const LaunchSpec& spec) = 0;
};

}  // namespace ember
