#include "site_scope.hpp"

#include "workspace.hpp"

namespace ember::kernel {

Result<std::unique_ptr<JobScope>> make_site_scope(Kernel& kernel, const std::filesystem::path& job_path,
                                                  const std::string& site, const std::string& job_id,
                                                  const std::filesystem::path& dir) {
  if (auto made = make_private_dir(dir, 0777); !made) {
    return fail(std::move(made.error()));
  }
  if (auto added = kernel.logs().add_site_file(site, dir / "log.txt"); !added) {
    return fail(std::move(added.error()));
  }
  Substitutions subs{site, job_id, dir.string()};
  auto config = load_job(job_path, kernel.registry(), subs);
  if (!config) {
    return fail(std::move(config.error()));
  }
  auto info = job_info(*config, job_id, site, kernel.search_paths());
  info.program_paths.push_back(default_program_dir());
  return std::make_unique<JobScope>(kernel.registry(), std::move(*config), std::move(info), dir, subs, site);
}

}  // namespace ember::kernel
