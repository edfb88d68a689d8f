// The project file of `ember provision`: read with toml++, every problem named as file:line:column and key,
// in the style of kernel/config.cpp.

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <map>

#include <toml++/toml.h>

#include "config.hpp"
#include "provision_cmd.hpp"
#include "toml_problems.hpp"

namespace ember::kernel {

namespace {

constexpr std::int64_t max_valid_days = 3650;
constexpr std::size_t max_name_length = 64;  // X.509's upper bound on a common name

// Characters a name may hold besides letters and digits.
bool valid_name(std::string_view name, std::string_view extra) {
  return !name.empty() && name.size() <= max_name_length &&
         std::all_of(name.begin(), name.end(), [&](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) != 0 || extra.find(c) != std::string_view::npos;
         });
}

bool is_ip_address(const std::string& text) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, text.c_str(), buffer) == 1 || inet_pton(AF_INET6, text.c_str(), buffer) == 1;
}

bool valid_host(const std::string& host) {
  if (is_ip_address(host)) {
    return true;
  }
  bool chars_ok = std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '.';
  });
  return chars_ok && !host.empty() && host.size() <= 253 && host.front() != '-' && host.front() != '.' &&
         host.back() != '.' && host.find("..") == std::string::npos;
}

const toml::node* string_at(const toml::table& table, std::string_view key, const std::string& path,
                            Problems& problems) {
  const auto* node = table.get(key);
  if (node != nullptr && !node->is_string()) {
    problems.add(*node, path, "expected a string");
    return nullptr;
  }
  return node;
}

std::optional<std::int64_t> integer_at(const toml::table& table, std::string_view key,
                                       const std::string& path, std::int64_t low, std::int64_t high,
                                       Problems& problems) {
  const auto* node = table.get(key);
  if (node == nullptr) {
    return std::nullopt;
  }
  if (!node->is_integer()) {
    problems.add(*node, path,
                 "expected an integer from " + std::to_string(low) + " to " + std::to_string(high));
    return std::nullopt;
  }
  std::int64_t value = node->as_integer()->get();
  if (value < low || value > high) {
    problems.add(*node, path,
                 std::to_string(value) + " is out of range (want " + std::to_string(low) + " to " +
                     std::to_string(high) + ")");
    return std::nullopt;
  }
  return value;
}

void read_project(const toml::table& root, ProjectConfig& project, Problems& problems) {
  const auto* table = sub_table(root, "project", "project", problems);
  if (table == nullptr) {
    if (root.get("project") == nullptr) {
      problems.add_at_start("project", "missing [project] table (with name = \"...\")");
    }
    return;
  }
  reject_unknown(*table, {"name", "valid_days"}, "project.", problems);
  if (const auto* node = string_at(*table, "name", "project.name", problems)) {
    const auto& name = node->as_string()->get();
    if (valid_name(name, "._-")) {
      project.name = name;
    } else {
      problems.add(*node, "project.name", "invalid project name '" + name + "' (want [A-Za-z0-9._-]{1,64})");
    }
  } else if (table->get("name") == nullptr) {
    problems.add(*table, "project.name", "missing: the project needs a name");
  }
  if (auto days = integer_at(*table, "valid_days", "project.valid_days", 1, max_valid_days, problems)) {
    project.valid_days = static_cast<int>(*days);
  }
}

void read_server(const toml::table& root, ProjectConfig& project, Problems& problems) {
  const auto* table = sub_table(root, "server", "server", problems);
  if (table == nullptr) {
    return;
  }
  reject_unknown(*table, {"name", "hosts", "port"}, "server.", problems);
  if (const auto* node = string_at(*table, "name", "server.name", problems)) {
    const auto& name = node->as_string()->get();
    if (valid_name(name, "_-")) {
      project.server_name = name;
    } else {
      problems.add(
          *node, "server.name",
          "invalid server name '" + name + "' (want [A-Za-z0-9_-]{1,64}: dots separate cell name parts)");
    }
  }
  if (const auto* node = table->get("hosts")) {
    const auto* hosts = node->as_array();
    if (hosts == nullptr || hosts->empty()) {
      problems.add(*node, "server.hosts", "expected a non-empty array of host names or IP addresses");
    } else {
      project.server_hosts.clear();
      for (std::size_t i = 0; i < hosts->size(); ++i) {
        const auto& host = *hosts->get(i);
        std::string key = "server.hosts[" + std::to_string(i) + "]";
        if (!host.is_string()) {
          problems.add(host, key, "expected a string");
        } else if (!valid_host(host.as_string()->get())) {
          problems.add(
              host, key,
              "'" + host.as_string()->get() + "' is neither an IP address nor a DNS name ([A-Za-z0-9.-])");
        } else {
          project.server_hosts.push_back(host.as_string()->get());
        }
      }
    }
  }
  if (auto port = integer_at(*table, "port", "server.port", 1, 65535, problems)) {
    project.port = static_cast<std::uint16_t>(*port);
  }
}

