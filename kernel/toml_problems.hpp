#pragma once
// Reading a TOML file with every problem named: the collector and the small readers that the job and site
// files (config.cpp) and the project file of `ember provision` (provision_project.cpp) share.

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <toml++/toml.h>

#include "config.hpp"

namespace ember::kernel {

// Collects every problem of one file, each prefixed by file:line:column and the key.
class Problems {
 public:
  explicit Problems(std::string file) : file_(std::move(file)) {}

  Location at(const toml::node& node) const {
    const auto& src = node.source();
    return {file_, src.begin.line, src.begin.column};
  }
  void add(const toml::node& node, const std::string& key, const std::string& message) {
    add(at(node), key, message);
  }
  void add(const toml::key& key_node, const std::string& key, const std::string& message) {
    const auto& src = key_node.source();
    add(Location{file_, src.begin.line, src.begin.column}, key, message);
  }
  void add(const Location& where, const std::string& key, const std::string& message) {
    lines_.push_back(where.str() + ": " + (key.empty() ? "" : key + ": ") + message);
  }
  void add_at_start(const std::string& key, const std::string& message) {
    add(Location{file_, 1, 1}, key, message);
  }
  bool empty() const { return lines_.empty(); }
  Error error() const {
    std::string text;
    for (const auto& line : lines_) {
      text += (text.empty() ? "" : "\n") + line;
    }
    return Error{Errc::invalid_config, text};
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::vector<std::string> lines_;
};

/// Reports the keys of `table` outside `known`, as `prefix` + key.
void reject_unknown(const toml::table& table, std::initializer_list<std::string_view> known,
                    const std::string& prefix, Problems& problems);
/// The table under `key`, or null (absent, or not a table: reported at `path`).
const toml::table* sub_table(const toml::table& parent, std::string_view key, const std::string& path,
                             Problems& problems);
/// Checks `schema_version` (reported when missing or not the version this ember reads).
void check_schema_version(const toml::table& root, Problems& problems);
/// The string under `key`, or nothing (absent, or not a string: reported at `path`).
std::optional<std::string> string_value(const toml::table& table, std::string_view key,
                                        const std::string& path, Problems& problems);

}  // namespace ember::kernel
