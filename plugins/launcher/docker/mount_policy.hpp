#pragma once
// Which host folders a container may see: the site lists them (allowed_mounts), the job asks for some of
// them (mounts), and the launcher adds its own (the workspace read-write, the job folder and the startup
// kit read-only). Everything is checked before anything starts; the engine's socket is never reachable.

#include <filesystem>
#include <string>
#include <vector>

#include <ember/result.hpp>

namespace ember::docker_launcher {

/// One bind mount, host paths resolved (no symlink, no "..").
struct Mount {
  std::filesystem::path host;
  std::filesystem::path container;
  bool read_only = true;
};

/// A folder the site lets containers see, and whether they may write to it.
struct AllowedMount {
  std::filesystem::path host;
  bool writable = false;
};

/// Parses the site's `allowed_mounts` entries: "PATH" or "PATH:rw" / "PATH:ro", PATH absolute.
Result<std::vector<AllowedMount>> parse_allowed_mounts(const std::vector<std::string>& entries);

/// Parses `mounts` entries: "HOST", "HOST:ro", "HOST:rw", "HOST:CONTAINER" or "HOST:CONTAINER:ro|rw"
/// (read-only unless rw), both paths absolute. Only the syntax: the paths are resolved by check_mounts().
Result<std::vector<Mount>> parse_mounts(const std::vector<std::string>& entries);

/// Resolves each mount's host path (it must exist) and checks that it lies inside an allowed folder that
/// lets it write if it is read-write (`own` mounts, the launcher's, need no allowance), and that no mount
/// holds the engine's socket. Returns the mounts with their host paths resolved, or an error naming the
/// mount and the rule it breaks.
Result<std::vector<Mount>> check_mounts(const std::vector<Mount>& own, const std::vector<Mount>& asked,
                                        const std::vector<AllowedMount>& allowed,
                                        const std::filesystem::path& engine_socket);

}  // namespace ember::docker_launcher
