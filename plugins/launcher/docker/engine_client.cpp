#include "engine_client.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <optional>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

namespace ember::docker_launcher {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using Local = asio::local::stream_protocol;
using Clock = EngineClient::Clock;
using boost::system::error_code;

// How often a waiting call looks at its cancel check: a stop cuts a wait within this.
constexpr auto slice = std::chrono::milliseconds(100);
// The largest answer call() keeps; the engine's answers to the launcher are a few KiB.
constexpr std::size_t max_body = 16 * 1024 * 1024;

// One request on one connection. Each step starts one asynchronous operation and drives the io_context
// until it completes, the deadline passes or the cancel check fires (then the socket is closed, which ends
// the operation at once).
class Exchange {
 public:
  Exchange(const std::string& path, Clock::time_point deadline, const EngineClient::Cancelled& cancelled)
      : path_(path), deadline_(deadline), cancelled_(cancelled) {}

  Result<EngineReply> run(std::string_view method, std::string_view target, std::string_view body,
                          const std::function<void(std::string_view)>* on_data) {
    std::string what = std::string(method) + " " + std::string(target);
    Local::endpoint endpoint;
    try {
      endpoint = Local::endpoint(path_);
    } catch (const std::exception& e) {
      return fail(Errc::invalid_option, "the engine socket path '" + path_ + "' cannot be used: " + e.what());
    }
    error_code ec;
    socket_.async_connect(endpoint, [&](error_code got) { complete(ec, got); });
    if (auto done = drive(what); !done) {
      return fail(std::move(done.error()));
    }
    if (ec) {
      return fail(Errc::peer_gone, "cannot reach the container engine at '" + path_ + "': " + ec.message() +
                                       " (is it running?)");
    }

    http::verb verb = http::string_to_verb(std::string(method));
    http::request<http::string_body> request{verb, "/v" + std::string(api_version) + std::string(target), 11};
    request.set(http::field::host, "docker");
    request.set(http::field::user_agent, "ember-launcher-docker");
    if (!body.empty()) {
      request.set(http::field::content_type, "application/json");
      request.body() = std::string(body);
    }
    request.prepare_payload();
    http::async_write(socket_, request, [&](error_code got, std::size_t) { complete(ec, got); });
    if (auto done = drive(what); !done) {
      return fail(std::move(done.error()));
    }
    if (ec) {
      return fail(Errc::io_error, "the container engine at '" + path_ + "' closed the connection while '" +
                                      what + "' was sent: " + ec.message());
    }

    beast::flat_buffer buffer;
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    http::async_read_header(socket_, buffer, parser, [&](error_code got, std::size_t) { complete(ec, got); });
    if (auto done = drive(what); !done) {
      return fail(std::move(done.error()));
    }
    if (ec) {
      return fail(Errc::malformed,
                  "no valid HTTP answer from the container engine to '" + what + "': " + ec.message());
    }
    EngineReply reply;
    reply.status = parser.get().result_int();
    if (auto header = parser.get().find("Api-Version"); header != parser.get().end()) {
      reply.api_version = std::string(header->value());
    }
    const bool streamed = on_data != nullptr && reply.ok();
    std::array<char, 16 * 1024> chunk{};
    while (!parser.is_done()) {
      parser.get().body().data = chunk.data();
      parser.get().body().size = chunk.size();
      http::async_read(socket_, buffer, parser, [&](error_code got, std::size_t) { complete(ec, got); });
      if (auto done = drive(what); !done) {
        return fail(std::move(done.error()));
      }
      if (ec == http::error::need_buffer) {
        ec = {};
      }
      if (ec) {
        return fail(Errc::io_error,
                    "the answer of the container engine to '" + what + "' broke off: " + ec.message());
      }
      std::string_view got(chunk.data(), chunk.size() - parser.get().body().size);
      if (streamed) {
        (*on_data)(got);
      } else if (reply.body.size() + got.size() > max_body) {
        return fail(Errc::malformed, "the answer of the container engine to '" + what + "' is over 16 MiB");
      } else {
        reply.body.append(got);
      }
    }
    return reply;
  }

 private:
  // The completion handler of every step: keeps the step's error code and marks it done.
  void complete(error_code& into, error_code got) {
    into = got;
    done_ = true;
  }

  // Runs the io_context until the outstanding step has completed (a composed operation such as a read runs
  // several handlers of its own first), or ends the step at the deadline or on a cancel.
  Result<void> drive(const std::string& what) {
    while (true) {
      if (ioc_.stopped()) {
        ioc_.restart();
      }
      ioc_.poll();
      if (done_) {
        done_ = false;
        return ok();
      }
      if (cancelled_ && cancelled_()) {
        abort();
        return fail(Errc::cancelled, "'" + what + "' to the container engine was cut by a stop");
      }
      auto now = Clock::now();
      if (now >= deadline_) {
        abort();
        return fail(Errc::timeout,
                    "the container engine at '" + path_ + "' did not answer '" + what + "' in time");
      }
      auto wait = std::min<Clock::duration>(deadline_ - now, slice);
      ioc_.run_one_for(std::chrono::duration_cast<std::chrono::milliseconds>(wait) +
                       std::chrono::milliseconds(1));
    }
  }

  // Closes the socket, which completes the outstanding operation with an error, and runs its handler so
  // nothing refers to this frame afterwards.
  void abort() {
    error_code ignored;
    socket_.close(ignored);
    if (ioc_.stopped()) {
      ioc_.restart();
    }
    ioc_.run();
    done_ = false;
  }

  const std::string& path_;
  Clock::time_point deadline_;
  const EngineClient::Cancelled& cancelled_;
  asio::io_context ioc_{1};
  Local::socket socket_{ioc_};
  bool done_ = false;
};

}  // namespace

std::string EngineReply::message() const {
  auto parsed = nlohmann::json::parse(body, nullptr, false);
  if (parsed.is_object() && parsed.contains("message") && parsed["message"].is_string()) {
    return parsed["message"].get<std::string>();
  }
  std::string text = body.substr(0, 500);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
    text.pop_back();
  }
  return text.empty() ? "HTTP status " + std::to_string(status) : text;
}

Result<EngineReply> EngineClient::call(std::string_view method, std::string_view target,
                                       std::string_view body, Clock::time_point deadline,
                                       const Cancelled& cancelled) const {
  try {
    Exchange exchange(socket_path_, deadline, cancelled);
    return exchange.run(method, target, body, nullptr);
  } catch (const std::exception& e) {
    return fail(Errc::io_error,
                "a request to the container engine at '" + socket_path_ + "' failed: " + e.what());
  }
}

Result<EngineReply> EngineClient::stream(std::string_view method, std::string_view target,
                                         std::string_view body,
                                         const std::function<void(std::string_view)>& on_data,
                                         Clock::time_point deadline, const Cancelled& cancelled) const {
  try {
    Exchange exchange(socket_path_, deadline, cancelled);
    return exchange.run(method, target, body, &on_data);
  } catch (const std::exception& e) {
    return fail(Errc::io_error,
                "a request to the container engine at '" + socket_path_ + "' failed: " + e.what());
  }
}

}  // namespace ember::docker_launcher
