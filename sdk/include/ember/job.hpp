#pragma once
// What a component learns about the job it runs in: ids, the site, the named timeouts (DESIGN §4).

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace ember {

/// The named timeouts of a job. Transfers time out on lack of progress, never on total duration.
struct JobTimeouts {
  std::chrono::milliseconds launch{std::chrono::seconds(60)};             ///< launch until HELLO
  std::chrono::milliseconds heartbeat_interval{std::chrono::seconds(5)};  ///< between heartbeats
  std::chrono::milliseconds heartbeat_timeout{std::chrono::seconds(30)};  ///< silence before PEER_GONE
  std::chrono::milliseconds task_wait{std::chrono::minutes(5)};           ///< for a task to be accepted
  std::chrono::milliseconds result_wait{std::chrono::hours(1)};           ///< for a task's result
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds(10)};     ///< SIGTERM to SIGKILL
  std::chrono::milliseconds stream_idle{std::chrono::seconds(60)};        ///< no progress in a transfer
};

/// The job a component was created for (Registry::job()).
struct JobInfo {
  std::string job_id;                               ///< unique per run, e.g. "hello-fedavg-20261123-191500"
  std::string job_name;                             ///< [job] name
  std::string site;                                 ///< this site's name ("site-1"), or "server"
  std::filesystem::path job_dir;                    ///< the folder holding job.toml and the files it names
  JobTimeouts timeouts;                             ///< validated at load
  std::int64_t max_resends = 3;                     ///< [session] max_resends
  std::vector<std::filesystem::path> plugin_paths;  ///< the kernel's plugin search path, in order
  /// Where a trainer program given by a bare name is looked up, after the job folder and before PATH
  /// (the build tree's example programs when ember runs from it, else the installed libexec folder).
  std::vector<std::filesystem::path> program_paths;
  /// The file providing each component type ("pipe.socket" → its .so), so a trainer loads only what it needs;
  /// a type linked into the program has an empty path.
  std::map<std::string, std::filesystem::path> plugin_files;
  /// The job's [trainer_config] table as JSON text ("{}" when absent), handed to the trainers.
  std::string trainer_config_json = "{}";
  /// The Python interpreter ember was built for, and where its `ember` package is (the build tree's when
  /// ember runs from it, else the install prefix's): a Python trainer needs no path set by hand.
  std::filesystem::path python;
  std::vector<std::filesystem::path> python_paths;
};

}  // namespace ember
