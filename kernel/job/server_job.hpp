#pragma once
// The server job (DESIGN §6): a workflow and the host it runs against, which reaches the job's sites through
// a Link. The round mechanics (fan-out to sites, deadlines, stop, results in arrival order) live here once,
// for every transport.

#include <memory>
#include <stop_token>

#include <ember/workflow.hpp>

#include "link.hpp"
#include "metrics_log.hpp"
#include "progress.hpp"

namespace ember::kernel {

/// Runs one workflow over the sites a link reaches.
///
/// Thread-bound: run() is called once, from one thread; the link, the observer and the metrics log must
/// outlive it.
class ServerJob {
 public:
  /// `observer` and `metrics` may be null.
  ServerJob(std::shared_ptr<Workflow> workflow, Link& link, ProgressObserver* observer, MetricsLog* metrics);

  /// Runs the workflow to its end. Once `stop` is requested, tasks still out are cancelled and the workflow
  /// sees Errc::cancelled from broadcast(). An exception from the workflow (on this thread or in a result
  /// callback on a worker thread) ends the job with Errc::internal.
  JobReport run(std::stop_token stop);

 private:
  std::shared_ptr<Workflow> workflow_;
  Link& link_;
  ProgressObserver* observer_;
  MetricsLog* metrics_;
};

}  // namespace ember::kernel
