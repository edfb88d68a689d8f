#pragma once
// The bootstrap file: what a client job tells the trainer it launches (DESIGN §5). JSON, written 0600 and
// atomically by the job, read by the Client API; the session token travels here, never in argv.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <ember/job.hpp>
#include <ember/options.hpp>
#include <ember/result.hpp>

#include "session/session.hpp"

namespace ember::session {

/// The format tag and version at the top of the file.
inline constexpr const char* bootstrap_format = "ember-bootstrap/1";

/// A component the trainer creates: its type, the plugin file providing it (empty: search the plugin path)
/// and its options (already validated and substituted by the job).
struct ComponentRef {
  std::string type;
  std::filesystem::path file;
  Options options;
};

/// Which task names mean train, evaluate and submit-model for this trainer (executor options).
struct TaskNames {
  std::string train = "train";
  std::string evaluate = "evaluate";
  std::string submit_model = "submit_model";
};

struct Bootstrap {
  std::string job_id;
  std::string job_name;
  std::string site;
  std::string token;  ///< the session secret: 32 random bytes, hex
  std::filesystem::path workspace;
  ComponentRef pipe;  ///< its "address" option holds the job end's address()
  std::vector<ComponentRef> converters;
  JobTimeouts timeouts;
  std::int64_t max_resends = 3;
  std::vector<std::filesystem::path> plugin_paths;
  /// The job's [trainer_config] table as JSON text ("{}" when the job has none): what get_config() returns.
  std::string config_json = "{}";
  /// The names the job gives its train, evaluate and submit-model tasks (is_train() and the others).
  TaskNames task_names;
};

/// Writes `file` with mode 0600 through a temporary file and a rename, so a reader never sees half of it.
Result<void> write_bootstrap(const std::filesystem::path& file, const Bootstrap& bootstrap);
/// Reads and checks a bootstrap file. Refuses a file that others can read (it holds the token), a foreign
/// format, and missing or mistyped keys, naming the file and the key.
Result<Bootstrap> read_bootstrap(const std::filesystem::path& file);

/// Session settings from a job's named timeouts and resend budget.
Settings settings_from(const JobTimeouts& timeouts, std::int64_t max_resends);

/// A fresh session token: 32 bytes from the kernel's random source, as 64 hex digits.
Result<std::string> make_token();

}  // namespace ember::session
