#pragma once
// Writing secrets to disk: exact permissions whatever the umask, and atomic files (a temporary file, fsync,
// then rename), so a crash leaves the old file or the new one, never half of one.

#include <filesystem>
#include <string_view>

#include <sys/types.h>

#include <ember/result.hpp>

namespace ember::provision {

/// Writes `content` to `file` atomically with exactly `mode` (0600 for a key). Errc::io_error names the file.
Result<void> write_file_atomic(const std::filesystem::path& file, std::string_view content, mode_t mode);

/// Creates the folder `dir` (its parent must exist) with exactly `mode`; an existing folder is an error.
Result<void> make_dir(const std::filesystem::path& dir, mode_t mode = 0700);

}  // namespace ember::provision
