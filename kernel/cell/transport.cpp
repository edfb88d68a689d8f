// The cell network's gRPC transport: the only translation unit of the cell library with gRPC headers.

#include "transport.hpp"

#include <atomic>
#include <mutex>
#include <thread>

#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include "cell.grpc.pb.h"

namespace ember::cell {
namespace {

namespace v1 = ember::cell::v1;
using std::chrono::milliseconds;

std::string status_text(const grpc::Status& status) {
  std::string text;
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return "closed by the peer";
    case grpc::StatusCode::CANCELLED:
      text = "CANCELLED";
      break;
    case grpc::StatusCode::UNAVAILABLE:
      text = "UNAVAILABLE";
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      text = "DEADLINE_EXCEEDED";
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      text = "RESOURCE_EXHAUSTED";
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      text = "UNAUTHENTICATED";
      break;
    case grpc::StatusCode::UNIMPLEMENTED:
      text = "UNIMPLEMENTED";
      break;
    default:
      text = "gRPC status " + std::to_string(static_cast<int>(status.error_code()));
      break;
  }
  if (!status.error_message().empty()) {
    text += ": " + status.error_message();
  }
  return text;
}

// The peer's certificate as PEM, as the handshake received it (verified by the cell, not by TLS).
std::string cert_pem_of(const std::shared_ptr<const grpc::AuthContext>& auth) {
  if (!auth) {
    return {};
  }
  auto values = auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (values.empty()) {
    return {};
  }
  return std::string(values.front().data(), values.front().size());
}

void keepalive_args(grpc::ChannelArguments& args, const TransportSettings& settings) {
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(settings.keepalive.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(settings.keepalive_timeout.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
}

// Reading and writing packets on a gRPC reader-writer (server or client side): frames are swapped in and
// out of the packets, never copied.
template <class ReaderWriter>
class PacketIo {
 public:
  bool read_packet(ReaderWriter& rw, std::string& frame) {
    if (!rw.Read(&in_)) {
      return false;
    }
    in_.mutable_frame()->swap(frame);
    return true;
  }
  bool write_packet(ReaderWriter& rw, std::string& frame) {
    std::lock_guard lock(write_mutex_);
    out_.mutable_frame()->swap(frame);
    bool written = rw.Write(out_);
    out_.mutable_frame()->swap(frame);
    return written;
  }

 private:
  v1::Packet in_;
  std::mutex write_mutex_;
  v1::Packet out_;
};

// A server-side stream: lives for the duration of one Connect call.
class ServerStream final : public Stream {
 public:
  ServerStream(grpc::ServerContext* context, grpc::ServerReaderWriter<v1::Packet, v1::Packet>* stream)
      : context_(context), stream_(stream), cert_pem_(cert_pem_of(context->auth_context())) {}

  bool read(std::string& frame) override { return io_.read_packet(*stream_, frame); }
  bool write(std::string& frame) override { return io_.write_packet(*stream_, frame); }
  void cancel() noexcept override { context_->TryCancel(); }
  std::string end_reason() override {
    return context_->IsCancelled()
               ? "the stream ended (the peer went away, or its link was silent past the keepalive)"
               : "closed by the peer";
  }
  std::string peer() const override { return context_->peer(); }
  std::string peer_cert_pem() const override { return cert_pem_; }

 private:
  grpc::ServerContext* context_;
  grpc::ServerReaderWriter<v1::Packet, v1::Packet>* stream_;
  std::string cert_pem_;
  PacketIo<grpc::ServerReaderWriter<v1::Packet, v1::Packet>> io_;
};

class Service final : public v1::Cell::Service {
 public:
  explicit Service(StreamHandler handler) : handler_(std::move(handler)) {}

  grpc::Status Connect(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<v1::Packet, v1::Packet>* stream) override {
    ServerStream wrapped(context, stream);
    try {
      handler_(wrapped);
    } catch (...) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "cell: the link handler failed");
    }
    return grpc::Status::OK;
  }

 private:
  StreamHandler handler_;
};

class GrpcListener final : public Listener {
 public:
  GrpcListener(std::unique_ptr<Service> service, std::unique_ptr<grpc::Server> server, std::string address)
      : service_(std::move(service)), server_(std::move(server)), address_(std::move(address)) {}
  ~GrpcListener() override { shutdown(milliseconds(1000)); }

  std::string address() const override { return address_; }

  void shutdown(milliseconds bound) noexcept override {
    if (done_.exchange(true)) {
      return;
    }
    server_->Shutdown(std::chrono::system_clock::now() + bound);
    server_->Wait();
  }

 private:
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  std::atomic<bool> done_{false};
};

class ClientStream final : public Stream {
 public:
  ClientStream(std::shared_ptr<grpc::Channel> channel, std::string address)
      : channel_(std::move(channel)), stub_(v1::Cell::NewStub(channel_)), address_(std::move(address)) {}
  ~ClientStream() override {
    cancel();
    finish();
  }

