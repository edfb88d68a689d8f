#pragma once
// The timed loop every measuring end runs: untimed warm-up rounds, then timed rounds, with both ends'
// CPU time and page faults read around the timed part.

#include <unistd.h>

#include "spec.hpp"

namespace ember::bench {

/// Runs `round(false)` `untimed` times, then `round(true)` `timed` times, timing each timed round into
/// `m.seconds` and reading the CPU use of this process and of `far` around the timed rounds.
template <typename Round>
Result<void> timed_rounds(std::uint64_t untimed, std::uint64_t timed, pid_t far, Measurement& m,
                          Round&& round) {
  for (std::uint64_t i = 0; i < untimed; ++i) {
    if (auto done = round(false); !done) {
      return done;
    }
  }
  const CpuUse near_before = cpu_use(getpid());
  const CpuUse far_before = cpu_use(far);
  const auto started = Clock::now();
  for (std::uint64_t i = 0; i < timed; ++i) {
    auto t0 = Clock::now();
    if (auto done = round(true); !done) {
      return done;
    }
    m.seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  m.timed_wall_s = std::chrono::duration<double>(Clock::now() - started).count();
  m.near_cpu = cpu_use(getpid()) - near_before;
  m.far_cpu = cpu_use(far) - far_before;
  return ok();
}

/// How many untimed and timed rounds a Spec asks for: a rate is one batch of `warmup` messages, then one
/// timed batch of `iterations`; the others are one message per round.
inline std::pair<std::uint64_t, std::uint64_t> rounds_of(const Spec& spec) {
  if (spec.kind == Kind::rate) {
    return {spec.warmup > 0 ? 1 : 0, 1};
  }
  return {spec.warmup, spec.iterations};
}

}  // namespace ember::bench
