#include "config.hpp"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include <toml++/toml.h>

#include "duration.hpp"
#include "registry.hpp"
#include "toml_problems.hpp"

namespace ember::kernel {

namespace fs = std::filesystem;

std::string Location::str() const {
  if (line == 0) {
    return file;
  }
  return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

const ComponentConfig* JobConfig::component(std::string_view id) const {
  for (const auto& c : components) {
    if (c.id == id) {
      return &c;
    }
  }
  return nullptr;
}

namespace {

bool valid_id(std::string_view id) {
  if (id.empty() || id.size() > 64) {
    return false;
  }
  for (char c : id) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-')) {
      return false;
    }
  }
  return true;
}

void read_log(const toml::table& root, LogSettings& log, Problems& problems) {
  const auto* table = sub_table(root, "log", "log", problems);
  if (table == nullptr) {
    return;
  }
  reject_unknown(*table, {"level", "levels"}, "log.", problems);
  if (auto level = string_value(*table, "level", "log.level", problems)) {
    if (auto parsed = parse_level(*level)) {
      log.level = *parsed;
      log.level_set = true;
    } else {
      problems.add(*table->get("level"), "log.level", parsed.error().message);
    }
  }
  if (const auto* levels = sub_table(*table, "levels", "log.levels", problems)) {
    // toml++ iterates keys sorted; later rules win, so keep the order they were written in.
    std::vector<std::pair<const toml::key*, const toml::node*>> ordered;
    for (const auto& [pattern, node] : *levels) {
      ordered.emplace_back(&pattern, &node);
    }
    std::sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
      const auto& sa = a.first->source().begin;
      const auto& sb = b.first->source().begin;
      return std::tie(sa.line, sa.column) < std::tie(sb.line, sb.column);
    });
    for (const auto& [pattern_ptr, node_ptr] : ordered) {
      const auto& pattern = *pattern_ptr;
      const auto& node = *node_ptr;
      std::string key = "log.levels.\"" + std::string(pattern.str()) + "\"";
      if (!node.is_string()) {
        problems.add(node, key, "expected a level string");
        continue;
      }
      if (auto parsed = parse_level(node.as_string()->get())) {
        log.rules.push_back({std::string(pattern.str()), *parsed});
      } else {
        problems.add(node, key, parsed.error().message);
      }
    }
  }
}

void read_timeouts(const toml::table& root, Timeouts& t, Problems& problems) {
  const auto* table = sub_table(root, "timeouts", "timeouts", problems);
  if (table == nullptr) {
    return;
  }
  struct Field {
    std::string_view key;
    std::chrono::milliseconds* value;
  };
  const Field fields[] = {{"launch", &t.launch},
                          {"heartbeat_interval", &t.heartbeat_interval},
                          {"heartbeat_timeout", &t.heartbeat_timeout},
                          {"task_wait", &t.task_wait},
                          {"result_wait", &t.result_wait},
                          {"shutdown_grace", &t.shutdown_grace},
                          {"stream_idle", &t.stream_idle}};
  reject_unknown(*table,
                 {"launch", "heartbeat_interval", "heartbeat_timeout", "task_wait", "result_wait",
                  "shutdown_grace", "stream_idle"},
                 "timeouts.", problems);
  for (const auto& field : fields) {
    const auto* node = table->get(field.key);
    if (node == nullptr) {
      continue;
    }
    std::string key = "timeouts." + std::string(field.key);
    auto value = option_from_toml(*node, OptionType::duration, Substitutions{});
    if (!value) {
      problems.add(*node, key, value.error().message);
      continue;
    }
    auto ms = std::get<std::chrono::milliseconds>(*value);
    if (ms.count() <= 0) {
      problems.add(*node, key, "must be longer than zero");
      continue;
    }
    *field.value = ms;
  }
  // Invariants between timeouts, reported at the section they concern.
  if (t.heartbeat_interval >= t.heartbeat_timeout) {
    problems.add(*table, "timeouts.heartbeat_interval",
                 "must be shorter than heartbeat_timeout (" + format_duration(t.heartbeat_interval) +
                     " >= " + format_duration(t.heartbeat_timeout) + ")");
  }
  if (t.stream_idle < t.heartbeat_interval) {
    problems.add(*table, "timeouts.stream_idle",
                 "must be at least heartbeat_interval (" + format_duration(t.stream_idle) + " < " +
                     format_duration(t.heartbeat_interval) + ")");
  }
}

