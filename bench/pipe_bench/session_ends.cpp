// The session layer over a real pipe plugin, as a client job and its trainer use it: the job end opens the
// pipe (pipe.socket or pipe.file, loaded from the build tree), starts the trainer with the pipe's address
// and a 0600 token file, and accepts its HELLO; then it measures.
//
//   throughput  send(TASK_READY, payload) per message; send() returns on the trainer's ACK, which comes
//               once every byte is in the trainer's sink (a counter)
//   latency     post(LOG, payload); the trainer answers each LOG with a LOG of the same size; timed until
//               the answer is received (the receipt of our LOG is then waited for, untimed)
//   rate        post() LOGs back to back (post waits only while `window` messages are unacknowledged),
//               then wait() for the last one's ACK
//
// The trainer counts what arrives and checks it against the Spec when the job says SHUTDOWN.

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <iostream>

#include "ends.hpp"
#include "kernel.hpp"
#include "process.hpp"
#include "session/session.hpp"
#include "timing.hpp"

namespace ember::bench {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using wire::Op;

constexpr std::string_view token = "pipe-bench-token-5c1e";

// Generous settings on both ends, so that a slow moment of a shared machine never becomes a resend.
session::Settings settings_for(const Spec& spec) {
  session::Settings s;
  s.launch = 20s;
  s.heartbeat_interval = 1s;
  s.heartbeat_timeout = 10s;
  s.stream_idle = 60s;
  s.chunk_size = spec.chunk;
  return s;
}

std::unique_ptr<kernel::Kernel> make_kernel(const Spec& spec, const fs::path& workspace) {
  kernel::KernelSettings ks;
  ks.plugin_paths = {spec.plugins};
  ks.use_default_paths = false;
  ks.use_env_path = false;
  ks.log.level = LogLevel::warn;
  ks.workspace = workspace;
  auto k = std::make_unique<kernel::Kernel>(ks);
  // Only the pipe plugins: the build tree also holds converter.torch, whose LibTorch would add some 130 MiB
  // to each end's resident memory and threads of its own to the measurement.
  std::error_code ec;
  for (const auto& entry : fs::recursive_directory_iterator(spec.plugins, ec)) {
    const auto name = entry.path().filename().string();
    if (entry.is_regular_file() && name.starts_with("ember-pipe-") && entry.path().extension() == ".so") {
      (void)k->load_file(entry.path());
    }
  }
  return k;
}

Result<std::shared_ptr<Pipe>> make_pipe(kernel::Kernel& k, const Spec& spec, const std::string& address) {
  Options options;
  options.set("address", address);
  const char* type = spec.transport == "file"   ? "pipe.file"
                     : spec.transport == "cell" ? "pipe.cell"
                                                : "pipe.socket";
  return k.registry().create_as<Pipe>(type, options, "bench");
}

// A payload of any size from one 1 MiB pattern block, repeated. Like a model's tensors it lies in memory,
// so the session sends it from there (view()) as the raw baselines send their one block; read() copies.
class RepeatSource final : public session::PayloadSource {
 public:
  explicit RepeatSource(std::uint64_t size) : size_(size), block_(pattern_bytes(1u << 20)) {}
  std::uint64_t size() const override { return size_; }
  Result<void> read(std::uint64_t offset, std::span<std::byte> out) const override {
    std::size_t done = 0;
    while (done < out.size()) {
      auto at = static_cast<std::size_t>((offset + done) % block_.size());
      auto n = std::min(out.size() - done, block_.size() - at);
      std::memcpy(out.data() + done, block_.data() + at, n);
      done += n;
    }
    return ok();
  }
  bool view(std::uint64_t offset, std::size_t size,
            std::vector<std::span<const std::byte>>& out) const override {
    std::size_t done = 0;
    while (done < size) {
      auto at = static_cast<std::size_t>((offset + done) % block_.size());
      auto n = std::min(size - done, block_.size() - at);
      out.emplace_back(block_.data() + at, n);
      done += n;
    }
    return true;
  }

