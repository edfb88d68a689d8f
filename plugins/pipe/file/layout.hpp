#pragma once
// The folder a file pipe lives in, the names inside it, and the few operations on them. Every access goes
// through a descriptor of a folder the pipe opened itself (openat with O_NOFOLLOW), so no name or link
// planted in the folder can make the pipe touch anything outside it.
//
//   <root>/              0700; created by the job end, removed by it when it closes
//     session            "<epoch>\n": the current session, replaced atomically by each job end that opens
//     attached.trainer   created exclusively by the one trainer end that attached to the session
//     closed.job         "<epoch> <frames sent>\n", written atomically by an end when it closes
//     closed.trainer
//     to_job/            the job end's inbox: frames from the trainer
//     to_trainer/        the trainer end's inbox
//     tmp/               where a sender writes a frame (0600) before renaming it into the peer's inbox
//
// A frame file is named "<epoch>-<seq>.frame", both as 16 lower-case hex digits; each sender counts seq
// from 0. The epoch, random per session, tells this session's frames from an earlier one's.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ember/pipe.hpp>
#include <ember/result.hpp>

#include <base/strings.hpp>
#include <base/unique_fd.hpp>

namespace ember::file_pipe {

using base::UniqueFd;

inline constexpr const char* session_file = "session";
inline constexpr const char* attached_file = "attached.trainer";

/// "job" or "trainer".
std::string_view side_name(PipeSide side) noexcept;
/// The other end.
PipeSide peer_of(PipeSide side) noexcept;
/// The folder `side` receives in: "to_job" or "to_trainer".
const char* inbox_name(PipeSide side) noexcept;
/// The marker `side` writes when it closes: "closed.job" or "closed.trainer".
const char* marker_name(PipeSide side) noexcept;

/// `value` as 16 lower-case hex digits.
std::string hex64(std::uint64_t value);
/// Exactly 16 lower-case hex digits, else nullopt.
std::optional<std::uint64_t> parse_hex64(std::string_view text) noexcept;

/// The parts of a frame file's name.
struct FrameName {
  std::uint64_t epoch = 0;
  std::uint64_t seq = 0;
};
/// "<epoch>-<seq>.frame".
std::string frame_name(std::uint64_t epoch, std::uint64_t seq);
/// The parts of a name that is exactly "<16 hex>-<16 hex>.frame", else nullopt.
std::optional<FrameName> parse_frame_name(std::string_view name) noexcept;
/// What a sender calls its frame in tmp/ before the rename: "<side>-<epoch>-<seq>.part".
std::string tmp_name(PipeSide side, std::uint64_t epoch, std::uint64_t seq);
/// The prefix of every file `side` writes into tmp/ ("job-"), so an end can remove only its own leftovers.
std::string tmp_prefix(PipeSide side);

/// A file name fit for a message: control, non-ASCII, quote and backslash bytes escaped as \xNN, at most
/// 120 bytes of it shown.
std::string printable(std::string_view name);
using base::errno_text;
/// Writes all of `data`, retrying short writes and EINTR. Returns 0 or the errno of the failure.
int write_all(int fd, const void* data, std::size_t size) noexcept;
/// "a symlink", "a fifo", "a directory", ... for a file that should have been a regular file.
std::string kind_of_mode(unsigned mode);

/// The pipe's folders, as one end opened them.
struct OpenRoot {
  std::string path;  ///< absolute, for messages ("/ws/pipe")
  UniqueFd root;
  UniqueFd to_job;
  UniqueFd to_trainer;
  UniqueFd tmp;

  /// The folder `side` receives in.
  int inbox(PipeSide side) const noexcept { return side == PipeSide::job ? to_job.get() : to_trainer.get(); }
  /// The folder `side` sends into: its peer's inbox.
  int outbox(PipeSide side) const noexcept { return inbox(peer_of(side)); }
  /// "/ws/pipe/to_job/<name>" with the name made printable, for messages.
  std::string shown(const char* folder, std::string_view name) const;
};

/// Creates the root and its three folders (0700) for a job end, or takes over existing ones that are real
/// folders owned by this user; refuses a symlink or a non-folder anywhere inside.
Result<OpenRoot> create_root(const std::filesystem::path& root);
/// Opens an existing root and its folders (trainer end, or cleanup); refuses symlinks and non-folders.
/// Errc::not_found when the root or one of its folders does not exist yet.
Result<OpenRoot> open_root(const std::filesystem::path& root);

/// The entries of a folder, without "." and "..".
Result<std::vector<std::string>> list_dir(int dir_fd);
/// Removes one entry of a folder without following links: a file, a link, or a folder with its contents
/// (to a bounded depth). Returns 0 or the errno of the failure.
int remove_entry(int dir_fd, const std::string& name) noexcept;

/// Writes a small file atomically: into tmp/ under `tmp`, then renamed to `name` in the root.
Result<void> write_small_file(const OpenRoot& root, const std::string& tmp, const char* name,
                              std::string_view content);
/// Reads a small regular file of a folder (at most `max` bytes), not following links. The error message
/// gives only the cause; the caller names the file.
Result<std::string> read_small_file(int dir_fd, const char* name, std::size_t max);
/// The epoch the session file names.
Result<std::uint64_t> read_session(const OpenRoot& root);

/// Prepares the root for a new session (job end, before it writes the session file): removes every frame
/// file of an earlier session from both inboxes, everything in tmp/, and the earlier session's markers.
/// Returns how many frame files it removed. Foreign files in the inboxes stay, for the receivers to report.
std::size_t clear_for_new_session(const OpenRoot& root);
/// Removes what the pipe keeps in the root, then the root itself (unless something else was put there).
/// Returns an empty string or why the root stayed.
std::string remove_root(const OpenRoot& root);

}  // namespace ember::file_pipe
