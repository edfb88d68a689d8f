// cell_node: one cell of the network as a process of its own, for tests that put cells in other network
// namespaces and for benchmarks that measure one cell's memory. It prints link events on stdout, one line
// each, and takes commands on stdin:
//   request TO TOPIC BYTES [TIMEOUT_MS]  -> "REPLY rc=<rc> bytes=<n> crc=<crc32c> ms=<elapsed> reason=<text>"
//   notify TO TOPIC BYTES                -> "NOTIFIED rc=<rc>"
//   children                             -> "CHILD <fqcn> connected=<0|1> last_contact_ms=<age>" ..., "END"
//   parent                               -> "PARENT up|down <error>"
// It answers topic "echo" (the payload back) and "sink" (its size and CRC only, taken as the frames
// arrive: the node never holds a message it sinks). It ends at EOF on stdin,
// or on SIGTERM/SIGINT.
//
// cell_node --fqcn NAME [--listen HOST:PORT] [--parent HOST:PORT] [--parent-name NAME] [--kit DIR]
//           [--insecure] [--allow a,b,...] [--admit JOB=TOKEN] [--token TOKEN] [--keepalive-ms N]
//           [--keepalive-timeout-ms N] [--backoff-max-ms N] [--packet-bytes N]

#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "cell/cell.hpp"
#include "wire/crc32c.hpp"

namespace {

// The size and CRC32C of a payload, as its frames arrive.
class CrcSink final : public ember::cell::MessageSink {
 public:
  ember::Result<void> write(std::span<const std::byte> bytes) override {
    bytes_ += bytes.size();
    crc_ = ember::wire::crc32c(crc_, bytes);
    return ember::ok();
  }
  ember::cell::Reply finish(ember::cell::Message&) override {
    ember::cell::Reply r;
    r.message.headers = {{"bytes", std::to_string(bytes_)}, {"crc", std::to_string(crc_)}};
    return r;
  }
  void cancel(const std::string&) noexcept override {}

