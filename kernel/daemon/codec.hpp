#pragma once
// What the daemons carry over the cell network besides headers: a task or a result (a params bundle, as a
// session sends it), a folder (a job to deploy, a workspace to download) as one safetensors file whose
// tensors are its files (U8, named by relative path), and an error as headers. Everything decodes through
// the wire library's checked safetensors reader.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <ember/result.hpp>
#include <ember/task.hpp>

#include "wire/frame.hpp"

namespace ember::kernel::fed {

/// A task or result as bytes (a params bundle).
Result<std::vector<std::byte>> encode_task(const TaskData& task);
/// The TaskData of a params bundle; Errc::malformed naming `what` when it does not parse.
Result<TaskData> decode_task(std::span<const std::byte> bytes, std::string_view what);

/// Files by relative path ("server/model.safetensors"), for pack_files().
using FileMap = std::map<std::string, std::shared_ptr<const std::vector<std::byte>>>;
/// Adds the regular files under `dir` (recursively) to `files` as `prefix` + their relative path, counting
/// their bytes into `total`; Errc::invalid_argument for a symbolic link or another non-regular file, or when
/// `total` passes `max_bytes`.
Result<void> read_folder(const std::filesystem::path& dir, const std::string& prefix, std::uint64_t max_bytes,
                         FileMap& files, std::uint64_t& total);
/// Files as one folder bundle.
Result<std::vector<std::byte>> pack_files(const FileMap& files);
/// The regular files under `dir` (recursively) as one bundle; Errc::invalid_argument for a symbolic link
/// or another non-regular file, or when the files exceed `max_bytes` together.
Result<std::vector<std::byte>> pack_folder(const std::filesystem::path& dir, std::uint64_t max_bytes);
/// Writes the files of a folder bundle under `dir` (made 0700, files 0600) and returns their relative paths.
/// A path that is absolute, empty, has a "." or ".." part, or a NUL is Errc::malformed naming `what` and the
/// path, and nothing is written.
Result<std::vector<std::string>> unpack_folder(std::span<const std::byte> bytes,
                                               const std::filesystem::path& dir, std::string_view what);

/// An error as reply headers ("error.code", "error.message"), and back: nullopt when the headers hold none.
void put_error(wire::Headers& headers, const Error& error);
std::optional<Error> get_error(const wire::Headers& headers);

}  // namespace ember::kernel::fed
