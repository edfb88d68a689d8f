#pragma once
// The processes a federation runs per job (DESIGN §1): the client job on each site (`site-1.<job_id>`) and
// the server job on the server (`server.<job_id>`). The daemons start them through a launcher as
// `ember --site KIT run-job client|server ...`; each joins its daemon's cell with the job's token and runs
// the same job runtime `ember simulate` runs in process.

#include <filesystem>
#include <iosfwd>
#include <string>
#include <vector>

#include "kernel.hpp"

namespace ember::kernel::fed {

struct JobProcessOptions {
  std::filesystem::path kit;      ///< the daemon's kit.toml (certificates, [cell])
  std::filesystem::path job_dir;  ///< the deployed job folder
  std::string job_id;
  std::filesystem::path workspace;   ///< this site's folder of the job (log.txt, model, metrics)
  std::string parent;                ///< the daemon's listener ("127.0.0.1:40123")
  std::filesystem::path token_file;  ///< the job's token (0600)
  std::vector<std::string> sites;    ///< server job: the sites the job was deployed to
};

/// Runs a site's client job until the server ends it, an abort, or SIGTERM; returns an exit code of
/// docs/exit-codes.md (a start that fails maps its error: config 3, plugin 4, trainer 5).
int run_client_job(Kernel& kernel, const JobProcessOptions& options, std::ostream& err);
/// Runs the server job (the workflow) to its end; 0 when it finished, 5 when it failed, 6 when stopped.
int run_server_job(Kernel& kernel, const JobProcessOptions& options, std::ostream& err);

}  // namespace ember::kernel::fed
