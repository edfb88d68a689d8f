#pragma once
// A pipe end that misbehaves on purpose, for fault-injection tests: it drops, duplicates, corrupts,
// delays or swallows the frames sent through it, deterministically from a seed.

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>

#include <ember/pipe.hpp>

namespace ember::test {

struct FaultPolicy {
  double drop = 0;                     ///< probability a sent frame vanishes
  double duplicate = 0;                ///< probability a sent frame is sent twice
  double corrupt = 0;                  ///< probability one bit of a sent frame is flipped
  std::chrono::milliseconds delay{0};  ///< added before each sent frame
  std::uint64_t seed = 1;
  /// When not 0, every this-many-th frame of `large_bytes` or more vanishes too: losses of data chunks at
  /// known intervals, whatever the timing of the small frames around them.
  std::uint64_t drop_every_large = 0;
  std::size_t large_bytes = 32 * 1024;
};

class FaultyEndpoint final : public PipeEndpoint {
 public:
  FaultyEndpoint(std::unique_ptr<PipeEndpoint> inner, FaultPolicy policy)
      : inner_(std::move(inner)), policy_(policy), rng_(policy.seed) {}

  /// While true, every frame sent is swallowed: the peer hears nothing (a hung process).
  void set_silent(bool silent) { silent_ = silent; }
  /// While true, this end also reads nothing (a process stopped with SIGSTOP): the peer's frames stay in
  /// the pipe, so its sends wait for room once the pipe is full.
  void set_frozen(bool frozen) {
    frozen_ = frozen;
    silent_ = frozen;
  }
  void set_policy(FaultPolicy policy) {
    std::lock_guard lock(mutex_);
    policy_ = policy;
  }
  std::uint64_t dropped() const { return dropped_; }
  std::uint64_t duplicated() const { return duplicated_; }
  std::uint64_t corrupted() const { return corrupted_; }
  /// Calls of send() that have not returned yet (a send waiting for room in the pipe).
  int sends_in_progress() const { return sending_; }

  Result<void> send(std::span<const std::byte> frame, std::chrono::milliseconds timeout) override {
    struct InProgress {
      std::atomic<int>& count;
      explicit InProgress(std::atomic<int>& c) : count(c) { ++count; }
      ~InProgress() { --count; }
    } in_progress(sending_);
    if (silent_) {
      return ok();
    }
    double r_drop, r_dup, r_corrupt;
    std::size_t bit;
    FaultPolicy policy;
    {
      std::lock_guard lock(mutex_);
      policy = policy_;
      std::uniform_real_distribution<double> u(0, 1);
      r_drop = u(rng_);
      r_dup = u(rng_);
      r_corrupt = u(rng_);
      bit = std::uniform_int_distribution<std::size_t>(0, frame.size() * 8 - 1)(rng_);
    }
    if (policy.delay.count() > 0) {
      std::this_thread::sleep_for(policy.delay);
    }
    const bool nth_large = policy.drop_every_large != 0 && frame.size() >= policy.large_bytes &&
                           ++large_sent_ % policy.drop_every_large == 0;
    if (r_drop < policy.drop || nth_large) {
      ++dropped_;
      return ok();
    }
    if (r_corrupt < policy.corrupt) {
      ++corrupted_;
      std::vector<std::byte> copy(frame.begin(), frame.end());
      copy[bit / 8] ^= static_cast<std::byte>(1u << (bit % 8));
      return inner_->send(copy, timeout);
    }
    auto sent = inner_->send(frame, timeout);
    if (sent && r_dup < policy.duplicate) {
      ++duplicated_;
      return inner_->send(frame, timeout);
    }
    return sent;
  }

  Result<std::optional<std::vector<std::byte>>> receive(std::chrono::milliseconds timeout) override {
    if (frozen_) {
      std::this_thread::sleep_for(
          std::min<std::chrono::milliseconds>(timeout, std::chrono::milliseconds(50)));
      return std::optional<std::vector<std::byte>>();
    }
    return inner_->receive(timeout);
  }
  void close() noexcept override { inner_->close(); }
  std::string describe() const override { return "faulty(" + inner_->describe() + ")"; }

 private:
  std::unique_ptr<PipeEndpoint> inner_;
  std::mutex mutex_;
  FaultPolicy policy_;
  std::mt19937_64 rng_;
  std::atomic<bool> silent_{false};
  std::atomic<bool> frozen_{false};
  std::atomic<int> sending_{0};
  std::atomic<std::uint64_t> dropped_{0}, duplicated_{0}, corrupted_{0}, large_sent_{0};
};

}  // namespace ember::test
