#pragma once
// A job as its components see it: the registry they create others through, scoped to one site of one job
// (its workspace, substitutions, log file and the job's configured components).

#include <filesystem>
#include <memory>
#include <string>

#include <ember/component.hpp>
#include <ember/job.hpp>

#include "config.hpp"
#include "registry.hpp"

namespace ember::kernel {

class JobScope final : public Registry {
 public:
  /// `config` must have been loaded with this site's substitutions; `info.plugin_files` is filled here.
  JobScope(ComponentRegistry& registry, JobConfig config, JobInfo info, std::filesystem::path workspace,
           Substitutions subs, std::string log_site);

  Result<std::shared_ptr<Component>> create(std::string_view type, const Options& options,
                                            std::string_view instance = {}) override;
  bool contains(std::string_view type) const override { return registry_.contains(type); }
  const JobInfo* job() const noexcept override { return &info_; }
  Result<std::shared_ptr<Component>> create_configured(std::string_view id) override;
  Result<ConfiguredComponent> configured(std::string_view id) const override;

  const JobConfig& config() const noexcept { return config_; }
  const std::filesystem::path& workspace() const noexcept { return scope_.workspace; }

 private:
  ComponentRegistry& registry_;
  JobConfig config_;
  JobInfo info_;
  ComponentRegistry::Scope scope_;
};

/// The JobInfo of a loaded job for `site`.
JobInfo job_info(const JobConfig& config, std::string job_id, std::string site,
                 std::vector<std::filesystem::path> plugin_paths);

}  // namespace ember::kernel
