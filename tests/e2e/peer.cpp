// ember-test-peer: a scripted trainer for end-to-end and fault-injection tests, and the far end of the pipe
// benchmarks. It opens the trainer end of a pipe in its own process, says HELLO with the token from a file,
// and then behaves as --mode says:
//   echo        answer each TASK_READY with TASK_ACCEPTED and a RESULT_READY whose headers carry the task
//               payload's size and CRC-32C, and whose payload is --reply-bytes of pattern 2
//   die         like echo, but SIGKILL itself once --kill-after bytes of a task have arrived
//   hang        stop itself (SIGSTOP) when a LOG with topic "hang" arrives: alive, silent
//   wrong-token say HELLO with a wrong token and report what happened
//   pong        answer every LOG with a LOG (latency benchmark)
//   sink        count what arrives (throughput benchmark)
// Exit codes: 0 after a SHUTDOWN, 2 usage, 3 handshake failed, 4 session failed.

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>

#include "kernel.hpp"
#include "pattern.hpp"
#include "session/session.hpp"

using namespace ember;
using namespace std::chrono_literals;

namespace {

std::map<std::string, std::string> parse_args(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0) {
      break;
    }
    args[key.substr(2)] = argv[i + 1];
  }
  return args;
}

std::string arg(const std::map<std::string, std::string>& args, const std::string& key,
                std::string fallback = {}) {
  auto it = args.find(key);
  return it == args.end() ? fallback : it->second;
}

}  // namespace

int main(int argc, char** argv) {
  auto args = parse_args(argc, argv);
  for (const char* required : {"plugins", "pipe", "address", "token-file", "mode"}) {
    if (!args.count(required)) {
      std::cerr << "ember-test-peer: missing --" << required << "\n";
      return 2;
    }
  }
  std::string mode = arg(args, "mode");
  std::string token;
  std::ifstream(arg(args, "token-file")) >> token;
  if (mode == "wrong-token") {
    token += "-not";
  }

  kernel::KernelSettings ks;
  ks.plugin_paths = {arg(args, "plugins")};
  ks.use_default_paths = false;
  ks.use_env_path = false;
  ks.log.level = LogLevel::warn;
  kernel::Kernel kernel(ks);
  kernel.load_plugins();
  Options options;
  options.set("address", arg(args, "address"));
  auto pipe = kernel.registry().create_as<Pipe>(arg(args, "pipe"), options, "peer");
  if (!pipe) {
    std::cerr << "ember-test-peer: " << pipe.error().message << "\n";
    return 2;
  }
  auto end = (*pipe)->open(PipeSide::trainer, 10s);
  if (!end) {
    std::cerr << "ember-test-peer: " << end.error().message << "\n";
    return 3;
  }
  session::Settings settings;
  settings.heartbeat_interval = std::chrono::milliseconds(std::stoll(arg(args, "hb-interval", "200")));
  settings.heartbeat_timeout = std::chrono::milliseconds(std::stoll(arg(args, "hb-timeout", "3000")));
  settings.launch = 10s;
  session::Session session(session::Role::trainer, std::move(*end), settings, kernel.logs().get("peer"));

  std::uint64_t kill_after = std::stoull(arg(args, "kill-after", "0"));
  // Large task payloads stream into a sink that keeps only their CRC-32C and size (and, in "die" mode,
  // kills this process part-way through).
  std::uint32_t last_crc = 0;
  std::uint64_t last_bytes = 0;
  session.set_sink_factory([&](const session::Message&) -> std::unique_ptr<session::PayloadSink> {
    struct Forward final : session::PayloadSink {
      Forward(std::uint32_t& c, std::uint64_t& b, const std::string& m, std::uint64_t k)
          : crc(c), bytes(b), mode_(m), kill(k) {}
      Result<void> write(std::uint64_t, std::span<const std::byte> data) override {
        crc = wire::crc32c(crc, data);
        bytes += data.size();
        if (mode_ == "die" && bytes >= kill) {
          raise(SIGKILL);
        }
        return ok();
      }
      void reset() override { crc = 0, bytes = 0; }
      Result<void> finish() override { return ok(); }
      std::uint32_t& crc;
      std::uint64_t& bytes;
      const std::string& mode_;
      std::uint64_t kill;
    };
    last_crc = 0;
    last_bytes = 0;
    return std::make_unique<Forward>(last_crc, last_bytes, mode, kill_after);
  });

  auto hello = session.hello(token, {{"converters", "wire"}, {"pid", std::to_string(getpid())}});
  if (!hello) {
    std::cerr << "ember-test-peer: " << hello.error().message << "\n";
    return 3;
  }
  std::uint64_t reply_bytes = std::stoull(arg(args, "reply-bytes", "0"));
  while (true) {
    auto got = session.receive(1s);
    if (!got) {
      std::cerr << "ember-test-peer: " << got.error().message << "\n";
      return got.error().code == Errc::closed ? 0 : 4;
    }
    if (!*got) {
      continue;
    }
    const auto& msg = **got;
    if (msg.op == wire::Op::shutdown) {
      session.close();
      return 0;
    }
    if (msg.op == wire::Op::log && mode == "hang" && msg.topic == "hang") {
      raise(SIGSTOP);
    }
    if (msg.op == wire::Op::log && mode == "pong") {
      (void)session.post(wire::Op::log, msg.topic, {}, nullptr, msg.msg_id);
      continue;
    }
    if (msg.op != wire::Op::task_ready) {
      continue;
    }
    // A payload held in memory (small tasks) is digested here; a streamed one was digested by the sink.
    std::uint32_t crc = msg.payload.empty() ? last_crc : wire::crc32c(0, msg.payload);
    std::uint64_t bytes = msg.payload.empty() ? last_bytes : msg.payload.size();
    if (msg.payload_size == 0) {
      crc = 0;
      bytes = 0;
    }
    if (!session.send(wire::Op::task_accepted, msg.topic, {}, nullptr, msg.msg_id)) {
      return 4;
    }
    if (mode == "sink") {
      continue;
    }
    auto sent = session.send(wire::Op::result_ready, msg.topic,
                             {{"bytes", std::to_string(bytes)}, {"crc", std::to_string(crc)}},
                             std::make_shared<test::PatternSource>(reply_bytes, 2), msg.msg_id);
    if (!sent) {
      std::cerr << "ember-test-peer: " << sent.error().message << "\n";
      return 4;
    }
  }
}