  // Starts the call; fails fast when the channel cannot connect (the reason is kept).
  // Initial metadata is corked: the call (and the connection) starts with the first write, which the
  // caller bounds by cancelling, instead of inside Connect(), where a black-holed network would hold it.
  void start() {
    context_.set_initial_metadata_corked(true);
    stream_ = stub_->Connect(&context_);
  }

  bool read(std::string& frame) override { return io_.read_packet(*stream_, frame); }
  bool write(std::string& frame) override { return io_.write_packet(*stream_, frame); }
  void cancel() noexcept override { context_.TryCancel(); }
  std::string end_reason() override { return finish(); }
  std::string peer() const override { return address_; }
  std::string peer_cert_pem() const override { return cert_pem_of(context_.auth_context()); }

 private:
  std::string finish() {
    std::lock_guard lock(finish_mutex_);
    if (!finished_ && stream_) {
      finished_ = true;
      reason_ = status_text(stream_->Finish());
    }
    return reason_;
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Cell::Stub> stub_;
  std::string address_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::Packet, v1::Packet>> stream_;
  PacketIo<grpc::ClientReaderWriter<v1::Packet, v1::Packet>> io_;
  std::mutex finish_mutex_;
  bool finished_ = false;
  std::string reason_;
};

std::mutex log_mutex;
std::shared_ptr<Logger> grpc_logger;

void grpc_log_sink(gpr_log_func_args* args) {
  std::shared_ptr<Logger> logger;
  {
    std::lock_guard lock(log_mutex);
    logger = grpc_logger;
  }
  if (!logger || args == nullptr || args->message == nullptr) {
    return;
  }
  auto level = args->severity == GPR_LOG_SEVERITY_ERROR  ? LogLevel::warn
               : args->severity == GPR_LOG_SEVERITY_INFO ? LogLevel::debug
                                                         : LogLevel::trace;
  if (logger->enabled(level)) {
    logger->log(level, std::string("gRPC: ") + args->message);
  }
}

}  // namespace

void route_grpc_log(std::shared_ptr<Logger> logger) {
  static std::once_flag once;
  {
    std::lock_guard lock(log_mutex);
    grpc_logger = std::move(logger);  // the latest cell's: a process runs one cell, or tests many in turn
  }
  std::call_once(once, [] { gpr_set_log_function(grpc_log_sink); });
}

Result<std::unique_ptr<Listener>> listen(const std::string& address, const TransportSettings& settings,
                                         StreamHandler handler, std::shared_ptr<Logger> logger) {
  route_grpc_log(std::move(logger));
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (settings.tls) {
    // A client must present a certificate; the cell verifies it at the hello (against the same CA), so a
    // refusal reaches the client with its reason instead of as a bare handshake failure.
    grpc::SslServerCredentialsOptions options(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
    options.pem_root_certs = settings.tls->ca;
    options.pem_key_cert_pairs.push_back({settings.tls->key, settings.tls->cert});
    credentials = grpc::SslServerCredentials(options);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }
  auto service = std::make_unique<Service>(std::move(handler));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, credentials, &port);
  builder.RegisterService(service.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(settings.max_packet));
  builder.SetMaxSendMessageSize(static_cast<int>(settings.max_packet));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(settings.keepalive.count()));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(settings.keepalive_timeout.count()));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             static_cast<int>(std::max<long>(100, settings.keepalive.count() / 2)));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    return fail(Errc::io_error,
                "cannot listen on " + address + " (address in use, or not an address of this host)");
  }
  auto colon = address.rfind(':');
  std::string bound = address.substr(0, colon) + ":" + std::to_string(port);
  return std::unique_ptr<Listener>(new GrpcListener(std::move(service), std::move(server), std::move(bound)));
}

Result<std::unique_ptr<Stream>> dial(const std::string& address, const std::string& server_name,
                                     const TransportSettings& settings) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  grpc::ChannelArguments args;
  if (settings.tls) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = settings.tls->ca;
    options.pem_private_key = settings.tls->key;
    options.pem_cert_chain = settings.tls->cert;
    credentials = grpc::SslCredentials(options);
    if (!server_name.empty()) {
      args.SetSslTargetNameOverride(server_name);
    }
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  args.SetMaxReceiveMessageSize(static_cast<int>(settings.max_packet));
  args.SetMaxSendMessageSize(static_cast<int>(settings.max_packet));
  keepalive_args(args, settings);
  // Each attempt gets a channel of its own: the cell's back-off rules, not a shared subchannel's.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(address, credentials, args);
  if (!channel) {
    return fail(Errc::io_error, "cannot make a channel to " + address);
  }
  auto stream = std::make_unique<ClientStream>(std::move(channel), address);
  stream->start();
  return std::unique_ptr<Stream>(std::move(stream));
}

}  // namespace ember::cell
