#include "address.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <charconv>
#include <cstddef>
#include <cstring>
#include <system_error>

namespace ember::socket_pipe {

namespace {

tl::unexpected<Error> bad(std::string_view text, const std::string& why) {
  return fail(Errc::invalid_option, "address '" + std::string(text) + "': " + why);
}

Result<Address> parse_unix(std::string_view text, std::string_view rest) {
  if (rest.empty()) {
    return bad(text, "the unix socket path is empty (want unix:/abs/path)");
  }
  if (rest.find('\0') != std::string_view::npos) {
    return bad(text, "the unix socket path contains a NUL byte");
  }
  std::error_code ec;
  std::filesystem::path path = std::filesystem::absolute(std::filesystem::path(rest), ec).lexically_normal();
  if (ec) {
    return bad(text, "cannot make the path absolute: " + ec.message());
  }
  Address address;
  address.family = Address::Family::unix_path;
  address.path = path;
  auto* un = reinterpret_cast<sockaddr_un*>(&address.storage);
  un->sun_family = AF_UNIX;
  const std::string& native = path.native();
  if (native.size() >= sizeof(un->sun_path)) {
    return bad(text, "the socket path is " + std::to_string(native.size()) +
                         " bytes long; unix sockets allow at most " +
                         std::to_string(sizeof(un->sun_path) - 1));
  }
  std::memcpy(un->sun_path, native.c_str(), native.size() + 1);
  address.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + native.size() + 1);
  return address;
}

Result<Address> parse_tcp(std::string_view text, std::string_view rest) {
  std::string_view host;
  std::string_view port_text;
  bool v6 = false;
  if (!rest.empty() && rest.front() == '[') {
    auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      return bad(text, "want tcp:[IPV6]:PORT");
    }
    host = rest.substr(1, close - 1);
    port_text = rest.substr(close + 2);
    v6 = true;
  } else {
    auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      return bad(text, "want tcp:HOST:PORT");
    }
    host = rest.substr(0, colon);
    port_text = rest.substr(colon + 1);
  }
  unsigned port = 0;
  auto [end, error] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || error != std::errc() || end != port_text.data() + port_text.size() ||
      port > 65535) {
    return bad(text, "the port '" + std::string(port_text) + "' is not a number from 0 to 65535");
  }
  Address address;
  address.family = Address::Family::tcp;
  std::string host_text(host);
  if (v6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&address.storage);
    in6->sin6_family = AF_INET6;
    if (inet_pton(AF_INET6, host_text.c_str(), &in6->sin6_addr) != 1) {
      return bad(text, "'" + host_text + "' is not an IPv6 address literal");
    }
    address.length = sizeof(sockaddr_in6);
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&address.storage);
    in4->sin_family = AF_INET;
    if (inet_pton(AF_INET, host_text.c_str(), &in4->sin_addr) != 1) {
      return bad(text,
                 "'" + host_text +
                     "' is not an IPv4 address literal (host names are not resolved; IPv6 goes in brackets)");
    }
    address.length = sizeof(sockaddr_in);
  }
  address.set_port(static_cast<std::uint16_t>(port));
  return address;
}

}  // namespace

bool Address::is_loopback() const noexcept {
  if (storage.ss_family == AF_INET) {
    const auto* in4 = reinterpret_cast<const sockaddr_in*>(&storage);
    return (ntohl(in4->sin_addr.s_addr) >> 24) == 127;
  }
  if (storage.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr) ||
           (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127);
  }
  return false;
}

std::uint16_t Address::port() const noexcept {
  if (storage.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  }
  if (storage.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
  }
  return 0;
}

void Address::set_port(std::uint16_t port) noexcept {
  if (storage.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&storage)->sin_port = htons(port);
  } else if (storage.ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port = htons(port);
  }
}

std::string Address::to_string() const {
  if (is_unix()) {
    return "unix:" + path.string();
  }
  return "tcp:" + describe_inet(storage);
}

std::string describe_inet(const sockaddr_storage& storage) {
  char host[INET6_ADDRSTRLEN] = {};
  if (storage.ss_family == AF_INET) {
    const auto* in4 = reinterpret_cast<const sockaddr_in*>(&storage);
    inet_ntop(AF_INET, &in4->sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(ntohs(in4->sin_port));
  }
  if (storage.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    // Appended piece by piece: GCC 12 at -O3 misreports "[" + std::string(...) as overlapping (-Wrestrict).
    std::string text = "[";
    text += host;
    text += "]:";
    text += std::to_string(ntohs(in6->sin6_port));
    return text;
  }
  return "(unknown address family " + std::to_string(storage.ss_family) + ")";
}

Result<Address> parse_address(std::string_view text) {
  if (text.starts_with("unix:")) {
    return parse_unix(text, text.substr(5));
  }
  if (text.starts_with("tcp:")) {
    return parse_tcp(text, text.substr(4));
  }
  return bad(text, "want unix:/abs/path or tcp:HOST:PORT");
}

}  // namespace ember::socket_pipe
