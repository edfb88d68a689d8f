#pragma once
// Pinned host buffers whose copy to a GPU may still be running.
//
// to_native on CUDA copies the wire bytes into a pinned staging tensor and queues a non-blocking copy to the
// device, which reads the staging memory later, on the device's current stream. The staging tensor is
// therefore parked here with a CUDA event recorded on that stream right after the copy was queued, and it is
// released only once the event has completed: finished entries are dropped at every later conversion, and the
// destructor waits for the streams of those still parked. (LibTorch's pinned-memory allocator would not reuse
// the block early either, but the converter does not rely on that.)

#include <deque>
#include <mutex>
#include <utility>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/VirtualGuardImpl.h>

namespace ember::torch_converter {

/// Staging tensors held until the device copies that read them have completed. Thread-safe.
class StagingPark {
 public:
  StagingPark() = default;
  StagingPark(const StagingPark&) = delete;
  StagingPark& operator=(const StagingPark&) = delete;

  /// Waits for every parked copy; errors from the device are ignored (nothing could be done with them).
  ~StagingPark() {
    std::lock_guard lock(mutex_);
    for (auto& entry : parked_) {
      try {
        entry.stream.synchronize();
      } catch (...) {
      }
    }
  }

  /// Holds `staging` until the work queued so far on `device`'s current stream has completed. Throws
  /// c10::Error when the device's runtime fails.
  void park(at::Tensor staging, c10::Device device) {
    c10::impl::VirtualGuardImpl runtime(device.type());
    auto stream = runtime.getStream(device);
    c10::Event copied(device.type());
    copied.record(stream);
    std::lock_guard lock(mutex_);
    parked_.push_back(Entry{std::move(copied), stream, std::move(staging)});
  }

  /// Releases the staging tensors whose copies have completed.
  void release_finished() {
    std::lock_guard lock(mutex_);
    std::erase_if(parked_, [](const Entry& entry) { return entry.copied.query(); });
  }

  /// How many staging tensors are still held.
  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return parked_.size();
  }

 private:
  struct Entry {
    c10::Event copied;
    c10::Stream stream;
    at::Tensor staging;
  };
  mutable std::mutex mutex_;
  std::deque<Entry> parked_;
};

}  // namespace ember::torch_converter