void read_session(const toml::table& root, SessionSettings& session, Problems& problems) {
  const auto* table = sub_table(root, "session", "session", problems);
  if (table == nullptr) {
    return;
  }
  reject_unknown(*table, {"max_resends"}, "session.", problems);
  if (const auto* node = table->get("max_resends")) {
    if (!node->is_integer()) {
      problems.add(*node, "session.max_resends", "expected an integer");
    } else if (auto v = node->as_integer()->get(); v < 0 || v > 100) {
      problems.add(*node, "session.max_resends", "must be between 0 and 100 (resends are bounded)");
    } else {
      session.max_resends = v;
    }
  }
}

void read_component(const std::string& id, const toml::node& node, const ComponentRegistry& registry,
                    const Substitutions& subs, JobConfig& job, Problems& problems) {
  std::string path = "components." + id;
  if (!valid_id(id)) {
    problems.add(node, path, "invalid component id (want [A-Za-z0-9_-]{1,64})");
    return;
  }
  const auto* table = node.as_table();
  if (table == nullptr) {
    problems.add(node, path, "expected a table with a 'type' key");
    return;
  }
  const auto* type_node = table->get("type");
  if (type_node == nullptr) {
    problems.add(node, path, "missing 'type' (e.g. type = \"pipe.socket\")");
    return;
  }
  if (!type_node->is_string()) {
    problems.add(*type_node, path + ".type", "expected a string such as \"pipe.socket\"");
    return;
  }
  std::string type = type_node->as_string()->get();
  const auto* info = registry.find(type);
  if (info == nullptr) {
    std::string known;
    for (const auto& t : registry.types()) {
      known += (known.empty() ? "" : ", ") + t;
    }
    problems.add(*type_node, path + ".type",
                 "unknown component type '" + type + "' (known: " + (known.empty() ? "none" : known) + ")");
    return;
  }
  ComponentConfig component{id, type, problems.at(node), Options{}};
  bool ok = true;
  for (const auto& [key, value] : *table) {
    if (key.str() == "type") {
      continue;
    }
    std::string option_path = path + "." + std::string(key.str());
    const auto* spec = info->find_option(key.str());
    if (spec == nullptr) {
      std::string known;
      for (const auto& o : info->options) {
        known += (known.empty() ? "" : ", ") + o.name;
      }
      problems.add(key, option_path,
                   "unknown option of " + type + " (options: " + (known.empty() ? "none" : known) + ")");
      ok = false;
      continue;
    }
    auto converted = option_from_toml(value, spec->type, subs);
    if (!converted) {
      problems.add(value, option_path, converted.error().message);
      ok = false;
      continue;
    }
    if (auto fits = check_constraints(*converted, spec->constraints); !fits) {
      problems.add(value, option_path, fits.error().message);
      ok = false;
      continue;
    }
    component.option_at.emplace(spec->name, problems.at(value));
    component.options.set(spec->name, std::move(*converted));
  }
  if (!ok) {
    return;
  }
  auto resolved = registry.resolve_options(*info, component.options, subs);
  if (!resolved) {
    problems.add(node, path, resolved.error().message);
    return;
  }
  component.options = std::move(*resolved);
  job.components.push_back(std::move(component));
}

