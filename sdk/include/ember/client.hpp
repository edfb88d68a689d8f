#pragma once
// The Client API: what a training program calls to take part in an ember job (library ember-client).
//
//   ember::client::init();                       // reads the bootstrap file the job wrote (EMBER_BOOTSTRAP)
//   while (auto model = ember::client::receive()) {   // the next task, or none when the job ends
//     if (!*model) break;
//     ... train on (*model)->params ...
//     ember::client::send(result);
//   }
//
// Every call returns Result<...>; nothing throws.
//
// Threading: every call is thread-safe. init(), receive(), send() and shutdown() are meant for the training
// loop (they take turns; a receive() waiting for a task holds the others back); log(), log_text(),
// abort_requested() and is_running() never wait for them, so a training thread or a data loader may call them
// at any time; task_name(), system_info() and the other queries may wait while a receive() or send() runs. In
// a multi-process trainer only rank 0 (the explicit rank, else the RANK variable, else 0) talks to the job;
// on other ranks receive() and send() answer Errc::unsupported with a message saying so, and is_rank0() is
// false.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ember/abi.hpp>
#include <ember/result.hpp>
#include <ember/task.hpp>
#include <ember/tensor.hpp>

namespace ember::client {

/// A model as the trainer sees it: named tensors, whether they are FULL or a DIFF, metrics and meta.
struct FLModel {
  std::vector<WireTensor> params;             ///< the model's named tensors (shared with the received buffer)
  ParamsType params_type = ParamsType::full;  ///< FULL weights or a DIFF to the received ones
  std::map<std::string, double> metrics;      ///< e.g. "loss", "accuracy", "num_samples" (the FedAvg weight)
  std::map<std::string, std::string> meta;    ///< anything else, as text
  std::uint64_t current_round = 0;            ///< from 0
  std::uint64_t total_rounds = 0;             ///< 0 if unknown

  /// The tensor named `name`, or nullptr.
  const WireTensor* find(std::string_view name) const noexcept {
    for (const auto& t : params) {
      if (t.name == name) {
        return &t;
      }
    }
    return nullptr;
  }
};

/// How init() finds its settings.
struct InitOptions {
  std::filesystem::path bootstrap;  ///< empty: the EMBER_BOOTSTRAP environment variable
  std::optional<int> rank;          ///< empty: the RANK environment variable, else 0
};

/// What the job told this trainer.
struct SystemInfo {
  std::string job_id;
  std::string job_name;
  std::string site;
  int rank = 0;
  std::filesystem::path workspace;
  std::vector<std::string> formats;  ///< the converters' formats this trainer declared ("torch")
  std::string train_task = "train";  ///< the task names the job uses (the executor's *_task options)
  std::string evaluate_task = "evaluate";
  std::string submit_model_task = "submit_model";
};

/// Connects to the job: reads the 0600 bootstrap file, loads the pipe and converter plugins it names, and
/// runs the session handshake. Errc::invalid_config names the file and key when the bootstrap is wrong.
/// A second call warns on stderr and does nothing (the first session goes on).
EMBER_API Result<void> init(const InitOptions& options = {});
/// The next task's model, or nullopt when the job ends (SHUTDOWN) or aborts (then abort_requested()).
/// `timeout` bounds the wait (default: until the job says something; the session's liveness still applies).
EMBER_API Result<std::optional<FLModel>> receive(
    std::chrono::milliseconds timeout = std::chrono::milliseconds::max());
/// Sends the answer to the current task and waits for the job to accept it; Errc::rejected with the job's
/// reason (e.g. a tensor's shape) when it does not.
EMBER_API Result<void> send(const FLModel& model);
/// Records a scalar metric (forwarded to the job's metrics). Best effort: never blocks training; when the
/// queue is full the oldest entry is dropped and counted.
EMBER_API void log(std::string_view key, double value, std::optional<std::uint64_t> step = std::nullopt);
/// Records several scalar metrics at once (each as log() does).
EMBER_API void log(const std::map<std::string, double>& values,
                   std::optional<std::uint64_t> step = std::nullopt);
/// Records a line of text in the job log. Best effort, like log().
EMBER_API void log_text(std::string_view text);

/// Declines the task receive() returned and that send() has not answered: the job hears TASK_FAILED with
/// `reason` (its site's task fails, saying why) and the trainer goes on with the next receive(). Without a
/// task it does nothing.
EMBER_API Result<void> clear(std::string_view reason = {});
/// Ends the session because the trainer cannot go on: the current task, if any, fails with `reason`
/// (TASK_FAILED marked final, so the job does not wait for this trainer again), then ABORT with `reason`.
/// Best effort and bounded, like shutdown(); what a trainer calls on an unhandled error before it exits.
EMBER_API void end_with_error(std::string_view reason);

/// The job's [trainer_config] table as JSON text: "{}" when the job has none (or before init()).
EMBER_API std::string get_config();
/// One top-level entry of that table as JSON text ("0.01", "\"adam\"", "[1,2]"), or nullopt.
EMBER_API std::optional<std::string> config_value(std::string_view key);

/// The current task's name ("train"), or empty between tasks.
EMBER_API std::string task_name();
/// Whether the current task is the job's train, evaluate or submit-model task ("train", "evaluate",
/// "submit_model" unless the executor names them otherwise).
EMBER_API bool is_train();
EMBER_API bool is_evaluate();
EMBER_API bool is_submit_model();
/// The job's id and this site's name (empty before init()).
EMBER_API std::string job_id();
EMBER_API std::string site_name();
/// Everything the job told this trainer.
EMBER_API SystemInfo system_info();
/// Whether this process talks to the job (rank 0).
EMBER_API bool is_rank0();
/// True from init() until the job ends, aborts, or shutdown() is called.
EMBER_API bool is_running();
/// True once the job sent ABORT or went silent (PEER_GONE); a training loop should poll it and stop early.
EMBER_API bool abort_requested();
/// Ends the session (best effort, bounded) and frees the plugins. Idempotent.
EMBER_API void shutdown();

/// Converts a received tensor with the converter of `format` the job configured ("torch").
EMBER_API Result<NativeTensor> to_native(const WireTensor& tensor, std::string_view format);
/// Converts a framework tensor back to a wire tensor named `name`.
EMBER_API Result<WireTensor> to_wire(const NativeTensor& tensor, std::string name);

}  // namespace ember::client
