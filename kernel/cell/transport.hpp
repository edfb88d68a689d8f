#pragma once
// The gRPC side of the cell network behind a small interface: a stream of packets (one frame each), a
// listener that hands each accepted stream to the cell, and a dialer. transport.cpp is the only file of the
// cell library that includes gRPC headers.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <ember/logger.hpp>
#include <ember/result.hpp>

namespace ember::cell {

/// PEM texts for mutual TLS.
struct TlsPem {
  std::string ca;
  std::string cert;
  std::string key;
};

/// Transport settings shared by listeners and dialers.
struct TransportSettings {
  std::optional<TlsPem> tls;   ///< nullopt: clear text
  std::size_t max_packet = 0;  ///< largest gRPC message accepted or sent
  std::chrono::milliseconds keepalive{10000};
  std::chrono::milliseconds keepalive_timeout{5000};
};

/// One bidirectional stream of packets. read() from one thread, write() from one other thread; cancel()
/// from any thread makes both return false promptly.
class Stream {
 public:
  virtual ~Stream() = default;
  /// The next packet's frame bytes; false at the end of the stream or on cancel.
  virtual bool read(std::string& frame) = 0;
  /// Writes one packet whole (waits for transport flow control); false once the stream is broken.
  /// `frame` is borrowed (swapped into the packet, not copied) and holds the same bytes again on return.
  virtual bool write(std::string& frame) = 0;
  virtual void cancel() noexcept = 0;
  /// Why the stream ended, once read() returned false ("UNAVAILABLE: ...").
  virtual std::string end_reason() = 0;
  /// The peer's address ("ipv4:127.0.0.1:40123").
  virtual std::string peer() const = 0;
  /// The certificate the peer presented (PEM), or empty on a clear-text link. A server does not verify a
  /// client's certificate in the handshake: the cell does, at the hello (verify_peer).
  virtual std::string peer_cert_pem() const = 0;
};

/// Called on a gRPC thread for each accepted stream; the stream lives until it returns.
using StreamHandler = std::function<void(Stream& stream)>;

/// A listening gRPC server for the cell service.
class Listener {
 public:
  virtual ~Listener() = default;
  /// "host:port" with the port actually bound.
  virtual std::string address() const = 0;
  /// Stops accepting, cancels live streams and waits at most `bound` for handlers to return.
  virtual void shutdown(std::chrono::milliseconds bound) noexcept = 0;
};

Result<std::unique_ptr<Listener>> listen(const std::string& address, const TransportSettings& settings,
                                         StreamHandler handler, std::shared_ptr<Logger> logger);

/// Opens a stream to `address`; `server_name` is the name the server's certificate must carry. The
/// connection itself is made by the first read or write (failing fast, with the reason in end_reason()).
Result<std::unique_ptr<Stream>> dial(const std::string& address, const std::string& server_name,
                                     const TransportSettings& settings);

/// Routes gRPC's own log lines (TLS handshake failures among them) into `logger` (the latest one given).
void route_grpc_log(std::shared_ptr<Logger> logger);

}  // namespace ember::cell
