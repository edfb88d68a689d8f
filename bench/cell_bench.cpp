// cell_bench: the cell network (kernel/cell) beside raw gRPC doing the same work in the same run (issue #14).
//
//   cell_bench --cell-node PATH [--runs N] [--json FILE] [--no-tls] [--no-rss] [--quick] [--small-only]
//   [--side cell|raw]
//
// In this process, for clear text and for mutual TLS (a CA and certificates written with kernel/provision
// into a temporary folder):
//   throughput  1 MiB, 100 MiB and 1 GiB messages, server -> site (one hop: a request to the site's "sink"
//               topic, whose payload streams into a sink that counts it, timed until its small reply; and
//               the same to "gather", a handler given the whole payload) and server -> job through the
//               site (two hops); beside a raw gRPC bidi stream of the cell's own proto (Cell.Connect,
//               Packet{bytes frame}) carrying the same bytes in 4 MiB packets the same way, from the stream's
//               server to its client (as a site dials the server), each message asked for by one small
//               packet, directly (one hop) and through a relay service that forwards packets as they come
//               (two hops); and, shown beside, the other way (client to server, to a sink that acknowledges
//               each whole message);
//   round trip  a 16-byte request answered with 16 bytes, server <-> site, beside a raw ping-pong of one
//               16-byte packet each way on a bidi stream;
//   rate        16-byte notifies server -> site back to back, timed until the site's handler has seen the
//               last one, beside raw one-way writes of 16-byte packets timed until the sink's acknowledgement
//               of the last.
// Raw channels and servers get the cell's channel arguments (message cap, keepalive, a local subchannel pool)
// and its credentials. The runs go round cell and raw in turn, so a slow moment of the shared machine falls
// on both; each figure is the median over all timed messages of all runs.
//
// Then, across processes (cell_node, one cell per process): a server, a site and a job; the server sends
// 1 GiB to the job through the site, and the peak resident memory (VmHWM) of each is read while they still
// run; the site's is the figure (it must never hold the message whole).
//
// Prints a table; --json writes every figure for bench/write_benchmarks_md.py.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <nlohmann/json.hpp>

#include "cell.grpc.pb.h"
#include "cell/cell.hpp"
#include "provision/certs.hpp"
#include "provision/files.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
namespace v1 = ember::cell::v1;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using ember::cell::Cell;
using nlohmann::json;

constexpr std::uint64_t KiB = 1024, MiB = KiB * 1024, GiB = MiB * 1024;
constexpr std::size_t raw_packet = 4 * MiB;  // the cell's default packet cap
constexpr auto big_timeout = 600s;

[[noreturn]] void die(const std::string& what) {
  throw std::runtime_error(what);
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double median(std::vector<double> v) {
  if (v.empty()) {
    return 0;
  }
  std::sort(v.begin(), v.end());
  auto n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) {
    return 0;
  }
  std::sort(v.begin(), v.end());
  auto rank = static_cast<std::size_t>(p * static_cast<double>(v.size()));
  return v[std::min(rank, v.size() - 1)];
}

std::string size_name(std::uint64_t bytes) {
  if (bytes >= GiB) {
    return std::to_string(bytes / GiB) + " GiB";
  }
  if (bytes >= MiB) {
    return std::to_string(bytes / MiB) + " MiB";
  }
  return std::to_string(bytes) + " B";
}

class QuietLogger final : public ember::Logger {
 public:
  void log(ember::LogLevel level, std::string_view message) noexcept override {
    if (level >= ember::LogLevel::error) {
      std::cerr << "cell_bench: " << message << "\n";
    }
  }
  bool enabled(ember::LogLevel level) const noexcept override { return level >= ember::LogLevel::error; }
  std::string_view name() const noexcept override { return "cell_bench"; }
};

// --- Kits: a CA, a server and a site certificate, written as `ember provision` writes them
// -------------------

struct Kits {
  fs::path dir;

