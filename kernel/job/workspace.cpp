#include "workspace.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace ember::kernel {

namespace fs = std::filesystem;

namespace {

// The id as C would write it: a newline or a control byte shows as an escape, not as itself.
std::string escaped(std::string_view text) {
  std::string out;
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (u < 0x20 || u == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", u);
      out += hex;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string utc_stamp() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y%m%d-%H%M%S", &tm);
  return text;
}

Result<void> check_job_id(std::string_view id) {
  constexpr std::size_t max_length = 128;
  bool valid = !id.empty() && id.size() <= max_length;
  for (char c : id) {
    valid = valid && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-');
  }
  if (!valid) {
    return fail(Errc::invalid_argument, "--job-id \"" + escaped(id) +
                                            "\": a job id is 1 to 128 of A-Z a-z 0-9 _ - "
                                            "(it names the workspace folder)");
  }
  return ok();
}

Result<void> make_private_dir(const fs::path& dir, unsigned mode) {
  std::error_code ec;
  if (fs::is_directory(dir, ec)) {
    return ok();
  }
  if (!dir.parent_path().empty() && dir.parent_path() != dir) {
    if (auto parent = make_private_dir(dir.parent_path(), mode); !parent) {
      return parent;
    }
  }
  if (::mkdir(dir.c_str(), static_cast<mode_t>(mode)) != 0 && errno != EEXIST) {
    return fail(Errc::io_error, dir.string() + ": cannot create the folder: " + std::strerror(errno));
  }
  if (!fs::is_directory(dir, ec)) {
    return fail(Errc::io_error, dir.string() + ": exists and is not a folder");
  }
  return ok();
}

Result<WorkspaceLock> WorkspaceLock::acquire(const fs::path& workspace) {
  auto file = workspace / "ember.lock";
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return fail(Errc::io_error, file.string() + ": cannot open the workspace lock: " + std::strerror(errno));
  }
  WorkspaceLock lock(fd);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    if (err != EWOULDBLOCK) {
      return fail(Errc::io_error, file.string() + ": cannot lock the workspace: " + std::strerror(err));
    }
    char text[32] = {};
    auto n = ::pread(fd, text, sizeof text - 1, 0);
    std::string pid = n > 0 ? std::string(text, static_cast<std::size_t>(n)) : std::string();
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) {
      pid.pop_back();
    }
    return fail(Errc::io_error, workspace.string() + ": the workspace is in use by another run (ember pid " +
                                    (pid.empty() ? std::string("unknown") : pid) +
                                    "); wait for it to end or choose another --workspace");
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return fail(Errc::io_error, file.string() + ": cannot write the workspace lock: " + std::strerror(errno));
  }
  return lock;
}

WorkspaceLock::~WorkspaceLock() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

}  // namespace ember::kernel
