#pragma once
// How the server job reaches its sites: one interface, one implementation per transport (in process for
// `ember simulate`, the cell network for `ember server`). Round logic lives in ServerJob, never in a link.

#include <stop_token>
#include <string>
#include <vector>

#include <ember/result.hpp>
#include <ember/task.hpp>

namespace ember::kernel {

/// The server job's way to a set of sites.
///
/// Thread-safe: execute() is called from one worker thread per site at a time, for several sites at once.
class Link {
 public:
  virtual ~Link() = default;

  /// The sites this link reaches, in a stable order.
  virtual std::vector<std::string> sites() const = 0;
  /// Sends `task` to `site` and waits for its answer, or for why there is none (the site failed to start,
  /// its executor failed the task, the site is unreachable). Once `stop` is requested it returns within the
  /// site's close bound with Errc::cancelled. Never throws: an exception on the site's side becomes its
  /// error.
  virtual Result<TaskData> execute(const std::string& site, const TaskData& task, std::stop_token stop) = 0;
};

}  // namespace ember::kernel
