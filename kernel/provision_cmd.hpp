#pragma once
// `ember provision PROJECT.toml`: reads a project file and writes the project's root CA and one startup kit
// (certificate, key, CA certificate and kit.toml) for its server, each site and each admin.
// docs/config-reference.md, "Provisioning", describes the project file and the kits.

#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

#include <ember/result.hpp>

namespace ember::kernel {

/// A project file, checked: names valid and unique, values in range.
struct ProjectConfig {
  std::filesystem::path file;
  std::string name;                                                    ///< [project] name
  int valid_days = 365;                                                ///< [project] valid_days, 1..3650
  std::string server_name = "server";                                  ///< [server] name
  std::vector<std::string> server_hosts = {"localhost", "127.0.0.1"};  ///< [server] hosts: the server's SANs
  std::uint16_t port = 8002;                                           ///< [server] port
  std::vector<std::string> sites;                                      ///< [[sites]] names, in file order
  std::vector<std::string> admins;                                     ///< [[admins]] names, in file order
};

/// Parses a project file from memory; `name` stands for the file in messages. Every problem is reported at
/// once, as "file:line:column: key: message" (Errc::invalid_config).
Result<ProjectConfig> parse_project(std::string_view text, const std::string& name);

/// Reads and parses a project file (Errc::io_error when it is missing or cannot be read).
Result<ProjectConfig> load_project(const std::filesystem::path& file);

/// What write_kits() wrote.
struct KitsWritten {
  std::filesystem::path dir;      ///< the output folder
  bool replaced = false;          ///< an earlier output folder was replaced (--force)
  std::string valid_until;        ///< the certificates' last day, "2027-12-07" (UTC)
  std::vector<std::string> kits;  ///< the kit folders' names: server, sites, admins
};

/// Writes the CA (`ca/`) and the kits of `project` into `out`, built in a temporary folder beside it and
/// renamed into place, so a failure or a crash leaves no partial output. An existing `out` is refused
/// (Errc::io_error) unless `force`; even then only an empty folder or an earlier output (one that holds
/// ca/ca.crt) is replaced.
Result<KitsWritten> write_kits(const ProjectConfig& project, const std::filesystem::path& out, bool force);

/// The text of a kit's kit.toml, for the kit named `kit` (the server, a site or an admin of `project`).
std::string kit_toml(const ProjectConfig& project, const std::string& kit);

/// Runs `ember provision`: `out` empty means ./<project name>-kits. Prints a summary to `out_stream` and
/// problems to `err`; returns the exit code (3 for a bad project file, 7 for I/O).
int provision(const std::filesystem::path& project_file, const std::filesystem::path& out, bool force,
              std::ostream& out_stream, std::ostream& err);

}  // namespace ember::kernel
