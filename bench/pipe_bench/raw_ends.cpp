// The raw baselines: the same bytes between two processes with nothing of ember on the way.
//
// Streams (a Unix socket, or TCP on 127.0.0.1): blocking sockets with SO_SNDTIMEO / SO_RCVTIMEO of
// io_bound, TCP_NODELAY and 1 MiB kernel buffers (as pipe.socket sets them). The sender writes each block
// with one send() loop; the receiver recv()s into a 1 MiB buffer and drops the bytes.
// Folder: each block is one file, written into tmp/ (0600) and renamed into the peer's inbox as
// <seq, 16 hex digits>; the receiver waits with inotify (IN_MOVED_TO), reads the files in seq order and
// deletes them. No fsync and no window: the least two processes must do to pass bytes through files.
// Acknowledgements (one byte) and answers travel back the same way.

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <span>
#include <utility>

#include <base/unique_fd.hpp>

#include "ends.hpp"
#include "process.hpp"
#include "timing.hpp"

namespace ember::bench {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using base::UniqueFd;

constexpr std::size_t receive_buffer_bytes = 1u << 20;

std::string os_error(const std::string& call) {
  return call + ": " + std::strerror(errno);
}

class Channel {
 public:
  virtual ~Channel() = default;
  /// Sends `bytes`: one send() loop on a stream, one file in the peer's inbox on a folder.
  virtual Result<void> send(std::span<const std::byte> bytes) = 0;
  /// Receives what has come, at most `buffer.size()` bytes (a folder: the next file, whole, which must
  /// fit), waiting at most io_bound.
  virtual Result<std::size_t> receive(std::span<std::byte> buffer) = 0;
};

Result<void> receive_exactly(Channel& channel, std::uint64_t n, std::span<std::byte> buffer) {
  while (n > 0) {
    auto got =
        channel.receive(buffer.first(static_cast<std::size_t>(std::min<std::uint64_t>(n, buffer.size()))));
    if (!got) {
      return fail(std::move(got.error()));
    }
    n -= *got;
  }
  return ok();
}

class StreamChannel final : public Channel {
 public:
  explicit StreamChannel(UniqueFd fd) : fd_(std::move(fd)) {}

  Result<void> send(std::span<const std::byte> bytes) override {
    std::size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::send(fd_.get(), bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        return fail(errno == EAGAIN ? Errc::timeout : Errc::io_error, os_error("send"));
      }
      done += static_cast<std::size_t>(n);
    }
    return ok();
  }

  Result<std::size_t> receive(std::span<std::byte> buffer) override {
    while (true) {
      ssize_t n = ::recv(fd_.get(), buffer.data(), buffer.size(), 0);
      if (n > 0) {
        return static_cast<std::size_t>(n);
      }
      if (n == 0) {
        return fail(Errc::closed, "recv: end of stream");
      }
      if (errno != EINTR) {
        return fail(errno == EAGAIN ? Errc::timeout : Errc::io_error, os_error("recv"));
      }
    }
  }

 private:
  UniqueFd fd_;
};

