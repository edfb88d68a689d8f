#pragma once
// `ember simulate JOB --clients N`: the server side and N client sites of a job in one process (DESIGN §1),
// with each site's trainer launched as a real process over a real pipe: a thin composition of the job
// runtime (kernel/job: ClientJob per site, InProcessLink, ServerJob, ConsoleProgress).

#include <filesystem>
#include <iosfwd>
#include <string>

#include "kernel.hpp"

namespace ember::kernel {

struct SimulateOptions {
  std::filesystem::path job;        ///< a job folder or its job.toml
  int clients = 2;                  ///< sites site-1 .. site-N
  std::filesystem::path workspace;  ///< empty: ./ember-workspace/<job_id>
  std::string job_id;               ///< empty: <job name>-<UTC time>
  bool progress = true;             ///< print a line per result and per round
};

/// Runs the job to its end; returns an exit code of exit_codes.hpp and prints progress and a summary to
/// `out`, problems to `err`.
int simulate(Kernel& kernel, const SimulateOptions& options, std::ostream& out, std::ostream& err);

}  // namespace ember::kernel
