#pragma once
// The handle on one container started by launcher.docker: a monitor thread waits for the container's end
// while a thread of its own follows the container's log (stdout and stderr frames, line by line into the job
// log); then it keeps the exit status and removes the container. stop() signals it through the engine
// (SIGTERM, a grace, SIGKILL).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <ember/launcher.hpp>
#include <ember/logger.hpp>

#include <base/launch_options.hpp>
#include <base/line_splitter.hpp>

#include "engine_client.hpp"

namespace ember::docker_launcher {

using base::OutputPolicy;

/// The engine reports a main process killed by signal n as exit code 128 + n (and cannot tell it from a
/// program that exits with that code): such codes become the signal, as launcher.process reports it.
ExitStatus exit_status_from_engine(std::int64_t code);

/// RunState as launcher.process: started while the container runs; stopped after exit code 0, or when
/// stop() ended it with its SIGTERM or SIGKILL; failed for any other end or when the engine lost it.
class DockerHandle final : public LaunchHandle {
 public:
  DockerHandle(EngineClient engine, std::string container_id, std::string name, std::string where,
               OutputPolicy output, std::chrono::milliseconds request_timeout);
  ~DockerHandle() override;
  DockerHandle(const DockerHandle&) = delete;
  DockerHandle& operator=(const DockerHandle&) = delete;

  std::string id() const override { return id_; }
  RunState state() override;
  Result<std::optional<ExitStatus>> wait(std::chrono::milliseconds timeout) override;
  Result<ExitStatus> stop(std::chrono::milliseconds grace) override;

 private:
  using Clock = std::chrono::steady_clock;
  using Lock = std::unique_lock<std::mutex>;

  void monitor();
  void pump_log(bool follow);
  void log_line(LogLevel level, std::string_view line);
  Result<ExitStatus> collect_exit();
  Result<void> signal(const char* name);
  void remove();
  void log_end(const ExitStatus& status);

  const EngineClient engine_;
  const std::string id_;
  const std::string name_;
  const std::string where_;  // "launcher.docker: job 'j', 'site-1.trainer'" for messages
  const std::string prefix_;
  const OutputPolicy output_;
  const std::chrono::milliseconds request_timeout_;
  std::atomic<bool> quit_{false};  // set by the destructor: the monitor's waits end within a slice

  // The log: followed by a thread of the monitor's while the monitor waits for the end. Touched by that
  // thread, then by the monitor once it has joined it.
  base::LineSplitter out_lines_;
  base::LineSplitter err_lines_;
  std::uint64_t out_logged_ = 0;  // payload bytes of each stream logged so far
  std::uint64_t err_logged_ = 0;
  std::atomic<bool> log_cut_{false};  // the followed log outlived the container: end it
  std::mutex log_mutex_;
  std::condition_variable log_changed_;
  bool log_done_ = false;

  std::mutex stop_mutex_;  // one stop() at a time; later ones return the first one's result
  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<ExitStatus> status_;
  std::optional<Error> lost_;  // the engine could not say how the container ended
  bool stop_requested_ = false;
  bool removed_ = false;
  std::thread monitor_;  // last: started once everything above exists
};

}  // namespace ember::docker_launcher