// Where a member's name is: its key ("sites[2].name") and node.
struct NamedAt {
  std::string key;
  const toml::node* node;
};

// [[sites]] or [[admins]]: an array of tables with one key, name.
void read_members(const toml::table& root, std::string_view section, std::string_view extra,
                  const std::string& rule, std::vector<std::string>& names, std::vector<NamedAt>& nodes,
                  Problems& problems) {
  const auto* node = root.get(section);
  if (node == nullptr) {
    return;
  }
  const auto* array = node->as_array();
  if (array == nullptr) {
    problems.add(*node, std::string(section),
                 "expected an array of tables ([[" + std::string(section) + "]] with name = \"...\")");
    return;
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    std::string path = std::string(section) + "[" + std::to_string(i) + "]";
    const auto* member = array->get(i)->as_table();
    if (member == nullptr) {
      problems.add(*array->get(i), path, "expected a table with name = \"...\"");
      continue;
    }
    reject_unknown(*member, {"name"}, path + ".", problems);
    const auto* name_node = string_at(*member, "name", path + ".name", problems);
    if (name_node == nullptr) {
      if (member->get("name") == nullptr) {
        problems.add(*member, path + ".name", "missing: each entry needs a name");
      }
      continue;
    }
    const auto& name = name_node->as_string()->get();
    if (section == "sites" && name.find('.') != std::string::npos && valid_name(name, "_-.")) {
      problems.add(
          *name_node, path + ".name",
          "site name '" + name + "' has a dot: dots separate the parts of a cell name (site-1.<job>)");
    } else if (!valid_name(name, extra) || name == "." || name == "..") {
      problems.add(*name_node, path + ".name", "invalid name '" + name + "' (want " + rule + ")");
    } else {
      names.push_back(name);
      nodes.push_back({path + ".name", name_node});
    }
  }
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// Names become folder names and DNS names in certificates, which compare without case: "Site-1" and "site-1"
// could speak for each other. "ca" is the CA's folder.
void check_unique(const ProjectConfig& project, const toml::table& root, const std::vector<NamedAt>& sites,
                  const std::vector<NamedAt>& admins, Problems& problems) {
  std::map<std::string, std::string> seen{{"ca", "the CA's folder"}};
  seen.emplace(lower(project.server_name), "the server's name");
  const auto* server_name = root.at_path("server.name").node();
  if (lower(project.server_name) == "ca" && server_name != nullptr) {
    problems.add(*server_name, "server.name", "'ca' is reserved: it is the CA's folder");
  }
  auto check = [&](const std::vector<std::string>& names, const std::vector<NamedAt>& nodes) {
    for (std::size_t i = 0; i < names.size(); ++i) {
      const auto& [where, node] = nodes[i];
      auto [it, fresh] =
          seen.emplace(lower(names[i]), where + " (line " + std::to_string(node->source().begin.line) + ")");
      if (!fresh) {
        problems.add(*node, where,
                     "duplicate name '" + names[i] + "' (already " + it->second +
                         "; names are compared without case)");
      }
    }
  };
  check(project.sites, sites);
  check(project.admins, admins);
}

}  // namespace

Result<ProjectConfig> parse_project(std::string_view text, const std::string& name) {
  toml::table root;
  try {
    root = toml::parse(text, std::string_view(name));
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    return fail(Errc::invalid_config, Location{name, src.begin.line, src.begin.column}.str() +
                                          ": invalid TOML: " + std::string(e.description()));
  }
  Problems problems(name);
  ProjectConfig project;
  project.file = name;
  reject_unknown(root, {"schema_version", "project", "server", "sites", "admins"}, "", problems);
  if (const auto* version = root.get("schema_version")) {
    if (!version->is_integer() || version->as_integer()->get() != config_schema_version) {
      problems.add(
          *version, "schema_version",
          "unsupported schema version (this ember reads " + std::to_string(config_schema_version) + ")");
    }
  }
  read_project(root, project, problems);
  read_server(root, project, problems);
  std::vector<NamedAt> site_nodes;
  std::vector<NamedAt> admin_nodes;
  read_members(root, "sites", "_-", "[A-Za-z0-9_-]{1,64}", project.sites, site_nodes, problems);
  read_members(root, "admins", "@._-", "[A-Za-z0-9@._-]{1,64}", project.admins, admin_nodes, problems);
  check_unique(project, root, site_nodes, admin_nodes, problems);
  if (!problems.empty()) {
    return fail(problems.error());
  }
  return project;
}

Result<ProjectConfig> load_project(const std::filesystem::path& file) {
  auto text = read_text_file(file);
  if (!text) {
    Error error = std::move(text.error());
    if (error.code == Errc::not_found) {
      error.code = Errc::io_error;  // a missing file is an I/O matter, not a missing plugin
    }
    return fail(std::move(error));
  }
  return parse_project(*text, file.string());
}

}  // namespace ember::kernel
