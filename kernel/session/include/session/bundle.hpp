#pragma once
// Tasks and results over a session: a TaskData travels as one message whose payload is a params bundle
// (safetensors: the tensors, and the other fields in "__metadata__"). Sending reads the tensors' own buffers
// chunk by chunk; receiving streams chunks into one buffer per tensor. Shared by the client job's executor
// and the trainer's Client API.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <ember/task.hpp>

#include "session/session.hpp"
#include "wire/safetensors.hpp"

namespace ember::session {

/// A params bundle as an outgoing payload; the tensors' owners are kept until the session is done with it.
Result<std::shared_ptr<const PayloadSource>> task_payload(const TaskData& task);

/// Decodes the bundles of incoming TASK_READY and RESULT_READY messages as their chunks arrive. Install
/// sink_factory() on the session, then take() each such message's TaskData after receive() returned it.
class BundleInbox {
 public:
  /// Bundles of `spill_over` bytes or more (0: never) stream into an unlinked file in `spill_dir` and their
  /// tensors point into a read-only mapping of it, so a relay never holds a large model in its own memory.
  /// Other bundles are decoded into buffers that come back to the inbox when the TaskData's tensors let go
  /// of them, and the next bundle of the same layout is decoded into them (see wire::TensorBufferPool).
  explicit BundleInbox(wire::SafetensorsLimits limits = {}, std::filesystem::path spill_dir = {},
                       std::uint64_t spill_over = 0)
      : limits_(limits),
        spill_dir_(std::move(spill_dir)),
        spill_over_(spill_over),
        pool_(wire::TensorBufferPool::make()) {}

  /// The factory to hand Session::set_sink_factory; other ops keep their payload in memory.
  SinkFactory sink_factory();
  /// The TaskData of a received TASK_READY or RESULT_READY message (topic = task name); Errc::malformed
  /// naming the message when its bundle does not parse.
  Result<TaskData> take(const Message& message);

 private:
  class Sink;
  class SpillSink;
  void store(std::uint64_t msg_id, Result<TaskData> decoded);

  wire::SafetensorsLimits limits_;
  std::filesystem::path spill_dir_;
  std::uint64_t spill_over_ = 0;
  std::shared_ptr<wire::TensorBufferPool> pool_;
  std::mutex mutex_;
  std::map<std::uint64_t, Result<TaskData>> done_;
};

/// Why `result` cannot answer `task`: a tensor missing, extra, or with another dtype or shape. nullopt when
/// the layouts agree, when the task carried no params (the first round of a job without an initial model), or
/// when the result carries none (an evaluation answers with metrics only).
std::optional<std::string> layout_mismatch(const TaskData& task, const TaskData& result);

/// "[2, 3]"
std::string shape_text(const std::vector<std::int64_t>& shape);

}  // namespace ember::session
