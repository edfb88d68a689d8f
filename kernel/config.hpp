#pragma once
// Job and site configuration: TOML files checked against their schema and against the plugins present.
// Every problem names file:line:column and the key; loading reports all problems of a file at once.

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ember/job.hpp>
#include <ember/options.hpp>
#include <ember/result.hpp>

#include "logging.hpp"
#include "option_values.hpp"

namespace ember::kernel {

class ComponentRegistry;

/// The schema version this kernel reads.
inline constexpr std::int64_t config_schema_version = 1;

/// The named timeouts of a job (DESIGN §4), as the SDK describes them to components.
using Timeouts = ember::JobTimeouts;

/// Session settings that are not timeouts.
struct SessionSettings {
  std::int64_t max_resends = 3;  ///< bounded resends of a message without progress
};

/// Where a value came from.
struct Location {
  std::string file;
  std::uint32_t line = 0;
  std::uint32_t column = 0;

  /// "file:line:column" (or just "file" when the position is unknown).
  std::string str() const;
};

/// One component of a job, with options validated against its plugin's schema.
struct ComponentConfig {
  std::string id;    ///< the key under [components]
  std::string type;  ///< "pipe.socket"
  Location where;
  Options options;                                         ///< validated, defaults filled in
  std::map<std::string, Location, std::less<>> option_at;  ///< where each option given in the file is
};

/// A job: job.toml and the files it names.
struct JobConfig {
  std::filesystem::path file;
  std::string name;
  std::string description;
  std::string launcher;            ///< [job] launcher: which of a site's launchers runs the client job
  std::vector<std::string> sites;  ///< [job] sites: where a federation deploys it; empty: every site
  Timeouts timeouts;
  SessionSettings session;
  LogSettings log;
  std::vector<ComponentConfig> components;
  std::string trainer_config_json = "{}";  ///< [trainer_config] as JSON, for the trainers' get_config()

  /// The component with this id, or null.
  const ComponentConfig* component(std::string_view id) const;
};

/// The id of the job's one component of `kind` ("workflow"); Errc::invalid_config naming the file when it has
/// none or several ("`who` needs exactly one workflow component, it has 2").
Result<std::string> only_component(const JobConfig& job, std::string_view kind, std::string_view who);

/// A site file's [cell] table: how this process joins the cell network (docs/config-reference.md). Paths
/// are resolved against the file's folder; durations and sizes keep their defaults when absent.
struct CellSettings {
  std::string listen;           ///< the server's listening address ("0.0.0.0:8002")
  std::string server;           ///< where a site or admin reaches the server ("host:8002")
  std::string server_name;      ///< the name the server's certificate must carry
  std::string internal_listen;  ///< a site's listener for its jobs and trainers ("127.0.0.1:0")
  std::filesystem::path ca, cert, key;
  bool insecure = false;  ///< clear text: only when said, and warned about at every start
  std::uint64_t packet_bytes = 4u << 20;
  std::uint64_t max_message_bytes = 4ull << 30;
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds keepalive{10000};
  std::chrono::milliseconds keepalive_timeout{5000};
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{5000};
};

/// A server's [project] table: who belongs to the federation.
struct ProjectSettings {
  std::string name;
  std::vector<std::string> sites;
  std::vector<std::string> admins;
};

/// A site: what belongs to the machine rather than to a job.
struct SiteConfig {
  std::filesystem::path file;
  std::string name = "local";
  std::filesystem::path workspace;                  ///< empty: the caller's choice
  std::optional<unsigned> umask;                    ///< [site] umask for a run's files; empty: 0077
  std::vector<std::filesystem::path> plugin_paths;  ///< resolved against the file's folder
  LogSettings log;
  std::string role;                        ///< [site] role: "server", "client", "admin", or empty
  std::optional<CellSettings> cell;        ///< [cell], when the file has one (a startup kit's kit.toml)
  std::optional<ProjectSettings> project;  ///< [project] (a server's kit)
};

/// Loads `path` (a job folder holding job.toml, or the file itself) and validates it against `registry`.
/// `subs`, when given, replaces the registry's substitutions (a simulated site's {site}, {job_id},
/// {workspace}).
Result<JobConfig> load_job(const std::filesystem::path& path, const ComponentRegistry& registry,
                           const std::optional<Substitutions>& subs = std::nullopt);

/// Parses job TOML from memory; `name` stands for the file in messages.
Result<JobConfig> parse_job(std::string_view text, const std::string& name, const ComponentRegistry& registry,
                            const std::optional<Substitutions>& subs = std::nullopt);

/// Loads a site file.
Result<SiteConfig> load_site(const std::filesystem::path& file);

/// Parses site TOML from memory; relative plugin paths are resolved against `base`.
Result<SiteConfig> parse_site(std::string_view text, const std::string& name,
                              const std::filesystem::path& base);

/// Whether a TOML text is a site file (it has a [site] table) rather than a job; false if it does not parse.
bool looks_like_site(std::string_view text);

/// Reads a whole (bounded) text file.
Result<std::string> read_text_file(const std::filesystem::path& file, std::size_t max_bytes = 16 << 20);

}  // namespace ember::kernel