// The folder: to_far/ and to_near/ (the two inboxes) and tmp/.
class FolderChannel final : public Channel {
 public:
  static Result<std::unique_ptr<FolderChannel>> open(const fs::path& root, bool near) {
    auto channel = std::unique_ptr<FolderChannel>(new FolderChannel);
    const char* inbox = near ? "to_near" : "to_far";
    auto dir = [&](const char* name) {
      return UniqueFd(::open((root / name).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    };
    channel->inbox_ = dir(inbox);
    channel->outbox_ = dir(near ? "to_far" : "to_near");
    channel->tmp_ = dir("tmp");
    channel->tmp_prefix_ = near ? "near-" : "far-";
    channel->notify_ = UniqueFd(inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
    if (channel->inbox_.get() < 0 || channel->outbox_.get() < 0 || channel->tmp_.get() < 0 ||
        channel->notify_.get() < 0 ||
        inotify_add_watch(channel->notify_.get(), (root / inbox).c_str(), IN_MOVED_TO) < 0) {
      return fail(Errc::io_error, os_error("open folder " + root.string()));
    }
    return channel;
  }

  Result<void> send(std::span<const std::byte> bytes) override {
    auto name = seq_name(sent_++);
    auto tmp = tmp_prefix_ + name;
    UniqueFd fd(::openat(tmp_.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (fd.get() < 0) {
      return fail(Errc::io_error, os_error("create tmp/" + tmp));
    }
    std::size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno != EINTR) {
        return fail(Errc::io_error, os_error("write tmp/" + tmp));
      }
      done += n > 0 ? static_cast<std::size_t>(n) : 0;
    }
    fd.reset();
    if (::renameat(tmp_.get(), tmp.c_str(), outbox_.get(), name.c_str()) != 0) {
      return fail(Errc::io_error, os_error("rename tmp/" + tmp));
    }
    return ok();
  }

  Result<std::size_t> receive(std::span<std::byte> buffer) override {
    auto name = seq_name(received_);
    auto deadline = Clock::now() + io_bound;
    while (true) {
      UniqueFd fd(::openat(inbox_.get(), name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      if (fd.get() >= 0) {
        return read_file(fd, name, buffer);
      }
      if (errno != ENOENT) {
        return fail(Errc::io_error, os_error("open " + name));
      }
      // Not there yet. The watch was set before this look, so the rename that brings it wakes the poll.
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      pollfd p{notify_.get(), POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) == 0) {
        return fail(Errc::timeout, "no file " + name + " within " + std::to_string(io_bound.count()) + " s");
      }
      std::array<char, 16384> events;
      while (::read(notify_.get(), events.data(), events.size()) > 0) {
      }
    }
  }

 private:
  FolderChannel() = default;

  static std::string seq_name(std::uint64_t seq) {
    char name[17];
    std::snprintf(name, sizeof name, "%016llx", static_cast<unsigned long long>(seq));
    return name;
  }

  Result<std::size_t> read_file(const UniqueFd& fd, const std::string& name, std::span<std::byte> buffer) {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
      return fail(Errc::io_error, os_error("fstat " + name));
    }
    auto size = static_cast<std::size_t>(st.st_size);
    if (size > buffer.size()) {
      return fail(Errc::malformed, name + " holds " + std::to_string(size) + " bytes, more than expected");
    }
    std::size_t done = 0;
    while (done < size) {
      ssize_t n = ::read(fd.get(), buffer.data() + done, size - done);
      if (n <= 0 && errno != EINTR) {
        return fail(Errc::io_error, os_error("read " + name));
      }
      done += n > 0 ? static_cast<std::size_t>(n) : 0;
    }
    if (::unlinkat(inbox_.get(), name.c_str(), 0) != 0) {
      return fail(Errc::io_error, os_error("unlink " + name));
    }
    received_++;
    return size;
  }

  UniqueFd inbox_, outbox_, tmp_, notify_;
  std::string tmp_prefix_;
  std::uint64_t sent_ = 0;
  std::uint64_t received_ = 0;
};

Result<void> tune_stream(int fd, bool tcp) {
  timeval bound{static_cast<time_t>(io_bound.count()), 0};
  int one = 1;
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &bound, sizeof bound) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound) != 0 ||
      (tcp && ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)) {
    return fail(Errc::io_error, os_error("setsockopt"));
  }
  return ok();
}

// The kernel buffers of both raw sockets: what pipe.socket asks for by default (socket_buffer_bytes), so
// pipe and baseline run with the same buffers. With the system's default (208 KiB here) a 1 MiB write
// fills the buffer several times over, and a raw copy swings between 2 and 7 GB/s from run to run.
constexpr int raw_socket_buffer = 1 << 20;

void set_buffers(int fd) {
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &raw_socket_buffer, sizeof raw_socket_buffer);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &raw_socket_buffer, sizeof raw_socket_buffer);
}

struct Listener {
  UniqueFd fd;
  std::string address;  // unix:/path or tcp:127.0.0.1:port, for the far end
};