// Options that name another component of the job (OptionSpec::refers_to) must name one of that kind.
// `tables` is the [components] table: an id written there whose component had problems of its own is not
// reported again here.
void check_references(const JobConfig& job, const toml::table& tables, const ComponentRegistry& registry,
                      Problems& problems) {
  for (const auto& component : job.components) {
    const auto* info = registry.find(component.type);
    if (info == nullptr) {
      continue;
    }
    for (const auto& spec : info->options) {
      if (spec.refers_to == Kind{} || !component.options.contains(spec.name)) {
        continue;
      }
      std::vector<std::string> ids;
      if (spec.type == OptionType::string_list) {
        ids = component.options.string_list(spec.name);
      } else {
        ids.push_back(component.options.string(spec.name));
      }
      auto at = component.option_at.find(spec.name);
      Location where = at != component.option_at.end() ? at->second : component.where;
      std::string key = "components." + component.id + "." + spec.name;
      std::string wanted(to_string(spec.refers_to));
      for (const auto& id : ids) {
        const auto* target = job.component(id);
        if (target == nullptr && tables.contains(id)) {
          continue;
        }
        if (target == nullptr) {
          problems.add(where, key,
                       "names component '" + id + "', which the job does not have (want the id of a " +
                           wanted + " component under [components])" +
                           (at == component.option_at.end() ? " (this is the option's default)" : ""));
          continue;
        }
        const auto* target_info = registry.find(target->type);
        if (target_info != nullptr && target_info->kind != spec.refers_to) {
          problems.add(where, key,
                       "names component '" + id + "', a " + std::string(to_string(target_info->kind)) + " (" +
                           target->type + "), where a " + wanted + " is wanted");
        }
      }
    }
  }
}

Result<toml::table> parse_toml(std::string_view text, const std::string& name) {
  try {
    return toml::parse(text, std::string_view(name));
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    Location where{name, src.begin.line, src.begin.column};
    return fail(Errc::invalid_config, where.str() + ": invalid TOML: " + std::string(e.description()));
  }
}

}  // namespace

Result<JobConfig> parse_job(std::string_view text, const std::string& name, const ComponentRegistry& registry,
                            const std::optional<Substitutions>& given_subs) {
  auto parsed = parse_toml(text, name);
  if (!parsed) {
    return fail(std::move(parsed.error()));
  }
  const toml::table& root = *parsed;
  Problems problems(name);
  JobConfig job;
  job.file = name;
  check_schema_version(root, problems);
  reject_unknown(root,
                 {"schema_version", "job", "timeouts", "session", "log", "components", "trainer_config"}, "",
                 problems);
  if (const auto* table = sub_table(root, "trainer_config", "trainer_config", problems)) {
    // Free-form: the trainers read it (get_config()); it travels as JSON in their bootstrap file.
    std::ostringstream json;
    json << toml::json_formatter{*table};
    job.trainer_config_json = json.str();
  }
  if (const auto* table = sub_table(root, "job", "job", problems)) {
    reject_unknown(*table, {"name", "description", "launcher", "sites"}, "job.", problems);
    if (auto job_name = string_value(*table, "name", "job.name", problems)) {
      if (valid_id(*job_name)) {
        job.name = *job_name;
      } else {
        problems.add(*table->get("name"), "job.name", "invalid job name (want [A-Za-z0-9_-]{1,64})");
      }
    }
    job.description = string_value(*table, "description", "job.description", problems).value_or("");
    job.launcher = string_value(*table, "launcher", "job.launcher", problems).value_or("");
    if (!job.launcher.empty() && !valid_id(job.launcher)) {
      problems.add(*table->get("launcher"), "job.launcher",
                   "invalid launcher name (want [A-Za-z0-9_-]{1,64})");
    }
    if (const auto* node = table->get("sites")) {
      auto value = option_from_toml(*node, OptionType::string_list, Substitutions{});
      if (!value) {
        problems.add(*node, "job.sites", value.error().message);
      } else {
        job.sites = std::get<std::vector<std::string>>(*value);
        for (const auto& site : job.sites) {
          if (!valid_id(site)) {
            problems.add(*node, "job.sites", "invalid site name '" + site + "' (want [A-Za-z0-9_-]{1,64})");
          }
        }
      }
    }
  }
  if (job.name.empty()) {
    // A job folder names the job when job.name is absent.
    auto stem = fs::path(name).parent_path().filename().string();
    job.name = valid_id(stem) ? stem : "job";
  }
  read_timeouts(root, job.timeouts, problems);
  read_session(root, job.session, problems);
  read_log(root, job.log, problems);
  Substitutions subs = registry.substitutions();
  subs.job_id = job.name;
  if (given_subs) {
    subs = *given_subs;
  }
  if (const auto* components = sub_table(root, "components", "components", problems)) {
    for (const auto& [key, node] : *components) {
      read_component(std::string(key.str()), node, registry, subs, job, problems);
    }
    check_references(job, *components, registry, problems);
  }
  if (!problems.empty()) {
    return fail(problems.error());
  }
  return job;
}