  explicit Kits(fs::path folder) : dir(std::move(folder)) {
    if (!ember::provision::make_dir(dir, 0700)) {
      die("cannot make " + dir.string());
    }
    auto now = ember::provision::Clock::now();
    auto ca = ember::provision::make_ca("cell_bench CA", 2);
    if (!ca) {
      die("make_ca: " + ca.error().message);
    }
    write("server", *ca,
          ember::provision::issue(*ca, "server", ember::provision::Role::server, {"localhost", "127.0.0.1"},
                                  now - 1h, now + 48h));
    write("site-1", *ca,
          ember::provision::issue(*ca, "site-1", ember::provision::Role::site, {}, now - 1h, now + 48h));
  }
  void write(const std::string& name, const ember::provision::Credentials& ca,
             const ember::Result<ember::provision::Credentials>& own) {
    if (!own) {
      die("issue " + name + ": " + own.error().message);
    }
    auto folder = dir / name;
    bool ok = ember::provision::make_dir(folder, 0700) &&
              ember::provision::write_file_atomic(folder / "ca.crt", ca.cert_pem, 0644) &&
              ember::provision::write_file_atomic(folder / "cert.crt", own->cert_pem, 0644) &&
              ember::provision::write_file_atomic(folder / "cert.key", own->key_pem, 0600);
    if (!ok) {
      die("cannot write the kit " + folder.string());
    }
  }
  ember::cell::TlsFiles files(const std::string& name) const {
    return {dir / name / "ca.crt", dir / name / "cert.crt", dir / name / "cert.key"};
  }
  static std::string read(const fs::path& file) {
    std::ifstream in(file);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
};

// --- Raw gRPC: the cell's proto and channel arguments, nothing else
// -----------------------------------------

// The first packet of a stream says what the stream is: "S<bytes>" a sink of messages of that many bytes
// (each acknowledged by a one-byte packet once whole), "G<bytes>" the same but gathering each message into
// one buffer reserved whole and freed after it (what a cell's receiver does, so that the cell's extra cost
// beyond that shows), "E" an echo of every packet, "C<n>" a counter acknowledging every n-th packet,
// "R<bytes>" the other way round: each packet the client sends asks for a message of that many bytes, which
// the server writes in 4 MiB packets (from the same buffer the cell sends from) for the client to count.
class RawSink final : public v1::Cell::Service {
 public:
  explicit RawSink(std::span<const std::byte> source) : source_(source) {}
  grpc::Status Connect(grpc::ServerContext*,
                       grpc::ServerReaderWriter<v1::Packet, v1::Packet>* stream) override {
    v1::Packet in;
    if (!stream->Read(&in) || in.frame().empty()) {
      return grpc::Status::OK;
    }
    const char kind = in.frame()[0];
    const std::uint64_t arg = in.frame().size() > 1 ? std::stoull(in.frame().substr(1)) : 0;
    if (kind == 'R') {
      v1::Packet out;
      while (stream->Read(&in)) {
        for (std::uint64_t at = 0; at < arg; at += raw_packet) {
          auto n = std::min<std::uint64_t>(raw_packet, arg - at);
          out.set_frame(reinterpret_cast<const char*>(source_.data() + at), n);
          if (!stream->Write(out)) {
            return grpc::Status::OK;
          }
        }
      }
      return grpc::Status::OK;
    }
    v1::Packet ack;
    ack.set_frame("A");
    std::uint64_t got = 0;
    std::vector<char> whole;
    while (stream->Read(&in)) {
      if (kind == 'G') {
        if (whole.capacity() == 0) {
          whole.reserve(arg);
        }
        whole.insert(whole.end(), in.frame().begin(), in.frame().end());
      }
      if (kind == 'E') {
        if (!stream->Write(in)) {
          break;
        }
        continue;
      }
      got += kind == 'S' || kind == 'G' ? in.frame().size() : 1;
      if (got >= arg) {
        got -= arg;
        std::vector<char>().swap(whole);
        if (!stream->Write(ack)) {
          break;
        }
      }
    }
    return grpc::Status::OK;
  }

 private:
  std::span<const std::byte> source_;
};

struct RawSettings {
  bool tls = false;
  Kits* kits = nullptr;
};

// The cell's channel arguments (transport.cpp), with the defaults of cell::Config.
void cell_channel_args(grpc::ChannelArguments& args) {
  args.SetMaxReceiveMessageSize(static_cast<int>(raw_packet + 4096));
  args.SetMaxSendMessageSize(static_cast<int>(raw_packet + 4096));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
}

std::shared_ptr<grpc::Channel> raw_channel(const std::string& address, const RawSettings& s) {
  grpc::ChannelArguments args;
  cell_channel_args(args);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (s.tls) {
    auto files = s.kits->files("site-1");
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = Kits::read(files.ca);
    options.pem_private_key = Kits::read(files.key);
    options.pem_cert_chain = Kits::read(files.cert);
    credentials = grpc::SslCredentials(options);
    args.SetSslTargetNameOverride("server");
  }
  return grpc::CreateCustomChannel(address, credentials, args);
}

// Forwards every packet of a stream to a stream of its own to `target`, and every packet back, as they come.
class RawRelay final : public v1::Cell::Service {
 public:
  explicit RawRelay(std::shared_ptr<grpc::Channel> target) : stub_(v1::Cell::NewStub(target)) {}
  grpc::Status Connect(grpc::ServerContext*, grpc::ServerReaderWriter<v1::Packet, v1::Packet>* up) override {
    grpc::ClientContext context;
    auto down = stub_->Connect(&context);
    std::thread back([&] {
      v1::Packet p;
      while (down->Read(&p)) {
        if (!up->Write(p)) {
          break;
        }
      }
    });
    v1::Packet p;
    while (up->Read(&p)) {
      if (!down->Write(p)) {
        break;
      }
    }
    down->WritesDone();
    back.join();  // the sink ends its side once it has read everything: the last acknowledgements come first
    (void)down->Finish();
    return grpc::Status::OK;
  }

