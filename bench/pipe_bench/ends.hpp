#pragma once
// The two ends of each measurement, each in its own process. The measuring end (near) sets up the channel,
// starts the far end (this program again, with the Spec and an address), measures, reads both ends' peak
// memory while both still run, and reports; the far end receives, counts and acknowledges.

#include "spec.hpp"

namespace ember::bench {

/// Through the session layer: the job end (near) over a pipe plugin...
Result<Measurement> run_job(const Spec& spec);
/// ...and the trainer end (far): counts what arrives; exit code 0 when everything expected came.
int run_trainer(const Spec& spec);

/// The raw baselines: a socket or a folder, nothing else. The sender (near)...
Result<Measurement> run_raw_near(const Spec& spec);
/// ...and the receiver (far).
int run_raw_far(const Spec& spec);

}  // namespace ember::bench
