// pipe.socket: frames between a client job and its trainer over one Unix-domain or TCP connection. The job
// end listens and admits one peer (screened by SO_PEERCRED on Unix sockets and by the session's check of
// its first frame); the trainer end connects. The stream framing is described in frame_io.hpp.

#include <climits>
#include <mutex>

#include <ember/pipe.hpp>
#include <ember/plugin.hpp>

#include "address.hpp"
#include "frame_io.hpp"
#include "socket_endpoint.hpp"

namespace ember::socket_pipe {
namespace {

class SocketPipe final : public Pipe {
 public:
  SocketPipe(const ComponentContext& context, Address address, EndpointSettings settings)
      : settings_(std::move(settings)),
        stop_(context.stop_token()),
        configured_(address),
        current_(address) {}

  // Validates the options; every refusal names the component, the option and the reason.
  static Result<std::unique_ptr<SocketPipe>> create(const ComponentContext& context) {
    const auto& options = context.options();
    auto where = [&](const char* option) {
      return "pipe.socket '" + context.instance() + "': option '" + option + "': ";
    };
    auto address = parse_address(options.string("address"));
    if (!address) {
      return fail(Errc::invalid_option, where("address") + address.error().message);
    }
    if (!address->is_unix() && !address->is_loopback() && !options.boolean("allow_remote")) {
      return fail(Errc::invalid_option,
                  where("address") + address->to_string() +
                      " is not a loopback address (127.0.0.0/8 or ::1); set allow_remote = true to use "
                      "other hosts (frames then cross the network unencrypted)");
    }
    auto max_frame = options.integer("max_frame_bytes");
    if (max_frame < 1 || static_cast<std::uint64_t>(max_frame) > max_encodable_frame) {
      return fail(Errc::invalid_option, where("max_frame_bytes") + "must be between 1 and " +
                                            std::to_string(max_encodable_frame) + " (a u32 length), is " +
                                            std::to_string(max_frame));
    }
    auto buffer = options.integer("socket_buffer_bytes");
    if (buffer < 0 || buffer > INT_MAX) {
      return fail(Errc::invalid_option, where("socket_buffer_bytes") +
                                            "must be between 0 (system default) and " +
                                            std::to_string(INT_MAX) + ", is " + std::to_string(buffer));
    }
    EndpointSettings settings{context.logger_ptr(), static_cast<std::size_t>(max_frame),
                              static_cast<int>(buffer)};
    return std::make_unique<SocketPipe>(context, std::move(*address), std::move(settings));
  }

  Result<std::unique_ptr<PipeEndpoint>> open(PipeSide side, std::chrono::milliseconds timeout,
                                             const PeerAdmission& admit) override {
    if (side == PipeSide::job) {
      Address address = configured_;
      auto opened = open_job_end(address, settings_, admit);
      if (opened) {
        std::lock_guard lock(mutex_);
        current_ = address;
      }
      return opened;
    }
    Address address;
    {
      std::lock_guard lock(mutex_);
      address = current_;
    }
    return open_trainer_end(address, settings_, timeout, stop_);
  }

  std::string address() const override {
    try {
      std::lock_guard lock(mutex_);
      return current_.to_string();
    } catch (...) {
      return {};
    }
  }

 private:
  const EndpointSettings settings_;
  const std::stop_token stop_;
  const Address configured_;  // as the option says (port 0: ephemeral)
  mutable std::mutex mutex_;
  Address current_;  // what trainers connect to: the job end's real port once it is open
};

constexpr OptionSpec socket_options[] = {
    // The shape of an address; the host literal and the path's length are checked when the pipe is created.
    {.name = "address",
     .type = OptionType::string,
     .default_value = "unix:{workspace}/ember-pipe.sock",
     .doc = "where the job end listens: unix:/abs/path, or tcp:HOST:PORT with HOST an IPv4 literal or [IPv6] "
            "(port 0: ephemeral)",
     .choices = "unix:<any>|tcp:<any>:<0-65535>"},
    {"allow_remote", OptionType::boolean, "false", "allow a TCP host other than loopback (127.0.0.0/8, ::1)"},
    // The maximum is max_encodable_frame (a u32 length).
    {.name = "max_frame_bytes",
     .type = OptionType::integer,
     .default_value = "68157440",
     .doc = "largest frame sent or received, in bytes; a longer length prefix drops the connection",
     .minimum = "1",
     .maximum = "4294967295"},
    {.name = "socket_buffer_bytes",
     .type = OptionType::integer,
     .default_value = "1048576",
     .doc = "SO_SNDBUF and SO_RCVBUF, in bytes, capped by the system's wmem_max / rmem_max (0: the system's "
            "default, about 208 KiB, which a 1 MiB chunk fills several times over)",
     .minimum = "0",
     .maximum = "2147483647"},
};

constexpr ComponentDescriptor components[] = {
    component<SocketPipe>("socket", "Frames over a Unix-domain or TCP socket to a trainer in another process",
                          socket_options),
};

}  // namespace
}  // namespace ember::socket_pipe

EMBER_PLUGIN(socket_pipe, "socket-pipe", "0.1.0", "Unix-domain and TCP socket pipe", "Apache-2.0",
             ember::socket_pipe::components)