 private:
  std::unique_ptr<v1::Cell::Stub> stub_;
};

class RawServer {
 public:
  RawServer(std::unique_ptr<grpc::Service> service, const RawSettings& s) : service_(std::move(service)) {
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (s.tls) {
      auto files = s.kits->files("server");
      grpc::SslServerCredentialsOptions options(
          GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
      options.pem_root_certs = Kits::read(files.ca);
      options.pem_key_cert_pairs.push_back({Kits::read(files.key), Kits::read(files.cert)});
      credentials = grpc::SslServerCredentials(options);
    }
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port);
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(static_cast<int>(raw_packet + 4096));
    builder.SetMaxSendMessageSize(static_cast<int>(raw_packet + 4096));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
    server_ = builder.BuildAndStart();
    if (!server_ || port == 0) {
      die("raw gRPC: cannot listen on 127.0.0.1");
    }
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  ~RawServer() { server_->Shutdown(std::chrono::system_clock::now() + 1s); }
  const std::string& address() const { return address_; }

 private:
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

// One client stream to a raw server, in one of the sink's modes.
class RawStream {
 public:
  RawStream(const std::shared_ptr<grpc::Channel>& channel, const std::string& mode)
      : stub_(v1::Cell::NewStub(channel)), stream_(stub_->Connect(&context_)) {
    v1::Packet p;
    p.set_frame(mode);
    if (!stream_->Write(p)) {
      die("raw gRPC: the stream did not open");
    }
  }
  ~RawStream() {
    stream_->WritesDone();
    context_.TryCancel();
    (void)stream_->Finish();
  }
  // `bytes` in packets of at most 4 MiB, then the sink's acknowledgement.
  void send(std::span<const std::byte> bytes) {
    for (std::size_t at = 0; at < bytes.size(); at += raw_packet) {
      auto n = std::min(raw_packet, bytes.size() - at);
      packet_.set_frame(reinterpret_cast<const char*>(bytes.data() + at), n);
      if (!stream_->Write(packet_)) {
        die("raw gRPC: write failed");
      }
    }
  }
  void write_small(std::string_view bytes) {
    packet_.set_frame(bytes.data(), bytes.size());
    if (!stream_->Write(packet_)) {
      die("raw gRPC: write failed");
    }
  }
  void await() {
    if (!stream_->Read(&reply_)) {
      die("raw gRPC: no acknowledgement");
    }
  }
  // On an "R" stream: asks for a message of `bytes` and counts its packets until it is all here.
  void fetch(std::uint64_t bytes) {
    write_small("G");
    for (std::uint64_t got = 0; got < bytes; got += reply_.frame().size()) {
      if (!stream_->Read(&reply_)) {
        die("raw gRPC: the message did not come");
      }
    }
  }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<v1::Cell::Stub> stub_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::Packet, v1::Packet>> stream_;
  v1::Packet packet_, reply_;
};

// --- The cell: a server, site-1 and the job site-1.J, in this process
// ---------------------------------------

using ember::cell::MessageSink;

// Counts the bytes of a message as they arrive and answers with the count.
class CountingSink final : public MessageSink {
 public:
  ember::Result<void> write(std::span<const std::byte> bytes) override {
    bytes_ += bytes.size();
    return ember::ok();
  }
  ember::cell::Reply finish(ember::cell::Message&) override {
    ember::cell::Reply r;
    r.message.headers = {{"bytes", std::to_string(bytes_)}};
    return r;
  }
  void cancel(const std::string&) noexcept override {}

 private:
  std::uint64_t bytes_ = 0;
};

struct Tree {
  std::unique_ptr<Cell> server, site, job;
  std::atomic<std::uint64_t> counted{0};
  std::mutex mutex;
  std::condition_variable counted_cv;

  Tree(bool tls, const Kits& kits) {
    auto log = std::make_shared<QuietLogger>();
    auto config = [&](const std::string& fqcn, const std::string& kit, const std::string& listen,
                      const std::string& parent, const std::string& parent_name) {
      ember::cell::Config c;
      c.fqcn = fqcn;
      c.listen = listen;
      c.parent = parent;
      c.parent_name = parent_name;
      c.insecure = !tls;
      if (tls) {
        c.tls = kits.files(kit);
      }
      return c;
    };
    server = start(config("server", "server", "127.0.0.1:0", "", ""), log);
    server->set_allowed_children({"site-1"});
    site = start(config("site-1", "site-1", "127.0.0.1:0", server->listen_address(), "server"), log);
    site->admit_job("J", "bench-token");
    auto jc = config("site-1.J", "site-1", "", site->listen_address(), "site-1");
    jc.token = "bench-token";
    job = start(jc, log);
    if (!site->wait_parent(10s) || !job->wait_parent(10s)) {
      die("the cell tree did not link: " + site->parent_error() + " " + job->parent_error());
    }
    for (auto* c : {site.get(), job.get()}) {
      // What a receiver that moves a payload on does (pipe.cell into reused buffers, a daemon to a file):
      // each frame's bytes as they arrive, counted like the raw sink's; the answer from the reader.
      c->handle_stream(
          "sink",
          [](const ember::cell::Message&, std::uint64_t) -> ember::Result<std::unique_ptr<MessageSink>> {
            return std::unique_ptr<MessageSink>(new CountingSink);
          },
          ember::cell::Dispatch::inline_reader);
      // A handler given the whole payload, as a gathering raw sink: not a target, shown beside it.
      c->handle("gather", [](const ember::cell::Message& m) {
        ember::cell::Reply r;
        r.message.headers = {{"bytes", std::to_string(m.payload.size())}};
        return r;
      });
      c->handle(
          "echo",
          [](ember::cell::Message& m) {
            ember::cell::Reply r;
            r.message.payload = std::move(m.payload);
            return r;
          },
          ember::cell::Dispatch::inline_reader);
    }
    site->handle(
        "count",
        [this](const ember::cell::Message&) {
          if (counted.fetch_add(1) + 1 >= target.load()) {
            std::lock_guard lock(mutex);
            counted_cv.notify_all();
          }
          return ember::cell::Reply();
        },
        ember::cell::Dispatch::inline_reader);
  }
  ~Tree() {
    for (auto* c : {job.get(), site.get(), server.get()}) {
      if (c != nullptr) {
        c->stop();
      }
    }
  }
  static std::unique_ptr<Cell> start(ember::cell::Config c, std::shared_ptr<QuietLogger> log) {
    auto name = c.fqcn;
    auto started = Cell::start(std::move(c), std::move(log));
    if (!started) {
      die("cell " + name + ": " + started.error().message);
    }
    return std::move(*started);
  }
  void send(const std::string& to, std::span<const std::byte> bytes, const char* topic = "sink") {
    auto r = server->request(to, topic, {}, bytes,
                             std::chrono::duration_cast<std::chrono::milliseconds>(big_timeout));
    const auto* got = r.message.header("bytes");
    if (!r.ok() || got == nullptr || *got != std::to_string(bytes.size())) {
      die("cell: sending " + std::to_string(bytes.size()) + " bytes to " + to + ": " +
          std::string(ember::cell::to_string(r.rc)) + " " + r.reason);
    }
  }
  std::atomic<std::uint64_t> target{~0ull};
};

// --- Measurements
// -------------------------------------------------------------------------------------------

struct Options {
  fs::path cell_node;
  int runs = 3;
  fs::path json_file;
  bool tls = true;
  bool rss = true;
  bool quick = false;
  bool small_only = false;  // --small-only: only the round trip and the rate (for `perf record`)
  bool cell = true;         // --side cell: only the cell's cases (for `perf record`)
  bool raw = true;          // --side raw: only the raw baselines
};

struct Series {
  // raw: the stream's server writes to its client, as the cell's server writes to a site that dialed it;
  // up: the client writes to the server (the baseline of runs before 2026-12-07 16:50, shown beside it);
  // gather: up, into one buffer per message; whole: the cell with a whole-message handler.
  std::vector<double> cell, raw, gather, whole, up;
  // CPU seconds of this process, all threads.
  double cell_cpu = 0, raw_cpu = 0, gather_cpu = 0, whole_cpu = 0, up_cpu = 0;
  std::uint64_t up_bytes = 0;
  std::uint64_t cell_bytes = 0, raw_bytes = 0, gather_bytes = 0, whole_bytes = 0;
};

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double per_gib(double cpu, std::uint64_t bytes) {
  return bytes == 0 ? 0 : cpu * static_cast<double>(GiB) / static_cast<double>(bytes);
}

json throughput_case(bool tls, int hops, std::uint64_t size, const Series& s) {
  double c = median(s.cell), r = median(s.raw);
  double cell_mb = static_cast<double>(size) / c / 1e6, raw_mb = static_cast<double>(size) / r / 1e6;
  std::printf(
      "%-5s %d hop%s %8s   cell %8.1f MB/s   raw %8.1f MB/s   cell/raw %5.1f %%   (raw client->server %8.1f "
      "MB/s, whole-message cell %8.1f "
      "MB/s, gathering raw %8.1f MB/s; CPU s/GiB cell %.2f raw %.2f whole %.2f gathering %.2f)\n",
      tls ? "TLS" : "clear", hops, hops == 1 ? " " : "s", size_name(size).c_str(), cell_mb, raw_mb,
      100.0 * cell_mb / raw_mb, static_cast<double>(size) / median(s.up) / 1e6,
      static_cast<double>(size) / median(s.whole) / 1e6, static_cast<double>(size) / median(s.gather) / 1e6,
      per_gib(s.cell_cpu, s.cell_bytes), per_gib(s.raw_cpu, s.raw_bytes), per_gib(s.whole_cpu, s.whole_bytes),
      per_gib(s.gather_cpu, s.gather_bytes));
  std::fflush(stdout);
  return {{"tls", tls},
          {"hops", hops},
          {"size", size},
          {"cell_s", c},
          {"raw_s", r},
          {"cell_mb_per_s", cell_mb},
          {"raw_mb_per_s", raw_mb},
          {"share", cell_mb / raw_mb},
          {"gather_s", median(s.gather)},
          {"up_s", median(s.up)},
          {"up_mb_per_s", static_cast<double>(size) / median(s.up) / 1e6},
          {"up_cpu_s_per_gib", per_gib(s.up_cpu, s.up_bytes)},
          {"up_samples", s.up},
          {"whole_s", median(s.whole)},
          {"whole_mb_per_s", static_cast<double>(size) / median(s.whole) / 1e6},
          {"whole_cpu_s_per_gib", per_gib(s.whole_cpu, s.whole_bytes)},
          {"whole_samples", s.whole},
          {"gather_mb_per_s", static_cast<double>(size) / median(s.gather) / 1e6},
          {"cell_cpu_s_per_gib", per_gib(s.cell_cpu, s.cell_bytes)},
          {"raw_cpu_s_per_gib", per_gib(s.raw_cpu, s.raw_bytes)},
          {"gather_cpu_s_per_gib", per_gib(s.gather_cpu, s.gather_bytes)},
          {"cell_samples", s.cell},
          {"raw_samples", s.raw},
          {"gather_samples", s.gather}};
}

void measure_mode(bool tls, Kits& kits, const Options& o, const std::vector<std::byte>& buffer, json& out) {
  Tree tree(tls, kits);
  RawSettings rs{tls, &kits};
  RawServer sink(std::make_unique<RawSink>(buffer), rs);
  RawServer relay(std::make_unique<RawRelay>(raw_channel(sink.address(), rs)), rs);
  auto direct = raw_channel(sink.address(), rs);
  auto relayed = raw_channel(relay.address(), rs);

  struct Size {
    std::uint64_t bytes;
    int warmup, iterations;
  };
  std::vector<Size> sizes = {{MiB, 5, 30}, {100 * MiB, 1, 3}, {GiB, 0, 1}};
  if (o.quick) {
    sizes = {{MiB, 2, 10}, {100 * MiB, 0, 1}};
  }
  if (o.small_only) {
    sizes.clear();
  }
  for (const auto& size : sizes) {
    for (int hops : {1, 2}) {
      Series s;
      std::span<const std::byte> payload(buffer.data(), size.bytes);
      for (int run = 0; run < o.runs; ++run) {
        const auto n = static_cast<std::uint64_t>(size.warmup + size.iterations);
        auto cell_series = [&](const char* topic, std::vector<double>& samples, double& cpu_total,
                               std::uint64_t& bytes) {
          double cpu = cpu_seconds();
          for (int i = 0; i < size.warmup + size.iterations; ++i) {
            auto t = Clock::now();
            tree.send(hops == 1 ? "site-1" : "site-1.J", payload, topic);
            if (i >= size.warmup) {
              samples.push_back(seconds_since(t));
            }
          }
          cpu_total += cpu_seconds() - cpu;
          bytes += n * size.bytes;
        };
        // Within a side too, the order turns from run to run.
        auto cell_run = [&] {
          if (run % 2 == 0) {
            cell_series("sink", s.cell, s.cell_cpu, s.cell_bytes);
          }
          cell_series("gather", s.whole, s.whole_cpu, s.whole_bytes);
          if (run % 2 == 1) {
            cell_series("sink", s.cell, s.cell_cpu, s.cell_bytes);
          }
        };
        auto raw_series = [&](char mode, std::vector<double>& samples, double& cpu_total,
                              std::uint64_t& bytes) {
          double cpu = cpu_seconds();
          RawStream stream(hops == 1 ? direct : relayed, mode + std::to_string(size.bytes));
          for (int i = 0; i < size.warmup + size.iterations; ++i) {
            auto t = Clock::now();
            if (mode == 'R') {
              stream.fetch(size.bytes);
            } else {
              stream.send(payload);
              stream.await();
            }
            if (i >= size.warmup) {
              samples.push_back(seconds_since(t));
            }
          }
          cpu_total += cpu_seconds() - cpu;
          bytes += n * size.bytes;
        };
        auto raw_run = [&] {
          if (run % 2 == 1) {
            raw_series('R', s.raw, s.raw_cpu, s.raw_bytes);
          }
          raw_series('S', s.up, s.up_cpu, s.up_bytes);
          raw_series('G', s.gather, s.gather_cpu, s.gather_bytes);
          if (run % 2 == 0) {
            raw_series('R', s.raw, s.raw_cpu, s.raw_bytes);
          }
        };
        // Alternate which goes first, so neither always follows the other's garbage.
        if (run % 2 == 0) {
          o.cell ? cell_run() : void();
          o.raw ? raw_run() : void();
        } else {
          o.raw ? raw_run() : void();
          o.cell ? cell_run() : void();
        }
      }
      out["throughput"].push_back(throughput_case(tls, hops, size.bytes, s));
    }
  }

  // Round trip of 16 bytes, server <-> site.
  const std::string small(16, 'x');
  std::span<const std::byte> small_bytes(reinterpret_cast<const std::byte*>(small.data()), small.size());
  const int rtt_warmup = 200, rtt_iterations = o.quick ? 500 : 2000;
  Series rtt;
  for (int run = 0; run < o.runs; ++run) {
    for (int i = 0; i < (o.cell ? rtt_warmup + rtt_iterations : 0); ++i) {
      auto t = Clock::now();
      auto r = tree.server->request("site-1", "echo", {}, small_bytes, 10s);
      if (!r.ok() || r.message.payload.size() != small.size()) {
        die("cell: echo failed: " + r.reason);
      }
      if (i >= rtt_warmup) {
        rtt.cell.push_back(seconds_since(t));
      }
    }
    RawStream echo(direct, "E");
    for (int i = 0; i < (o.raw ? rtt_warmup + rtt_iterations : 0); ++i) {
      auto t = Clock::now();
      echo.write_small(small);
      echo.await();
      if (i >= rtt_warmup) {
        rtt.raw.push_back(seconds_since(t));
      }
    }
  }
  json rtt_json = {{"tls", tls},
                   {"size", small.size()},
                   {"cell_median_us", median(rtt.cell) * 1e6},
                   {"cell_p99_us", percentile(rtt.cell, 0.99) * 1e6},
                   {"raw_median_us", median(rtt.raw) * 1e6},
                   {"raw_p99_us", percentile(rtt.raw, 0.99) * 1e6},
                   {"ratio", median(rtt.cell) / median(rtt.raw)},
                   {"samples_each", rtt.cell.size()}};
  std::printf("%-5s round trip 16 B   cell %7.1f us   raw %7.1f us   cell/raw %4.2fx\n",
              tls ? "TLS" : "clear", rtt_json["cell_median_us"].get<double>(),
              rtt_json["raw_median_us"].get<double>(), rtt_json["ratio"].get<double>());
  out["round_trip"].push_back(rtt_json);

  // One-way rate of 16-byte messages.
  const std::uint64_t n = o.quick ? 5000 : 20000;
  Series rate;
  for (int run = 0; run < o.runs; ++run) {
    if (o.cell) {
      tree.counted = 0;
      tree.target = n;
      auto t = Clock::now();
      for (std::uint64_t i = 0; i < n; ++i) {
        auto r = tree.server->notify("site-1", "count", {}, small_bytes, 10s);
        if (!r.ok()) {
          die("cell: notify failed: " + r.reason);
        }
      }
      {
        std::unique_lock lock(tree.mutex);
        if (!tree.counted_cv.wait_for(lock, 60s, [&] { return tree.counted.load() >= n; })) {
          die("cell: only " + std::to_string(tree.counted.load()) + " of " + std::to_string(n) +
              " notifies arrived");
        }
      }
      rate.cell.push_back(static_cast<double>(n) / seconds_since(t));
      tree.target = ~0ull;
    }
    if (o.raw) {
      RawStream counter(direct, "C" + std::to_string(n));
      auto t = Clock::now();
      for (std::uint64_t i = 0; i < n; ++i) {
        counter.write_small(small);
      }
      counter.await();
      rate.raw.push_back(static_cast<double>(n) / seconds_since(t));
    }
  }
  json rate_json = {{"tls", tls},
                    {"size", small.size()},
                    {"messages", n},
                    {"cell_msgs_per_s", median(rate.cell)},
                    {"raw_msgs_per_s", median(rate.raw)},
                    {"cell_runs", rate.cell},
                    {"raw_runs", rate.raw}};
  std::printf("%-5s one-way 16 B      cell %8.0f msg/s   raw %8.0f msg/s\n", tls ? "TLS" : "clear",
              median(rate.cell), median(rate.raw));
  std::fflush(stdout);
  out["rate"].push_back(rate_json);
}

// --- cell_node processes
// ------------------------------------------------------------------------------------

std::uint64_t status_kib(pid_t pid, const char* key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) == 0) {
      return std::stoull(line.substr(std::strlen(key) + 1));
    }
  }
  return 0;
}