 private:
  std::uint64_t bytes_ = 0;
  std::uint32_t crc_ = 0;
};

using namespace ember;
using namespace std::chrono_literals;

std::mutex out_mutex;

void say(const std::string& line) {
  std::lock_guard lock(out_mutex);
  std::cout << line << std::endl;
}

class StderrLogger final : public Logger {
 public:
  void log(LogLevel level, std::string_view message) noexcept override {
    if (level >= LogLevel::info) {
      std::lock_guard lock(out_mutex);
      std::cerr << message << std::endl;
    }
  }
  bool enabled(LogLevel level) const noexcept override { return level >= LogLevel::info; }
  std::string_view name() const noexcept override { return "cell_node"; }
};

volatile std::sig_atomic_t stop_signal = 0;

void on_signal(int) {
  stop_signal = 1;
}

std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') {
      c = ' ';
    }
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  cell::Config config;
  config.insecure = false;
  std::string kit;
  std::vector<std::string> allow;
  std::vector<std::pair<std::string, std::string>> admit;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) {
        std::cerr << "cell_node: " << args[i] << " needs a value\n";
        std::exit(2);
      }
      return args[++i];
    };
    const auto& a = args[i];
    if (a == "--fqcn") {
      config.fqcn = value();
    } else if (a == "--listen") {
      config.listen = value();
    } else if (a == "--parent") {
      config.parent = value();
    } else if (a == "--parent-name") {
      config.parent_name = value();
    } else if (a == "--kit") {
      kit = value();
    } else if (a == "--insecure") {
      config.insecure = true;
    } else if (a == "--allow") {
      std::stringstream list(value());
      for (std::string name; std::getline(list, name, ',');) {
        allow.push_back(name);
      }
    } else if (a == "--admit") {
      auto v = value();
      auto eq = v.find('=');
      admit.emplace_back(v.substr(0, eq), eq == std::string::npos ? "" : v.substr(eq + 1));
    } else if (a == "--token") {
      config.token = value();
    } else if (a == "--keepalive-ms") {
      config.keepalive = std::chrono::milliseconds(std::stol(value()));
    } else if (a == "--keepalive-timeout-ms") {
      config.keepalive_timeout = std::chrono::milliseconds(std::stol(value()));
    } else if (a == "--backoff-max-ms") {
      config.backoff_max = std::chrono::milliseconds(std::stol(value()));
      config.backoff_initial = std::min(config.backoff_initial, config.backoff_max);
    } else if (a == "--packet-bytes") {
      config.packet_bytes = static_cast<std::uint32_t>(std::stoul(value()));
    } else {
      std::cerr << "cell_node: unknown argument " << a << "\n";
      return 2;
    }
  }
  if (!kit.empty()) {
    config.tls = cell::TlsFiles{kit + "/ca.crt", kit + "/cert.crt", kit + "/cert.key"};
  }
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  std::signal(SIGPIPE, SIG_IGN);
  auto observer = [](const cell::LinkEvent& e) {
    static const char* names[] = {"JOINED", "LEFT", "PARENT_UP", "PARENT_DOWN", "REFUSED"};
    say(std::string(names[static_cast<int>(e.kind)]) + " " + e.peer + " " + one_line(e.detail));
  };
  auto started = cell::Cell::start(config, std::make_shared<StderrLogger>(), observer);
  if (!started) {
    std::cerr << "cell_node: " << started.error().message << "\n";
    return 3;
  }
  auto& node = *started;
  if (!allow.empty()) {
    node->set_allowed_children(allow);
  }
  for (const auto& [job, token] : admit) {
    node->admit_job(job, token);
  }
  node->handle("echo", [](const cell::Message& m) {
    cell::Reply r;
    r.message.payload = m.payload;
    return r;
  });
  node->handle_stream(
      "sink", [](const cell::Message&, std::uint64_t) -> ember::Result<std::unique_ptr<cell::MessageSink>> {
        return std::unique_ptr<cell::MessageSink>(new CrcSink);
      });
  if (!config.listen.empty()) {
    say("LISTEN " + node->listen_address());
  }
  std::string line;
  std::string pending;
  while (!stop_signal) {
    pollfd pfd{0, POLLIN, 0};
    int ready = ::poll(&pfd, 1, 100);
    if (ready <= 0) {
      continue;
    }
    char buffer[4096];
    ssize_t n = ::read(0, buffer, sizeof buffer);
    if (n <= 0) {
      break;
    }
    pending.append(buffer, static_cast<std::size_t>(n));
    for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
      line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      std::istringstream in(line);
      std::string command, to, topic;
      std::uint64_t bytes = 0;
      long timeout_ms = 60000;
      in >> command;
      if (command == "request" || command == "notify") {
        in >> to >> topic >> bytes;
        if (!(in >> timeout_ms)) {
          timeout_ms = 60000;
        }
        std::vector<std::byte> payload(bytes);
        for (std::uint64_t i = 0; i < bytes; ++i) {
          payload[i] = static_cast<std::byte>(i * 131 + 7);
        }
        auto begin = std::chrono::steady_clock::now();
        if (command == "notify") {
          auto r = node->notify(to, topic, {}, payload, std::chrono::milliseconds(timeout_ms));
          say("NOTIFIED rc=" + std::string(cell::to_string(r.rc)));
          continue;
        }
        auto r = node->request(to, topic, {}, payload, std::chrono::milliseconds(timeout_ms));
        auto ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - begin);
        const auto* got_bytes = r.message.header("bytes");
        const auto* crc = r.message.header("crc");
        say("REPLY rc=" + std::string(cell::to_string(r.rc)) +
            " bytes=" + (got_bytes != nullptr ? *got_bytes : std::to_string(r.message.payload.size())) +
            " crc=" + (crc != nullptr ? *crc : std::to_string(wire::crc32c(0, r.message.payload))) +
            " sent_crc=" + std::to_string(wire::crc32c(0, payload)) + " ms=" + std::to_string(ms.count()) +
            " reason=" + one_line(r.reason));
      } else if (command == "children") {
        auto now = std::chrono::system_clock::now();
        for (const auto& c : node->children()) {
          auto age = std::chrono::duration_cast<std::chrono::milliseconds>(now - c.last_contact).count();
          say("CHILD " + c.fqcn + " connected=" + (c.connected ? "1" : "0") +
              " last_contact_ms=" + std::to_string(age));
        }
        say("END");
      } else if (command == "parent") {
        auto error = node->parent_error();
        say(std::string("PARENT ") + (error.empty() ? "up" : "down " + one_line(error)));
      } else if (!command.empty()) {
        say("ERROR unknown command " + command);
      }
    }
  }
  node->stop();
  return 0;
}
