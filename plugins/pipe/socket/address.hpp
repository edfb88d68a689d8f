#pragma once
// Socket addresses as pipe.socket's `address` option writes them: "unix:/abs/path", "tcp:127.0.0.1:40123",
// "tcp:[::1]:40123". Hosts are literals only (no name lookup), so an address means the same thing in the
// job and in its trainer, and the loopback rule can be checked without asking a resolver.

#include <sys/socket.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include <ember/result.hpp>

namespace ember::socket_pipe {

/// A parsed address, ready for bind() or connect().
struct Address {
  enum class Family { unix_path, tcp };

  Family family = Family::unix_path;
  std::filesystem::path path;  ///< unix: the socket file, absolute
  sockaddr_storage storage{};  ///< the sockaddr itself (sockaddr_un, sockaddr_in or sockaddr_in6)
  socklen_t length = 0;        ///< its length

  bool is_unix() const noexcept { return family == Family::unix_path; }
  /// The socket domain: AF_UNIX, AF_INET or AF_INET6.
  int domain() const noexcept { return storage.ss_family; }
  const sockaddr* sockaddr_ptr() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
  /// tcp: whether the host is a loopback address (127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104).
  bool is_loopback() const noexcept;
  /// tcp: the port (0 asks bind() for an ephemeral one).
  std::uint16_t port() const noexcept;
  /// tcp: replaces the port, once bind() has picked one.
  void set_port(std::uint16_t port) noexcept;
  /// The option's text form: "unix:/ws/ember-pipe.sock", "tcp:127.0.0.1:40123", "tcp:[::1]:40123".
  std::string to_string() const;
};

/// Parses an `address` option. A relative unix path is made absolute against the current directory, so
/// that the trainer (which may run elsewhere) is handed a path that means the same file.
Result<Address> parse_address(std::string_view text);

/// A peer's TCP address for messages ("127.0.0.1:51234", "[::1]:51234").
std::string describe_inet(const sockaddr_storage& storage);

}  // namespace ember::socket_pipe