class Node {
 public:
  Node(const std::vector<std::string>& argv, fs::path log) : log_(std::move(log)) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) {
      die("pipe failed");
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    // Its log (link events, the clear-text warning) goes to a file beside the kits, shown on failure.
    posix_spawn_file_actions_addopen(&actions, 2, log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    std::vector<char*> args;
    for (const auto& a : argv) {
      args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    int rc = posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(in[0]);
    ::close(out[1]);
    to_ = in[1];
    from_ = out[0];
    if (rc != 0) {
      pid_ = -1;
      die("cannot start " + argv[0] + ": " + std::strerror(rc));
    }
  }
  ~Node() {
    if (to_ >= 0) {
      ::close(to_);  // EOF on stdin: cell_node stops
    }
    if (pid_ > 0) {
      int status = 0;
      for (int i = 0; i < 50 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i) {
        std::this_thread::sleep_for(100ms);
        if (i == 30) {
          ::kill(pid_, SIGTERM);
        }
      }
      if (::waitpid(pid_, &status, WNOHANG) == 0) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
      }
    }
    ::close(from_);
  }
  pid_t pid() const { return pid_; }
  void say(const std::string& line) {
    std::string text = line + "\n";
    if (::write(to_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      die("cannot write to cell_node");
    }
  }
  // The first line that starts with `prefix`, waiting at most `timeout`.
  std::string expect(const std::string& prefix, std::chrono::seconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      for (auto nl = pending_.find('\n'); nl != std::string::npos; nl = pending_.find('\n')) {
        auto line = pending_.substr(0, nl);
        pending_.erase(0, nl + 1);
        if (line.rfind(prefix, 0) == 0) {
          return line;
        }
      }
      pollfd pfd{from_, POLLIN, 0};
      if (::poll(&pfd, 1, 200) > 0) {
        char buffer[4096];
        auto n = ::read(from_, buffer, sizeof buffer);
        if (n <= 0) {
          break;
        }
        pending_.append(buffer, static_cast<std::size_t>(n));
      }
    }
    die("cell_node " + std::to_string(pid_) + ": no '" + prefix + "' line within " +
        std::to_string(timeout.count()) + " s; its log:\n" + Kits::read(log_));
  }

 private:
  fs::path log_;
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  std::string pending_;
};

