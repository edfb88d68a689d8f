#include "job_scope.hpp"

#include "kernel.hpp"

namespace ember::kernel {

JobScope::JobScope(ComponentRegistry& registry, JobConfig config, JobInfo info,
                   std::filesystem::path workspace, Substitutions subs, std::string log_site)
    : registry_(registry),
      config_(std::move(config)),
      info_(std::move(info)),
      scope_{std::move(workspace), std::move(subs), this, std::move(log_site), false} {
  for (const auto& type : registry_.types()) {
    const PluginInfo* plugin = registry_.provider(type);
    info_.plugin_files[type] = plugin != nullptr && plugin->library ? plugin->path : std::filesystem::path{};
  }
}

Result<std::shared_ptr<Component>> JobScope::create(std::string_view type, const Options& options,
                                                    std::string_view instance) {
  return registry_.create_in(type, options, instance, scope_);
}

Result<std::shared_ptr<Component>> JobScope::create_configured(std::string_view id) {
  const ComponentConfig* component = config_.component(id);
  if (component == nullptr) {
    return fail(Errc::not_found,
                config_.file.string() + ": the job has no component [components." + std::string(id) + "]");
  }
  auto scope = scope_;
  scope.options_resolved = true;
  return registry_.create_in(component->type, component->options, component->id, scope);
}

Result<ConfiguredComponent> JobScope::configured(std::string_view id) const {
  const ComponentConfig* component = config_.component(id);
  if (component == nullptr) {
    return fail(Errc::not_found,
                config_.file.string() + ": the job has no component [components." + std::string(id) + "]");
  }
  return ConfiguredComponent{component->type, component->options};
}

JobInfo job_info(const JobConfig& config, std::string job_id, std::string site,
                 std::vector<std::filesystem::path> plugin_paths) {
  JobInfo info;
  info.job_id = std::move(job_id);
  info.job_name = config.name;
  info.site = std::move(site);
  info.job_dir = config.file.parent_path();
  info.timeouts = config.timeouts;
  info.max_resends = config.session.max_resends;
  info.plugin_paths = std::move(plugin_paths);
  info.trainer_config_json = config.trainer_config_json;
  info.python = python_interpreter();
  if (auto dir = default_python_dir(); !dir.empty()) {
    info.python_paths.push_back(std::move(dir));
  }
  return info;
}

}  // namespace ember::kernel
