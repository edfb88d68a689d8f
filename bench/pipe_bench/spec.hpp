#pragma once
// What one measurement of pipe_bench is, as each of its processes sees it. The orchestrator starts the
// measuring end with a Spec as command-line arguments; the measuring end starts the far end with the same
// Spec plus the address to attach to; the measuring end reports a Measurement back in a JSON file.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <ember/result.hpp>

namespace ember::bench {

using Clock = std::chrono::steady_clock;

/// No single wait of a benchmark process (a read, an accept, a reply) lasts longer than this.
inline constexpr std::chrono::seconds io_bound{120};

enum class Kind {
  throughput,  ///< messages of `size` bytes one way, each until the far end's acknowledgement
  latency,     ///< `size`-byte messages answered by the far end with as many bytes, one at a time
  rate,        ///< `size`-byte messages one way, pipelined, until the last one is acknowledged
};

std::string_view to_string(Kind kind);

struct Spec {
  std::string role;  ///< job, trainer, raw-near, raw-far
  std::string
      transport;  ///< socket-unix, socket-tcp, file (the session over a pipe); raw-unix, raw-tcp, raw-file
  Kind kind = Kind::throughput;
  std::uint64_t size = 0;            ///< payload bytes of each message
  std::uint64_t block = 1u << 20;    ///< raw: bytes per write() or per file
  std::uint32_t chunk = 1u << 20;    ///< session: Settings::chunk_size
  std::uint64_t warmup = 0;          ///< untimed messages first
  std::uint64_t iterations = 1;      ///< timed messages (rate: the messages of the one timed batch)
  std::filesystem::path plugins;     ///< session: the folder of the pipe plugins
  std::filesystem::path work;        ///< where the measuring end makes its socket or folder
  std::filesystem::path result;      ///< measuring end: where it writes its Measurement
  std::string address;               ///< far end: what to attach to
  std::filesystem::path token_file;  ///< trainer: the 0600 file holding the HELLO token
  int near_cpu = -1;                 ///< the CPU the measuring end runs on, every thread of it; -1: any
  int far_cpu = -1;                  ///< the CPU the far end runs on; -1: any

  /// Whether the session layer is measured (else a raw baseline).
  bool session() const { return !transport.starts_with("raw-"); }
  /// Where the scheduler may run the two ends: "" (anywhere), "same-cpu", "two-cpus".
  std::string placement() const;
  /// Pins the calling process (before it starts threads) to its role's CPU, if the Spec names one.
  Result<void> pin() const;
  /// The arguments that give this Spec to another process (after the program's path).
  std::vector<std::string> to_args() const;
  /// The Spec given by `args` (as to_args() writes them).
  static Result<Spec> parse(const std::vector<std::string>& args);
};

/// CPU time and page faults of one process (from /proc/<pid>/stat).
struct CpuUse {
  double user_s = 0;
  double system_s = 0;
  std::uint64_t minor_faults = 0;
  std::uint64_t major_faults = 0;
};

/// What `pid` has used so far; zeros when it cannot be read.
CpuUse cpu_use(pid_t pid);
/// What was used between two readings.
CpuUse operator-(const CpuUse& after, const CpuUse& before);
/// What two spans used together.
CpuUse operator+(const CpuUse& a, const CpuUse& b);

/// What the measuring end reports.
struct Measurement {
  std::vector<double> seconds;      ///< one per timed message (rate: one for the whole timed batch)
  std::uint64_t near_peak_kib = 0;  ///< VmHWM of the measuring end (the job, or the raw sender)
  std::uint64_t far_peak_kib = 0;   ///< VmHWM of the far end (the trainer, or the raw receiver)
  double timed_wall_s = 0;          ///< wall time of the whole timed part
  CpuUse near_cpu;                  ///< over the timed part
  CpuUse far_cpu;                   ///< over the timed part
  std::uint64_t resends = 0;        ///< session: messages sent again (0 in a clean run)
};

Result<void> write_measurement(const Measurement& m, const std::filesystem::path& file);
Result<Measurement> read_measurement(const std::filesystem::path& file);

/// `n` bytes of a fixed pseudo-random pattern: the payload of every message, raw or through a pipe.
std::vector<std::byte> pattern_bytes(std::size_t n);

}  // namespace ember::bench