json measure_rss(bool tls, const Kits& kits, const Options& o, std::uint64_t size) {
  auto node = o.cell_node.string();
  auto security = [&](const std::string& kit, const std::string& parent_name) {
    std::vector<std::string> a;
    if (tls) {
      a = {"--kit", (kits.dir / kit).string()};
      if (!parent_name.empty()) {
        a.insert(a.end(), {"--parent-name", parent_name});
      }
    } else {
      a = {"--insecure"};
    }
    return a;
  };
  auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  Node server(with({node, "--fqcn", "server", "--listen", "127.0.0.1:0", "--allow", "site-1"},
                   security("server", "")),
              kits.dir / "server.log");
  auto server_address = server.expect("LISTEN ", 20s).substr(7);
  Node site(with({node, "--fqcn", "site-1", "--listen", "127.0.0.1:0", "--parent", server_address, "--admit",
                  "J=bench-token"},
                 security("site-1", "server")),
            kits.dir / "site.log");
  auto site_address = site.expect("LISTEN ", 20s).substr(7);
  site.expect("PARENT_UP", 20s);
  Node job(with({node, "--fqcn", "site-1.J", "--parent", site_address, "--token", "bench-token"},
                security("site-1", "site-1")),
           kits.dir / "job.log");
  job.expect("PARENT_UP", 20s);
  std::uint64_t site_idle = status_kib(site.pid(), "VmHWM:");
  auto t = Clock::now();
  server.say("request site-1.J sink " + std::to_string(size) + " " +
             std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(big_timeout).count()));
  auto reply = server.expect("REPLY ", std::chrono::duration_cast<std::chrono::seconds>(big_timeout) + 10s);
  double seconds = seconds_since(t);
  if (reply.find("rc=ok") == std::string::npos ||
      reply.find("bytes=" + std::to_string(size) + " ") == std::string::npos) {
    die("cell_node relay: " + reply);
  }
  json j = {{"tls", tls},
            {"size", size},
            {"seconds", seconds},
            {"site_idle_kib", site_idle},
            {"server_kib", status_kib(server.pid(), "VmHWM:")},
            {"site_kib", status_kib(site.pid(), "VmHWM:")},
            {"job_kib", status_kib(job.pid(), "VmHWM:")}};
  std::printf(
      "%-5s relay %s peak RSS: site %.1f MiB (%.1f MiB before), server %.1f MiB, job %.1f MiB (%.1f s)\n",
      tls ? "TLS" : "clear", size_name(size).c_str(), j["site_kib"].get<double>() / 1024.0,
      static_cast<double>(site_idle) / 1024.0, j["server_kib"].get<double>() / 1024.0,
      j["job_kib"].get<double>() / 1024.0, seconds);
  std::fflush(stdout);
  return j;
}

