// The shared readers of toml_problems.hpp.

#include "toml_problems.hpp"

namespace ember::kernel {

void reject_unknown(const toml::table& table, std::initializer_list<std::string_view> known,
                    const std::string& prefix, Problems& problems) {
  for (const auto& [key, node] : table) {
    bool found = false;
    for (auto k : known) {
      found = found || k == key.str();
    }
    if (!found) {
      std::string expected;
      for (auto k : known) {
        expected += (expected.empty() ? "" : ", ") + std::string(k);
      }
      problems.add(key, prefix + std::string(key.str()), "unknown key (expected one of: " + expected + ")");
    }
  }
}

const toml::table* sub_table(const toml::table& parent, std::string_view key, const std::string& path,
                             Problems& problems) {
  const auto* node = parent.get(key);
  if (node == nullptr) {
    return nullptr;
  }
  if (!node->is_table()) {
    problems.add(*node, path, "expected a table");
    return nullptr;
  }
  return node->as_table();
}

void check_schema_version(const toml::table& root, Problems& problems) {
  const auto* node = root.get("schema_version");
  if (node == nullptr) {
    problems.add(
        Location{problems.file(), 1, 1}, "schema_version",
        "missing: the file must start with 'schema_version = " + std::to_string(config_schema_version) + "'");
    return;
  }
  if (!node->is_integer() || node->as_integer()->get() != config_schema_version) {
    problems.add(
        *node, "schema_version",
        "unsupported schema version (this ember reads " + std::to_string(config_schema_version) + ")");
  }
}

std::optional<std::string> string_value(const toml::table& table, std::string_view key,
                                        const std::string& path, Problems& problems) {
  const auto* node = table.get(key);
  if (node == nullptr) {
    return std::nullopt;
  }
  if (!node->is_string()) {
    problems.add(*node, path, "expected a string");
    return std::nullopt;
  }
  return node->as_string()->get();
}

}  // namespace ember::kernel
