#pragma once
// The second transport of the job runtime (DESIGN §2): the server job reaches each site's client job,
// `<site>.<job_id>`, over the cell network. Round logic stays in ServerJob.

#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <ember/job.hpp>

#include "cell/cell.hpp"
#include "link.hpp"

namespace ember::kernel::fed {

/// Sends each task as a job.task request to `<site>.<job_id>` and decodes the result.
///
/// Until a site's client job has answered once, "unreachable" and "no handler" mean it is still starting:
/// the request is retried (every 200 ms) until the job's `launch` bound, then the site fails with the last
/// reason. After that, every failure is returned at once, so a task is never sent twice.
///
/// Thread-safe, as Link.
class CellLink final : public Link {
 public:
  /// `cell` must outlive the link.
  CellLink(cell::Cell& cell, std::string job_id, std::vector<std::string> sites, JobTimeouts timeouts);

  std::vector<std::string> sites() const override { return sites_; }
  Result<TaskData> execute(const std::string& site, const TaskData& task, std::stop_token stop) override;

 private:
  cell::Cell& cell_;
  std::string job_id_;
  std::vector<std::string> sites_;
  JobTimeouts timeouts_;
  std::mutex mutex_;
  std::set<std::string> up_;  // sites whose client job answered
};

}  // namespace ember::kernel::fed