Result<std::string> read_text_file(const fs::path& file, std::size_t max_bytes) {
  std::error_code ec;
  auto status = fs::status(file, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    // ELOOP (a symlink loop), EACCES on a parent folder, ENOTDIR: say which, not "no such file".
    return fail(Errc::io_error, file.string() + ": cannot read: " + ec.message());
  }
  if (!fs::exists(status)) {
    return fail(Errc::not_found, file.string() + ": no such file");
  }
  if (!fs::is_regular_file(status)) {
    const char* what = fs::is_directory(status)                                     ? "a directory"
                       : fs::is_fifo(status)                                        ? "a FIFO"
                       : fs::is_socket(status)                                      ? "a socket"
                       : fs::is_block_file(status) || fs::is_character_file(status) ? "a device"
                                                                                    : "a special file";
    return fail(Errc::io_error, file.string() + ": is " + std::string(what) + ", not a regular file");
  }
  auto size = fs::file_size(file, ec);
  if (ec) {
    return fail(Errc::io_error, file.string() + ": " + ec.message());
  }
  if (size > max_bytes) {
    return fail(Errc::invalid_config, file.string() + ": file is " + std::to_string(size) +
                                          " bytes, more than the limit of " + std::to_string(max_bytes));
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return fail(Errc::io_error, file.string() + ": cannot open for reading");
  }
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

Result<JobConfig> load_job(const fs::path& path, const ComponentRegistry& registry,
                           const std::optional<Substitutions>& subs) {
  std::error_code ec;
  fs::path file = fs::is_directory(path, ec) ? path / "job.toml" : path;
  auto text = read_text_file(file);
  if (!text) {
    return fail(std::move(text.error()));
  }
  return parse_job(*text, file.string(), registry, subs);
}

// The [cell] table of a site file (a startup kit's kit.toml).
void read_cell(const toml::table& root, const fs::path& base, SiteConfig& site, Problems& problems) {
  const auto* table = sub_table(root, "cell", "cell", problems);
  if (table == nullptr) {
    return;
  }
  CellSettings cell;
  reject_unknown(*table,
                 {"listen", "server", "server_name", "internal_listen", "ca", "cert", "key", "insecure",
                  "packet_bytes", "max_message_bytes", "connect_timeout", "keepalive", "keepalive_timeout",
                  "backoff_initial", "backoff_max"},
                 "cell.", problems);
  auto address = [&](std::string_view key, std::string& out) {
    auto value = string_value(*table, key, "cell." + std::string(key), problems);
    if (!value) {
      return;
    }
    auto colon = value->rfind(':');
    int port = -1;
    if (colon != std::string::npos && colon > 0) {
      auto digits = value->substr(colon + 1);
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
      if (ec != std::errc() || end != digits.data() + digits.size()) {
        port = -1;
      }
    }
    if (port < 0 || port > 65535) {
      problems.add(*table->get(key), "cell." + std::string(key),
                   "expected HOST:PORT, such as \"127.0.0.1:8002\"");
      return;
    }
    out = *value;
  };
  address("listen", cell.listen);
  address("server", cell.server);
  address("internal_listen", cell.internal_listen);
  cell.server_name = string_value(*table, "server_name", "cell.server_name", problems).value_or("");
  for (auto [key, out] :
       {std::pair{"ca", &cell.ca}, std::pair{"cert", &cell.cert}, std::pair{"key", &cell.key}}) {
    if (auto value = string_value(*table, key, "cell." + std::string(key), problems)) {
      *out = base / *value;
    }
  }
  if (const auto* node = table->get("insecure")) {
    if (const auto* flag = node->as_boolean()) {
      cell.insecure = flag->get();
    } else {
      problems.add(*node, "cell.insecure", "expected true or false");
    }
  }
  bool any_tls = !cell.ca.empty() || !cell.cert.empty() || !cell.key.empty();
  bool all_tls = !cell.ca.empty() && !cell.cert.empty() && !cell.key.empty();
  if (any_tls && !all_tls) {
    problems.add(*table, "cell.ca", "ca, cert and key are given together");
  } else if (!any_tls && !cell.insecure) {
    problems.add(*table, "cell",
                 "no ca, cert and key: give them (a startup kit has them), or set insecure = true "
                 "for clear text");
  }
  struct Size {
    std::string_view key;
    std::uint64_t* value;
    std::uint64_t min, max;
  };
  for (const auto& size : {Size{"packet_bytes", &cell.packet_bytes, 64 * 1024, 1u << 30},
                           Size{"max_message_bytes", &cell.max_message_bytes, 1, std::uint64_t{1} << 40}}) {
    if (const auto* node = table->get(size.key)) {
      const auto* n = node->as_integer();
      if (n == nullptr || n->get() < 0 || static_cast<std::uint64_t>(n->get()) < size.min ||
          static_cast<std::uint64_t>(n->get()) > size.max) {
        problems.add(
            *node, "cell." + std::string(size.key),
            "expected an integer from " + std::to_string(size.min) + " to " + std::to_string(size.max));
      } else {
        *size.value = static_cast<std::uint64_t>(n->get());
      }
    }
  }
  struct Wait {
    std::string_view key;
    std::chrono::milliseconds* value;
  };
  for (const auto& wait :
       {Wait{"connect_timeout", &cell.connect_timeout}, Wait{"keepalive", &cell.keepalive},
        Wait{"keepalive_timeout", &cell.keepalive_timeout}, Wait{"backoff_initial", &cell.backoff_initial},
        Wait{"backoff_max", &cell.backoff_max}}) {
    if (const auto* node = table->get(wait.key)) {
      auto value = option_from_toml(*node, OptionType::duration, Substitutions{});
      if (!value || std::get<std::chrono::milliseconds>(*value).count() <= 0) {
        problems.add(*node, "cell." + std::string(wait.key),
                     value ? "must be longer than zero" : value.error().message);
      } else {
        *wait.value = std::get<std::chrono::milliseconds>(*value);
      }
    }
  }
  if (cell.backoff_initial > cell.backoff_max) {
    problems.add(*table, "cell.backoff_initial", "must not be longer than backoff_max");
  }
  site.cell = std::move(cell);
}

// The [project] table of a server's kit.
void read_project(const toml::table& root, SiteConfig& site, Problems& problems) {
  const auto* table = sub_table(root, "project", "project", problems);
  if (table == nullptr) {
    return;
  }
  reject_unknown(*table, {"name", "sites", "admins"}, "project.", problems);
  ProjectSettings project;
  project.name = string_value(*table, "name", "project.name", problems).value_or("");
  for (auto [key, out] : {std::pair{"sites", &project.sites}, std::pair{"admins", &project.admins}}) {
    if (const auto* node = table->get(key)) {
      auto value = option_from_toml(*node, OptionType::string_list, Substitutions{});
      if (value) {
        *out = std::get<std::vector<std::string>>(*value);
      } else {
        problems.add(*node, "project." + std::string(key), value.error().message);
      }
    }
  }
  site.project = std::move(project);
}

Result<std::string> only_component(const JobConfig& job, std::string_view kind, std::string_view who) {
  std::vector<std::string> ids;
  for (const auto& c : job.components) {
    if (c.type.starts_with(std::string(kind) + ".")) {
      ids.push_back(c.id);
    }
  }
  if (ids.size() != 1) {
    return fail(Errc::invalid_config, job.file.string() + ": " + std::string(who) + " needs exactly one " +
                                          std::string(kind) + " component, it has " +
                                          std::to_string(ids.size()));
  }
  return ids.front();
}

Result<SiteConfig> parse_site(std::string_view text, const std::string& name, const fs::path& base) {
  auto parsed = parse_toml(text, name);
  if (!parsed) {
    return fail(std::move(parsed.error()));
  }
  const toml::table& root = *parsed;
  Problems problems(name);
  SiteConfig site;
  site.file = name;
  check_schema_version(root, problems);
  reject_unknown(root, {"schema_version", "site", "plugins", "log", "cell", "project"}, "", problems);
  // A site file is read before any job exists: only {site} means something in it.
  Substitutions subs{"local", std::nullopt, std::nullopt};
  if (const auto* table = sub_table(root, "site", "site", problems)) {
    reject_unknown(*table, {"name", "workspace", "umask", "role"}, "site.", problems);
    if (auto role = string_value(*table, "role", "site.role", problems)) {
      if (*role == "server" || *role == "client" || *role == "admin") {
        site.role = *role;
      } else {
        problems.add(*table->get("role"), "site.role", "expected \"server\", \"client\" or \"admin\"");
      }
    }
    if (auto site_name = string_value(*table, "name", "site.name", problems)) {
      // An admin is named as provisioned, e-mail style ("ops@example.org"); a site's name is an id.
      bool admin_name = site.role == "admin" && !site_name->empty() && site_name->size() <= 128 &&
                        std::all_of(site_name->begin(), site_name->end(), [](char c) {
                          return std::isalnum(static_cast<unsigned char>(c)) || c == '@' || c == '.' ||
                                 c == '_' || c == '-';
                        });
      if (valid_id(*site_name) || admin_name) {
        site.name = *site_name;
      } else {
        problems.add(*table->get("name"), "site.name", "invalid site name (want [A-Za-z0-9_-]{1,64})");
      }
    }
    subs.site = site.name;
    if (const auto* node = table->get("workspace")) {
      auto value = option_from_toml(*node, OptionType::string, subs);
      if (value) {
        site.workspace = base / std::get<std::string>(*value);
      } else {
        problems.add(*node, "site.workspace", value.error().message);
      }
    }
    if (const auto* node = table->get("umask")) {
      // Octal text, as the shell's umask: "0077" (the default: files 0600, folders 0700), "0027", ...
      const auto* mask_text = node->as_string();
      unsigned mask = 0;
      const std::string digits = mask_text != nullptr ? mask_text->get() : std::string();
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), mask, 8);
      if (mask_text == nullptr || digits.empty() || ec != std::errc() ||
          end != digits.data() + digits.size() || mask > 0777) {
        problems.add(*node, "site.umask", "expected octal text from \"0000\" to \"0777\", such as \"0077\"");
      } else {
        site.umask = mask;
      }
    }
  } else if (root.get("site") == nullptr) {
    problems.add(Location{name, 1, 1}, "site", "missing [site] table");
  }
  if (const auto* table = sub_table(root, "plugins", "plugins", problems)) {
    reject_unknown(*table, {"paths"}, "plugins.", problems);
    if (const auto* node = table->get("paths")) {
      auto value = option_from_toml(*node, OptionType::string_list, subs);
      if (value) {
        for (const auto& p : std::get<std::vector<std::string>>(*value)) {
          site.plugin_paths.push_back(base / p);
        }
      } else {
        problems.add(*node, "plugins.paths", value.error().message);
      }
    }
  }
  read_log(root, site.log, problems);
  read_cell(root, base, site, problems);
  read_project(root, site, problems);
  if (!problems.empty()) {
    return fail(problems.error());
  }
  return site;
}

Result<SiteConfig> load_site(const fs::path& file) {
  auto text = read_text_file(file);
  if (!text) {
    return fail(std::move(text.error()));
  }
  return parse_site(*text, file.string(), file.parent_path());
}

bool looks_like_site(std::string_view text) {
  try {
    auto root = toml::parse(text);
    return root.get("site") != nullptr;
  } catch (const toml::parse_error&) {
    return false;
  }
}

}  // namespace ember::kernel
