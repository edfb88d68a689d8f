#include "mount_policy.hpp"

#include <algorithm>
#include <array>
#include <string_view>

namespace ember::docker_launcher {
namespace {

namespace fs = std::filesystem;

// The engines' usual socket paths: never mounted, whichever engine this launcher talks to.
constexpr std::array<std::string_view, 4> well_known_sockets = {
    "/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock", "/var/run/podman/podman.sock"};

std::vector<std::string> split_colons(const std::string& text) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    auto colon = text.find(':', start);
    parts.push_back(text.substr(start, colon - start));
    if (colon == std::string::npos) {
      return parts;
    }
    start = colon + 1;
  }
}

bool is_mode(const std::string& part) {
  return part == "ro" || part == "rw";
}

// Whether `inner` is `outer` or lies below it (both resolved).
bool within(const fs::path& inner, const fs::path& outer) {
  auto [o, i] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
  return o == outer.end() || (std::next(o) == outer.end() && o->empty());
}

Result<fs::path> resolve(const fs::path& path, const std::string& what) {
  std::error_code ec;
  auto resolved = fs::canonical(path, ec);
  if (ec) {
    return fail(Errc::not_found, what + " '" + path.string() + "' cannot be mounted: " + ec.message());
  }
  return resolved;
}

}  // namespace

Result<std::vector<AllowedMount>> parse_allowed_mounts(const std::vector<std::string>& entries) {
  std::vector<AllowedMount> out;
  for (const auto& entry : entries) {
    auto parts = split_colons(entry);
    if (parts.size() > 2 || (parts.size() == 2 && !is_mode(parts[1])) || parts[0].empty() ||
        parts[0].front() != '/') {
      return fail(Errc::invalid_option,
                  "option 'allowed_mounts': '" + entry + "' is not an absolute PATH, PATH:ro or PATH:rw");
    }
    out.push_back({fs::path(parts[0]).lexically_normal(), parts.size() == 2 && parts[1] == "rw"});
  }
  return out;
}

Result<std::vector<Mount>> parse_mounts(const std::vector<std::string>& entries) {
  std::vector<Mount> out;
  for (const auto& entry : entries) {
    auto parts = split_colons(entry);
    bool has_mode = parts.size() >= 2 && is_mode(parts.back());
    std::size_t paths = parts.size() - (has_mode ? 1 : 0);
    bool valid = paths >= 1 && paths <= 2 && std::all_of(parts.begin(), parts.begin() + paths, [](auto& p) {
                   return !p.empty() && p.front() == '/';
                 });
    if (!valid) {
      return fail(Errc::invalid_option,
                  "option 'mounts': '" + entry + "' is not HOST[:CONTAINER][:ro|rw] with absolute paths");
    }
    Mount mount;
    mount.host = fs::path(parts[0]).lexically_normal();
    mount.container = fs::path(parts[paths - 1]).lexically_normal();
    mount.read_only = !(has_mode && parts.back() == "rw");
    out.push_back(std::move(mount));
  }
  return out;
}

Result<std::vector<Mount>> check_mounts(const std::vector<Mount>& own, const std::vector<Mount>& asked,
                                        const std::vector<AllowedMount>& allowed,
                                        const fs::path& engine_socket) {
  std::vector<fs::path> sockets;
  std::error_code ec;
  if (!engine_socket.empty()) {
    sockets.push_back(engine_socket.lexically_normal());
    if (auto resolved = fs::weakly_canonical(engine_socket, ec); !ec) {
      sockets.push_back(resolved);
    }
  }
  for (auto known : well_known_sockets) {
    sockets.emplace_back(known);
    if (auto resolved = fs::weakly_canonical(fs::path(known), ec); !ec) {
      sockets.push_back(resolved);
    }
  }
  std::vector<Mount> out;
  auto add = [&](const Mount& mount, bool is_own) -> Result<void> {
    std::string what = is_own ? "the launcher's mount" : "the mount";
    auto host = resolve(mount.host, what);
    if (!host) {
      return fail(std::move(host.error()));
    }
    if (mount.host.string().find(':') != std::string::npos ||
        mount.container.string().find(':') != std::string::npos) {
      return fail(Errc::rejected, what + " '" + mount.host.string() + "': a path with ':' cannot be mounted");
    }
    for (const auto& socket : sockets) {
      if (within(socket, *host)) {
        return fail(Errc::rejected, what + " '" + mount.host.string() +
                                        "' would put the container engine's socket '" + socket.string() +
                                        "' inside the container");
      }
    }
    if (!is_own) {
      bool permitted = std::any_of(allowed.begin(), allowed.end(), [&](const AllowedMount& a) {
        auto site_path = fs::weakly_canonical(a.host, ec);
        return (a.writable || mount.read_only) && within(*host, ec ? a.host : site_path);
      });
      if (!permitted) {
        return fail(Errc::rejected,
                    "the mount '" + mount.host.string() + "' (" +
                        (mount.read_only ? "read-only" : "read-write") +
                        (host->string() != mount.host.string() ? ", resolved to '" + host->string() + "'"
                                                               : std::string()) +
                        ") is not inside a folder the site allows" +
                        (mount.read_only ? "" : " to be written") + " (allowed_mounts)");
      }
    }
    out.push_back({*host, mount.container, mount.read_only});
    return ok();
  };
  for (const auto& mount : own) {
    if (auto added = add(mount, true); !added) {
      return fail(std::move(added.error()));
    }
  }
  for (const auto& mount : asked) {
    if (auto added = add(mount, false); !added) {
      return fail(std::move(added.error()));
    }
  }
  return out;
}

}  // namespace ember::docker_launcher