int usage() {
  std::cerr << "usage: cell_bench --cell-node PATH [--runs N] [--json FILE] [--no-tls] [--no-rss] [--quick] "
               "[--small-only] [--side cell|raw]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--no-tls") {
      o.tls = false;
    } else if (a == "--no-rss") {
      o.rss = false;
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--small-only") {
      o.small_only = true;
    } else if (i + 1 < args.size() && a == "--cell-node") {
      o.cell_node = args[++i];
    } else if (i + 1 < args.size() && a == "--side") {
      const auto& side = args[++i];
      o.cell = side != "raw";
      o.raw = side != "cell";
    } else if (i + 1 < args.size() && a == "--runs") {
      o.runs = std::max(1, std::atoi(args[++i].c_str()));
    } else if (i + 1 < args.size() && a == "--json") {
      o.json_file = args[++i];
    } else {
      return usage();
    }
  }
  if (o.rss && o.cell_node.empty()) {
    return usage();
  }
  ::signal(SIGPIPE, SIG_IGN);
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/ember-cell-bench.XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::cerr << "cell_bench: cannot make a temporary folder\n";
    return 1;
  }
  fs::path work = pattern;
  int rc = 0;
  try {
    Kits kits(work / "kits");
    json out = {{"runs", o.runs}, {"packet_bytes", raw_packet}};
    {
      // One buffer for every message, cell and raw alike: a pattern nothing on the way can shortcut.
      std::vector<std::byte> buffer(o.quick ? 100 * MiB : GiB);
      std::uint64_t x = 0x9E3779B97F4A7C15ull;
      for (std::size_t i = 0; i < buffer.size(); ++i) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        buffer[i] = static_cast<std::byte>(x >> 56);
      }
      std::printf("cell_bench: %d runs, cell and raw gRPC in turn\n", o.runs);
      std::vector<bool> modes = {false};
      if (o.tls) {
        modes.push_back(true);
      }
      for (bool tls : modes) {
        measure_mode(tls, kits, o, buffer, out);
      }
    }
    if (o.rss) {
      for (bool tls : {false, true}) {
        if (tls && !o.tls) {
          continue;
        }
        out["relay_rss"].push_back(measure_rss(tls, kits, o, o.quick ? 100 * MiB : GiB));
      }
    }
    if (!o.json_file.empty()) {
      std::ofstream file(o.json_file);
      file << out.dump(2) << "\n";
      if (!file) {
        die("cannot write " + o.json_file.string());
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "cell_bench: " << e.what() << "\n";
    rc = 1;
  }
  std::error_code ec;
  fs::remove_all(work, ec);
  return rc;
}
