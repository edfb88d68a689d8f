#pragma once
// A job's workspace: its id checked as a folder name, the folder made private, and a lock that keeps a
// second run out of it.

#include <filesystem>
#include <string>
#include <string_view>

#include <ember/result.hpp>

namespace ember::kernel {

/// Checks a job id (it names the workspace folder and travels to trainers): 1 to 128 characters of
/// A-Z a-z 0-9 _ -, so "../x", "/tmp/x" or a newline cannot name another folder or break a log line.
/// Errc::invalid_argument with the id (escaped) and the rule.
Result<void> check_job_id(std::string_view id);

/// The UTC time as "20261207-101500", the stamp in a job id.
std::string utc_stamp();

/// Creates `dir` and its missing parents with `mode` (less the process umask): 0700 keeps a job's folders
/// the site's own whatever the umask; `ember simulate` passes 0777 and sets the site's umask (0077 by
/// default).
Result<void> make_private_dir(const std::filesystem::path& dir, unsigned mode = 0700);

/// An exclusive lock on a workspace (flock on `<workspace>/ember.lock`, holding the owner's pid), held until
/// destroyed; the kernel releases it when the process ends, however it ends.
///
/// Thread-bound.
class WorkspaceLock {
 public:
  /// Takes the lock, or fails with Errc::io_error naming the workspace and the pid of the run that holds it.
  static Result<WorkspaceLock> acquire(const std::filesystem::path& workspace);

  WorkspaceLock(WorkspaceLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  WorkspaceLock& operator=(WorkspaceLock&&) = delete;
  WorkspaceLock(const WorkspaceLock&) = delete;
  WorkspaceLock& operator=(const WorkspaceLock&) = delete;
  ~WorkspaceLock();

 private:
  explicit WorkspaceLock(int fd) noexcept : fd_(fd) {}
  int fd_;
};

}  // namespace ember::kernel