Result<Listener> listen_on(const std::string& transport, const fs::path& dir) {
  Listener l;
  if (transport == "raw-unix") {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    auto path = (dir / "raw.sock").string();
    if (path.size() >= sizeof addr.sun_path) {
      return fail(Errc::invalid_argument, "socket path too long: " + path);
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    l.fd = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    set_buffers(l.fd.get());
    if (l.fd.get() < 0 || ::bind(l.fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(l.fd.get(), 1) != 0) {
      return fail(Errc::io_error, os_error("listen on " + path));
    }
    l.address = "unix:" + path;
    return l;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  l.fd = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  set_buffers(l.fd.get());  // before listen(), so TCP's window scaling can use them
  if (l.fd.get() < 0 || ::bind(l.fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(l.fd.get(), 1) != 0 ||
      ::getsockname(l.fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return fail(Errc::io_error, os_error("listen on 127.0.0.1"));
  }
  l.address = "tcp:127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  return l;
}

Result<std::unique_ptr<Channel>> accept_within(const Listener& l, bool tcp) {
  pollfd p{l.fd.get(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(io_bound).count())) != 1) {
    return fail(Errc::timeout, "the far end did not connect to " + l.address);
  }
  UniqueFd fd(::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (fd.get() < 0) {
    return fail(Errc::io_error, os_error("accept"));
  }
  if (auto tuned = tune_stream(fd.get(), tcp); !tuned) {
    return fail(std::move(tuned.error()));
  }
  return std::unique_ptr<Channel>(std::make_unique<StreamChannel>(std::move(fd)));
}

Result<std::unique_ptr<Channel>> attach(const std::string& address) {
  if (address.starts_with("dir:")) {
    auto folder = FolderChannel::open(address.substr(4), false);
    if (!folder) {
      return fail(std::move(folder.error()));
    }
    return std::unique_ptr<Channel>(std::move(*folder));
  }
  UniqueFd fd;
  bool tcp = address.starts_with("tcp:");
  if (tcp) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(std::stoul(address.substr(address.rfind(':') + 1))));
    fd = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    set_buffers(fd.get());
    if (fd.get() < 0 || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return fail(Errc::io_error, os_error("connect " + address));
    }
  } else {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    auto path = address.substr(5);
    std::memcpy(addr.sun_path, path.c_str(), std::min(path.size() + 1, sizeof addr.sun_path - 1));
    fd = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    set_buffers(fd.get());
    if (fd.get() < 0 || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return fail(Errc::io_error, os_error("connect " + address));
    }
  }
  if (auto tuned = tune_stream(fd.get(), tcp); !tuned) {
    return fail(std::move(tuned.error()));
  }
  return std::unique_ptr<Channel>(std::make_unique<StreamChannel>(std::move(fd)));
}

// One round of the measuring end: a message out, and what answers it back.
Result<void> near_round(Channel& channel, const Spec& spec, std::span<const std::byte> block, bool timed,
                        std::span<std::byte> buffer) {
  switch (spec.kind) {
    case Kind::throughput:
      for (std::uint64_t offset = 0; offset < spec.size; offset += block.size()) {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(block.size(), spec.size - offset));
        if (auto sent = channel.send(block.first(n)); !sent) {
          return sent;
        }
      }
      return receive_exactly(channel, 1, buffer);
    case Kind::latency:
      if (auto sent = channel.send(block); !sent) {
        return sent;
      }
      return receive_exactly(channel, spec.size, buffer);
    case Kind::rate:
      for (std::uint64_t i = 0, n = timed ? spec.iterations : spec.warmup; i < n; ++i) {
        if (auto sent = channel.send(block); !sent) {
          return sent;
        }
      }
      return receive_exactly(channel, 1, buffer);
  }
  return ok();
}

// Everything the far end does, up to the farewell byte.
Result<void> far_rounds(Channel& channel, const Spec& spec) {
  std::vector<std::byte> buffer(receive_buffer_bytes);
  const auto answer = pattern_bytes(spec.kind == Kind::latency ? spec.size : 1);
  switch (spec.kind) {
    case Kind::throughput:
    case Kind::latency:
      for (std::uint64_t i = 0; i < spec.warmup + spec.iterations; ++i) {
        if (auto got = receive_exactly(channel, spec.size, buffer); !got) {
          return got;
        }
        if (auto sent = channel.send(answer); !sent) {
          return sent;
        }
      }
      break;
    case Kind::rate:
      for (std::uint64_t n : {spec.warmup, spec.iterations}) {
        if (n == 0) {
          continue;
        }
        if (auto got = receive_exactly(channel, n * spec.size, buffer); !got) {
          return got;
        }
        if (auto sent = channel.send(answer); !sent) {
          return sent;
        }
      }
      break;
  }
  return receive_exactly(channel, 1, buffer);  // the farewell: the near end has read our peak memory
}

}  // namespace

Result<Measurement> run_raw_near(const Spec& spec) {
  auto made = TempDir::make(spec.work, "raw");
  if (!made) {
    return fail(std::move(made.error()));
  }
  TempDir ws = std::move(*made);
  Spec far = spec;
  far.role = "raw-far";
  far.result.clear();
  std::unique_ptr<Channel> channel;
  std::unique_ptr<Child> child;
  std::vector<std::string> argv = {self_exe()};
  if (spec.transport == "raw-file") {
    for (const char* dir : {"to_far", "to_near", "tmp"}) {
      fs::create_directory(ws.path() / dir);
    }
    auto folder = FolderChannel::open(ws.path(), true);
    if (!folder) {
      return fail(std::move(folder.error()));
    }
    channel = std::move(*folder);
    far.address = "dir:" + ws.path().string();
    auto args = far.to_args();
    argv.insert(argv.end(), args.begin(), args.end());
    auto spawned = Child::spawn(argv);
    if (!spawned) {
      return fail(std::move(spawned.error()));
    }
    child = std::move(*spawned);
  } else {
    auto listener = listen_on(spec.transport, ws.path());
    if (!listener) {
      return fail(std::move(listener.error()));
    }
    far.address = listener->address;
    auto args = far.to_args();
    argv.insert(argv.end(), args.begin(), args.end());
    auto spawned = Child::spawn(argv);
    if (!spawned) {
      return fail(std::move(spawned.error()));
    }
    child = std::move(*spawned);
    auto accepted = accept_within(*listener, spec.transport == "raw-tcp");
    if (!accepted) {
      return fail(std::move(accepted.error()));
    }
    channel = std::move(*accepted);
  }

  const auto block = pattern_bytes(static_cast<std::size_t>(
      spec.kind == Kind::throughput ? std::min<std::uint64_t>(spec.block, spec.size) : spec.size));
  std::vector<std::byte> buffer(receive_buffer_bytes);
  Measurement m;
  auto [untimed, timed] = rounds_of(spec);
  auto measured = timed_rounds(untimed, timed, child->pid(), m, [&](bool is_timed) {
    return near_round(*channel, spec, block, is_timed, buffer);
  });
  if (!measured) {
    return fail(std::move(measured.error()));
  }
  m.near_peak_kib = peak_rss_kib(getpid());
  m.far_peak_kib = peak_rss_kib(child->pid());
  if (auto bye = channel->send(std::span(block).first(1)); !bye) {
    return fail(std::move(bye.error()));
  }
  if (auto ended = expect_clean_exit(*child, 30s, "the raw receiver"); !ended) {
    return fail(std::move(ended.error()));
  }
  return m;
}

int run_raw_far(const Spec& spec) {
  auto channel = attach(spec.address);
  if (!channel) {
    std::cerr << "pipe_bench raw-far: " << channel.error().message << "\n";
    return 3;
  }
  if (auto done = far_rounds(**channel, spec); !done) {
    std::cerr << "pipe_bench raw-far: " << done.error().message << "\n";
    return 4;
  }
  return 0;
}

}  // namespace ember::bench
