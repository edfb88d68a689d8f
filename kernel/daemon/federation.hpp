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
#include <optional>
#include <stop_token>
#include <string>

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

/// Sleeps `d`, or less when `stop` is requested; false when stopped.
bool sleep_for(std::chrono::milliseconds d, std::stop_token stop);

}  // namespace ember::kernel::fed
