#pragma once
// The pieces the federation's processes share (DESIGN §1, §6): the cell topics they speak, how a startup
// kit's [cell] table becomes a cell's config, job tokens, and a stop request from SIGINT/SIGTERM.
//
// Who talks to whom (docs/federation.md has the whole protocol):
//   admin  -> server        admin.*         submit, status, abort, logs, download
//   server -> site          site.*          deploy a job, abort it, its status and logs
//   site   -> server        server.job_*    a client job's state and exit (notify)
//   server job -> server    server.progress the workflow's rounds, results and end (notify)
//   server job -> <site>.<job>  job.task    one task, answered with its result
//   site   -> <site>.<job>  job.*           run-info, errors, abort, abort_task

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <ember/launcher.hpp>
#include <ember/result.hpp>

#include "cell/cell.hpp"
#include "config.hpp"
#include "signal_stop.hpp"

namespace ember::kernel::fed {

namespace topic {
inline constexpr const char* submit = "admin.submit";
inline constexpr const char* status = "admin.status";
inline constexpr const char* abort = "admin.abort";
inline constexpr const char* abort_task = "admin.abort_task";
inline constexpr const char* logs = "admin.logs";
inline constexpr const char* download = "admin.download";

inline constexpr const char* deploy = "site.deploy";
inline constexpr const char* site_abort = "site.abort";
inline constexpr const char* site_abort_task = "site.abort_task";
inline constexpr const char* site_status = "site.status";
inline constexpr const char* site_logs = "site.logs";

inline constexpr const char* job_state = "server.job_state";
inline constexpr const char* progress = "server.progress";

inline constexpr const char* task = "job.task";
inline constexpr const char* run_info = "job.run_info";
inline constexpr const char* errors = "job.errors";
inline constexpr const char* reset_errors = "job.reset_errors";
inline constexpr const char* job_abort = "job.abort";
inline constexpr const char* job_abort_task = "job.abort_task";
inline constexpr const char* job_up = "site.job_up";
}  // namespace topic

/// The bound of a query to a daemon or a job (status, run-info, errors).
inline constexpr std::chrono::milliseconds query_timeout{5000};
/// The largest job folder `ember submit` sends.
inline constexpr std::uint64_t max_job_folder_bytes = std::uint64_t{1} << 30;

/// A cell config from a site file's [cell]: `fqcn` joins `parent` ("host:port", empty for a root) and
/// listens on `listen` (empty: no listener). Errc::invalid_config naming the file when [cell] is missing.
Result<cell::Config> cell_config(const SiteConfig& site, std::string fqcn, std::string parent,
                                 std::string listen);

/// 32 random bytes as hex, from the kernel's random source.
std::string random_token();

/// Reads a job token file (0600, one line); Errc::invalid_argument when others may read it.
Result<std::string> read_token_file(const std::filesystem::path& file);
/// Writes a token file 0600.
Result<void> write_token_file(const std::filesystem::path& file, const std::string& token);

/// Records a launched process group (its leader's pid and start time) in `file`, so that a daemon restarted
/// on the same workspace can find it (reap_recorded). Best effort: a record that cannot be written is logged
/// by nobody and only costs the reaping.
void record_process(const std::filesystem::path& file, long pid);
/// Ends the process group recorded in `file` if its leader still runs (same pid and start time, so a reused
/// pid is left alone): SIGTERM to the group, up to 5 s, then SIGKILL. Removes the record. Returns what it
/// found ("process group 1234, ended" or "..., already gone"), or nullopt when there is no record.
std::optional<std::string> reap_recorded(const std::filesystem::path& file);

/// Replies and headers of the daemons' handlers.
cell::Reply text_reply(std::string_view text);
cell::Reply json_reply(const nlohmann::json& value);
/// An ok reply whose headers carry `error` (put_error): the answer of a request the handler refused.
cell::Reply error_reply(const Error& error);
/// The header's value, or "" when the message has none.
const std::string& header_or_empty(const cell::Message& m, std::string_view key);
/// A JSON payload, or null when it is not JSON.
nlohmann::json parse_payload(std::span<const std::byte> payload);

/// Logs a daemon's link events: children joining and leaving (admins, who come and go with each command,
/// are not logged), the parent link going up and down, refusals.
cell::LinkObserver link_logger(std::shared_ptr<Logger> log);

/// The command line of a job process (`ember --site KIT ... run-job ROLE ...`): `exe` with the daemon's kit
/// and plugin search path, then `role` and `args`.
std::vector<std::string> job_process_argv(const std::filesystem::path& exe, const std::filesystem::path& kit,
                                          const std::vector<std::filesystem::path>& search_paths,
                                          const std::string& role, const std::vector<std::string>& args);

/// Waits for what `handle` launched to end, polling every 200 ms; once `stop` is requested it stops it
/// (`grace`, then kill). A handle that cannot say is reported as exit code 1 (internal).
ExitStatus wait_launched(LaunchHandle& handle, std::chrono::milliseconds grace, std::stop_token stop);

/// Sleeps `d`, or less when `stop` is requested; false when stopped.
bool sleep_for(std::chrono::milliseconds d, std::stop_token stop);

}  // namespace ember::kernel::fed
