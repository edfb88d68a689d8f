#include "provision/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <base/unique_fd.hpp>

namespace ember::provision {

namespace fs = std::filesystem;

namespace {

Error errno_error(const fs::path& file, std::string_view what, int err) {
  return Error{Errc::io_error, file.string() + ": cannot " + std::string(what) + ": " + std::strerror(err)};
}

Result<void> write_all(int fd, std::string_view content, const fs::path& file) {
  while (!content.empty()) {
    ssize_t n = ::write(fd, content.data(), content.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return fail(errno_error(file, "write", errno));
    }
    content.remove_prefix(static_cast<std::size_t>(n));
  }
  return ok();
}

}  // namespace

Result<void> write_file_atomic(const fs::path& file, std::string_view content, mode_t mode) {
  // The temporary file sits beside the target, so the rename stays inside one file system.
  // Appended piecewise: GCC 12 at -O3 reports a false -Wrestrict on `"." + std::string&&` (release builds).
  std::string name = ".";
  name += file.filename().string();
  name += ".XXXXXX";
  std::string temp = (file.parent_path() / name).string();
  base::UniqueFd fd(::mkstemp(temp.data()));
  if (!fd) {
    return fail(errno_error(file, "create a temporary file beside it", errno));
  }
  auto discard = [&temp](Error error) {
    ::unlink(temp.c_str());
    return fail(std::move(error));
  };
  // mkstemp makes 0600; fchmod sets the exact mode, which the umask does not touch.
  if (::fchmod(fd.get(), mode) != 0) {
    return discard(errno_error(file, "set permissions", errno));
  }
  if (auto written = write_all(fd.get(), content, file); !written) {
    return discard(std::move(written.error()));
  }
  if (::fsync(fd.get()) != 0) {
    return discard(errno_error(file, "sync", errno));
  }
  fd.reset();
  if (::rename(temp.c_str(), file.c_str()) != 0) {
    return discard(errno_error(file, "rename into place", errno));
  }
  return ok();
}

Result<void> make_dir(const fs::path& dir, mode_t mode) {
  if (::mkdir(dir.c_str(), mode) != 0) {
    return fail(errno_error(dir, "create folder", errno));
  }
  // mkdir's mode is masked by the umask; chmod is not.
  if (::chmod(dir.c_str(), mode) != 0) {
    return fail(errno_error(dir, "set permissions", errno));
  }
  return ok();
}

}  // namespace ember::provision