 private:
  std::uint64_t size_;
  std::vector<std::byte> block_;
};

// Counts the bytes of a streamed payload; adds them to `total` once the payload is whole.
class CountingSink final : public session::PayloadSink {
 public:
  explicit CountingSink(std::atomic<std::uint64_t>& total) : total_(total) {}
  Result<void> write(std::uint64_t, std::span<const std::byte> bytes) override {
    count_ += bytes.size();
    return ok();
  }
  void reset() override { count_ = 0; }
  Result<void> finish() override {
    total_ += count_;
    return ok();
  }

 private:
  std::atomic<std::uint64_t>& total_;
  std::uint64_t count_ = 0;
};

// The answer to the LOG just posted.
Result<void> await_answer(session::Session& s) {
  auto deadline = Clock::now() + io_bound;
  while (Clock::now() < deadline) {
    auto got = s.receive(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
    if (!got) {
      return fail(std::move(got.error()));
    }
    if (*got && (*got)->op == Op::log) {
      return ok();
    }
  }
  return fail(Errc::timeout, "no answer to a LOG within " + std::to_string(io_bound.count()) + " s");
}

// One round of the job end.
Result<void> job_round(session::Session& s, const Spec& spec,
                       const std::shared_ptr<const session::PayloadSource>& payload, bool timed) {
  switch (spec.kind) {
    case Kind::throughput: {
      auto sent = s.send(Op::task_ready, "bench", {}, payload);
      return sent ? ok() : fail(std::move(sent.error()));
    }
    case Kind::latency: {
      auto ticket = s.post(Op::log, "ping", {}, payload);
      if (!ticket) {
        return fail(std::move(ticket.error()));
      }
      if (auto answered = await_answer(s); !answered) {
        return answered;
      }
      auto acked = s.wait(*ticket);  // already in, or about to be: the answer left after it
      return acked ? ok() : fail(std::move(acked.error()));
    }
    case Kind::rate: {
      std::shared_ptr<session::Session::Ticket> last;
      for (std::uint64_t i = 0, n = timed ? spec.iterations : spec.warmup; i < n; ++i) {
        auto ticket = s.post(Op::log, "m", {}, payload);
        if (!ticket) {
          return fail(std::move(ticket.error()));
        }
        last = std::move(*ticket);
      }
      auto acked = s.wait(last);
      return acked ? ok() : fail(std::move(acked.error()));
    }
  }
  return ok();
}

}  // namespace

Result<Measurement> run_job(const Spec& spec) {
  auto made = TempDir::make(spec.work, "job");
  if (!made) {
    return fail(std::move(made.error()));
  }
  TempDir ws = std::move(*made);
  auto k = make_kernel(spec, ws.path());
  // pipe.cell's job end is self-hosted (it listens on loopback, clear text) and makes its own address.
  std::string address = spec.transport == "socket-unix"  ? "unix:" + (ws.path() / "pipe.sock").string()
                        : spec.transport == "socket-tcp" ? std::string("tcp:127.0.0.1:0")
                        : spec.transport == "cell"       ? std::string()
                                                         : (ws.path() / "pipe").string();
  auto pipe = make_pipe(*k, spec, address);
  if (!pipe) {
    return fail(std::move(pipe.error()));
  }
  auto end = (*pipe)->open(PipeSide::job, 10s, session::admit_hello(std::string(token)));
  if (!end) {
    return fail(std::move(end.error()));
  }
  Spec far = spec;
  far.role = "trainer";
  far.result.clear();
  far.address = (*pipe)->address();
  far.token_file = ws.path() / "bootstrap.token";
  {
    std::ofstream(far.token_file) << token << "\n";
    fs::permissions(far.token_file, fs::perms::owner_read | fs::perms::owner_write);
  }
  std::vector<std::string> argv = {self_exe()};
  auto args = far.to_args();
  argv.insert(argv.end(), args.begin(), args.end());
  auto child = Child::spawn(argv);
  if (!child) {
    return fail(std::move(child.error()));
  }
  session::Session s(session::Role::job, std::move(*end), settings_for(spec), k->logs().get("bench.job"));
  if (auto hello = s.accept(token); !hello) {
    return fail(std::move(hello.error()));
  }

  std::shared_ptr<const session::PayloadSource> payload;
  if (spec.kind == Kind::throughput) {
    payload = std::make_shared<const RepeatSource>(spec.size);
  } else {
    payload = std::make_shared<const session::BytesSource>(pattern_bytes(spec.size));
  }
  Measurement m;
  auto [untimed, timed] = rounds_of(spec);
  auto measured = timed_rounds(untimed, timed, (*child)->pid(), m,
                               [&](bool is_timed) { return job_round(s, spec, payload, is_timed); });
  if (!measured) {
    return fail(std::move(measured.error()));
  }
  m.near_peak_kib = peak_rss_kib(getpid());
  m.far_peak_kib = peak_rss_kib((*child)->pid());
  m.resends = s.stats().resends;
  s.close(Op::shutdown, "benchmark done");
  if (auto ended = expect_clean_exit(**child, 30s, "the trainer"); !ended) {
    return fail(std::move(ended.error()));
  }
  return m;
}

int run_trainer(const Spec& spec) {
  auto k = make_kernel(spec, spec.work);
  auto pipe = make_pipe(*k, spec, spec.address);
  if (!pipe) {
    std::cerr << "pipe_bench trainer: " << pipe.error().message << "\n";
    return 2;
  }
  auto end = (*pipe)->open(PipeSide::trainer, 10s);
  if (!end) {
    std::cerr << "pipe_bench trainer: " << end.error().message << "\n";
    return 3;
  }
  std::string token_text;
  std::ifstream(spec.token_file) >> token_text;
  session::Session s(session::Role::trainer, std::move(*end), settings_for(spec),
                     k->logs().get("bench.trainer"));
  std::atomic<std::uint64_t> streamed{0};
  s.set_sink_factory([&](const session::Message&) { return std::make_unique<CountingSink>(streamed); });
  if (auto hello = s.hello(token_text); !hello) {
    std::cerr << "pipe_bench trainer: " << hello.error().message << "\n";
    return 3;
  }
  // Latency: each LOG is answered with a LOG of the same size.
  const auto answer =
      std::make_shared<const session::BytesSource>(pattern_bytes(spec.kind == Kind::latency ? spec.size : 0));
  std::uint64_t messages = 0;
  std::uint64_t held = 0;  // payload bytes that came in memory (single-frame messages)
  auto quiet_since = Clock::now();
  while (true) {
    auto got = s.receive(1s);
    if (!got) {
      std::cerr << "pipe_bench trainer: " << got.error().message << "\n";
      return 4;
    }
    if (!*got) {
      if (Clock::now() - quiet_since > io_bound) {
        std::cerr << "pipe_bench trainer: nothing from the job for " << io_bound.count() << " s\n";
        return 4;
      }
      continue;
    }
    quiet_since = Clock::now();
    const auto& msg = **got;
    if (msg.op == Op::shutdown) {
      break;
    }
    messages++;
    held += msg.payload.size();
    if (msg.op == Op::log && spec.kind == Kind::latency) {
      if (auto posted = s.post(Op::log, msg.topic, {}, answer, msg.msg_id); !posted) {
        std::cerr << "pipe_bench trainer: " << posted.error().message << "\n";
        return 4;
      }
    }
  }
  s.close();
  const std::uint64_t expected = spec.warmup + spec.iterations;
  const std::uint64_t bytes = held + streamed.load();
  if (messages != expected || bytes != expected * spec.size) {
    std::cerr << "pipe_bench trainer: expected " << expected << " messages of " << spec.size << " bytes, got "
              << messages << " messages and " << bytes << " bytes\n";
    return 5;
  }
  return 0;
}

}  // namespace ember::bench
