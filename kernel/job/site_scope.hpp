#pragma once
// One site's scope of a job, made the same way by `ember simulate` and by the job processes of a federation.

#include <filesystem>
#include <memory>
#include <string>

#include "job_scope.hpp"
#include "kernel.hpp"

namespace ember::kernel {

/// `dir` created (0777 less the umask), the site's log file `dir`/log.txt added to the kernel's logs, the
/// job at `job_path` loaded with {site}, {job_id} and {workspace} = `dir`, and the default program folder
/// searched for trainers.
Result<std::unique_ptr<JobScope>> make_site_scope(Kernel& kernel, const std::filesystem::path& job_path,
                                                  const std::string& site, const std::string& job_id,
                                                  const std::filesystem::path& dir);

}  // namespace ember::kernel
