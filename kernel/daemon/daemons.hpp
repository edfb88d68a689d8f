#pragma once
// `ember server KIT` and `ember client KIT` (DESIGN §1): the federation's long-running processes, from the
// startup kits of `ember provision`, and the admin commands that talk to the server (docs/federation.md).

#include <filesystem>
#include <iosfwd>
#include <string>

#include "kernel.hpp"

namespace ember::kernel::fed {

struct DaemonOptions {
  std::filesystem::path kit;        ///< kit.toml (or its folder)
  std::filesystem::path workspace;  ///< empty: [site] workspace of the kit, else ./<name>-workspace
};

/// Runs the server until SIGINT/SIGTERM: admits the project's sites and admins, deploys submitted jobs,
/// runs each job's workflow as its own process and keeps their status. Returns an exit code.
int run_server(Kernel& kernel, const DaemonOptions& options, std::ostream& out, std::ostream& err);
/// Runs a site until SIGINT/SIGTERM: joins the server, runs the jobs it deploys (the job executor).
int run_client(Kernel& kernel, const DaemonOptions& options, std::ostream& out, std::ostream& err);

/// An admin command against the server named in an admin kit.
struct AdminOptions {
  std::filesystem::path kit;  ///< the admin's kit.toml (or its folder); empty: $EMBER_KIT
  std::string command;        ///< submit, status, abort, logs, download
  std::string job;            ///< a job folder (submit) or a job id
  std::string site;           ///< logs: a site (default: the server job's log)
  std::filesystem::path out;  ///< download: where to write (default ./<job id>)
  bool json = false;
  bool watch = false;  ///< status: follow the job until it ends
  bool task = false;   ///< abort: only the current task
};
int run_admin(const AdminOptions& options, std::ostream& out, std::ostream& err);

/// Resolves a kit argument: a folder holding kit.toml, or the file.
std::filesystem::path kit_file(const std::filesystem::path& kit);

}  // namespace ember::kernel::fed
