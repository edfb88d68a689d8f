#include "layout.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <base/strings.hpp>

namespace ember::file_pipe {

namespace {

constexpr const char* to_job_dir = "to_job";
constexpr const char* to_trainer_dir = "to_trainer";
constexpr const char* tmp_dir = "tmp";
constexpr const char* folders[] = {to_job_dir, to_trainer_dir, tmp_dir};
constexpr const char* markers[] = {"closed.job", "closed.trainer", attached_file};
constexpr mode_t private_dir_mode = 0700;
// A stray folder inside an inbox is removed with its contents, but never followed deeper than this.
constexpr int max_remove_depth = 8;

constexpr char hex_digits[] = "0123456789abcdef";

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  return -1;
}

// Why `name` in `dir_fd` could not be opened as a folder, in words.
std::string why_not_a_folder(int dir_fd, const char* name, int err) {
  struct stat st {};
  if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(st.st_mode)) {
    return "is " + kind_of_mode(st.st_mode) + ", not a folder; refusing to use it";
  }
  return base::errno_text(err);
}

// Opens `name` in `dir_fd` as a folder, never through a symlink.
Result<UniqueFd> open_folder(int dir_fd, const char* name, const std::string& shown) {
  UniqueFd fd(openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    int err = errno;
    return fail(err == ENOENT ? Errc::not_found : Errc::invalid_argument,
                "'" + shown + "' " + why_not_a_folder(dir_fd, name, err));
  }
  return fd;
}

// A folder the job end uses must be ours and private: other users could otherwise read frames or plant
// files. An existing folder with looser permissions is tightened.
Result<void> make_private(int fd, const std::string& shown) {
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    return fail(Errc::io_error, "'" + shown + "': " + base::errno_text(errno));
  }
  if (st.st_uid != geteuid()) {
    return fail(Errc::invalid_argument, "'" + shown + "' belongs to uid " + std::to_string(st.st_uid) +
                                            ", not to this user (uid " + std::to_string(geteuid()) +
                                            "); refusing to use it");
  }
  if ((st.st_mode & 07777) != private_dir_mode && fchmod(fd, private_dir_mode) != 0) {
    return fail(Errc::io_error, "'" + shown + "': cannot make it private (0700): " + base::errno_text(errno));
  }
  return ok();
}

Result<UniqueFd> create_folder(int parent_fd, const char* name, const std::string& shown) {
  if (mkdirat(parent_fd, name, private_dir_mode) != 0 && errno != EEXIST) {
    return fail(Errc::io_error, "cannot create '" + shown + "': " + base::errno_text(errno));
  }
  auto fd = open_folder(parent_fd, name, shown);
  if (!fd) {
    return fail(std::move(fd.error()));
  }
  if (auto made = make_private(fd->get(), shown); !made) {
    return fail(std::move(made.error()));
  }
  return fd;
}

int remove_entry_at_depth(int dir_fd, const std::string& name, int depth) noexcept {
  if (unlinkat(dir_fd, name.c_str(), 0) == 0) {
    return 0;
  }
  int err = errno;
  if (err == ENOENT) {
    return 0;
  }
  if (err != EISDIR && err != EPERM) {
    return err;
  }
  if (depth >= max_remove_depth) {
    return ELOOP;
  }
  UniqueFd sub(openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!sub) {
    return errno;
  }
  auto entries = list_dir(sub.get());
  if (!entries) {
    return EIO;
  }
  for (const auto& entry : *entries) {
    remove_entry_at_depth(sub.get(), entry, depth + 1);
  }
  if (unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return errno;
  }
  return 0;
}

void remove_all_in(int dir_fd) noexcept {
  auto entries = list_dir(dir_fd);
  if (entries) {
    for (const auto& entry : *entries) {
      remove_entry(dir_fd, entry);
    }
  }
}

}  // namespace

std::string_view side_name(PipeSide side) noexcept {
  return side == PipeSide::job ? "job" : "trainer";
}

PipeSide peer_of(PipeSide side) noexcept {
  return side == PipeSide::job ? PipeSide::trainer : PipeSide::job;
}

const char* inbox_name(PipeSide side) noexcept {
  return side == PipeSide::job ? to_job_dir : to_trainer_dir;
}

const char* marker_name(PipeSide side) noexcept {
  return side == PipeSide::job ? "closed.job" : "closed.trainer";
}

std::string hex64(std::uint64_t value) {
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i) {
    out[static_cast<std::size_t>(i)] = hex_digits[value & 0xf];
    value >>= 4;
  }
  return out;
}

std::optional<std::uint64_t> parse_hex64(std::string_view text) noexcept {
  if (text.size() != 16) {
    return std::nullopt;
  }
  std::uint64_t value = 0;
  for (char c : text) {
    int digit = hex_value(c);
    if (digit < 0) {
      return std::nullopt;
    }
    value = (value << 4) | static_cast<std::uint64_t>(digit);
  }
  return value;
}

std::string frame_name(std::uint64_t epoch, std::uint64_t seq) {
  return hex64(epoch) + "-" + hex64(seq) + ".frame";
}

std::optional<FrameName> parse_frame_name(std::string_view name) noexcept {
  // Exactly 16 hex, '-', 16 hex, ".frame": 39 bytes, nothing else (no "..", no '/', no odd bytes).
  constexpr std::string_view suffix = ".frame";
  if (name.size() != 16 + 1 + 16 + suffix.size() || name[16] != '-' || name.substr(33) != suffix) {
    return std::nullopt;
  }
  auto epoch = parse_hex64(name.substr(0, 16));
  auto seq = parse_hex64(name.substr(17, 16));
  if (!epoch || !seq) {
    return std::nullopt;
  }
  return FrameName{*epoch, *seq};
}

std::string tmp_name(PipeSide side, std::uint64_t epoch, std::uint64_t seq) {
  return tmp_prefix(side) + hex64(epoch) + "-" + hex64(seq) + ".part";
}

std::string tmp_prefix(PipeSide side) {
  return std::string(side_name(side)) + "-";
}

std::string printable(std::string_view name) {
  constexpr std::size_t max_shown = 120;
  std::string out;
  for (std::size_t i = 0; i < name.size() && i < max_shown; ++i) {
    auto byte = static_cast<unsigned char>(name[i]);
    if (byte < 0x20 || byte >= 0x7f || byte == '\'' || byte == '\\') {
      out += "\\x";
      out += hex_digits[byte >> 4];
      out += hex_digits[byte & 0xf];
    } else {
      out += static_cast<char>(byte);
    }
  }
  if (name.size() > max_shown) {
    out += "...";
  }
  return out;
}

int write_all(int fd, const void* data, std::size_t size) noexcept {
  const auto* at = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, at, size);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    at += n;
    size -= static_cast<std::size_t>(n);
  }
  return 0;
}

std::string kind_of_mode(unsigned mode) {
  if (S_ISLNK(mode)) {
    return "a symlink";
  }
  if (S_ISFIFO(mode)) {
    return "a fifo";
  }
  if (S_ISDIR(mode)) {
    return "a folder";
  }
  if (S_ISSOCK(mode)) {
    return "a socket";
  }
  if (S_ISCHR(mode)) {
    return "a character device";
  }
  if (S_ISBLK(mode)) {
    return "a block device";
  }
  if (S_ISREG(mode)) {
    return "a regular file";
  }
  return "not a regular file";
}

std::string OpenRoot::shown(const char* folder, std::string_view name) const {
  return path + "/" + folder + "/" + printable(name);
}

Result<OpenRoot> create_root(const std::filesystem::path& root) {
  OpenRoot out;
  out.path = root.string();
  std::error_code ec;
  std::filesystem::create_directories(root.parent_path(), ec);
  if (ec) {
    return fail(Errc::io_error, "cannot create '" + root.parent_path().string() + "': " + ec.message());
  }
  UniqueFd parent(open(root.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!parent) {
    return fail(Errc::io_error,
                "cannot open '" + root.parent_path().string() + "': " + base::errno_text(errno));
  }
  auto base = root.filename().string();
  auto root_fd = create_folder(parent.get(), base.c_str(), out.path);
  if (!root_fd) {
    return fail(std::move(root_fd.error()));
  }
  out.root = std::move(*root_fd);
  UniqueFd* slots[] = {&out.to_job, &out.to_trainer, &out.tmp};
  for (std::size_t i = 0; i < std::size(folders); ++i) {
    auto fd = create_folder(out.root.get(), folders[i], out.path + "/" + folders[i]);
    if (!fd) {
      return fail(std::move(fd.error()));
    }
    *slots[i] = std::move(*fd);
  }
  return out;
}

Result<OpenRoot> open_root(const std::filesystem::path& root) {
  OpenRoot out;
  out.path = root.string();
  UniqueFd parent(open(root.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!parent) {
    int err = errno;
    return fail(err == ENOENT ? Errc::not_found : Errc::io_error,
                "cannot open '" + root.parent_path().string() + "': " + base::errno_text(err));
  }
  auto base = root.filename().string();
  auto root_fd = open_folder(parent.get(), base.c_str(), out.path);
  if (!root_fd) {
    return fail(std::move(root_fd.error()));
  }
  out.root = std::move(*root_fd);
  UniqueFd* slots[] = {&out.to_job, &out.to_trainer, &out.tmp};
  for (std::size_t i = 0; i < std::size(folders); ++i) {
    auto fd = open_folder(out.root.get(), folders[i], out.path + "/" + folders[i]);
    if (!fd) {
      return fail(std::move(fd.error()));
    }
    *slots[i] = std::move(*fd);
  }
  return out;
}

Result<std::vector<std::string>> list_dir(int dir_fd) {
  // A fresh open file description, so listing never disturbs another reader's position in dir_fd.
  int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return fail(Errc::io_error, "cannot list a pipe folder: " + base::errno_text(errno));
  }
  DIR* dir = fdopendir(fd);
  if (dir == nullptr) {
    int err = errno;
    ::close(fd);
    return fail(Errc::io_error, "cannot list a pipe folder: " + base::errno_text(err));
  }
  std::vector<std::string> names;
  while (const dirent* entry = readdir(dir)) {
    std::string_view name = entry->d_name;
    if (name != "." && name != "..") {
      names.emplace_back(name);
    }
  }
  closedir(dir);
  return names;
}

int remove_entry(int dir_fd, const std::string& name) noexcept {
  try {
    return remove_entry_at_depth(dir_fd, name, 0);
  } catch (...) {
    return ENOMEM;
  }
}

Result<void> write_small_file(const OpenRoot& root, const std::string& tmp, const char* name,
                              std::string_view content) {
  unlinkat(root.tmp.get(), tmp.c_str(), 0);
  UniqueFd fd(
      openat(root.tmp.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) {
    return fail(errno == ENOENT ? Errc::closed : Errc::io_error,
                "cannot write '" + root.shown("tmp", tmp) + "': " + base::errno_text(errno));
  }
  int err = write_all(fd.get(), content.data(), content.size());
  if (err == 0 && ::close(fd.release()) != 0) {
    err = errno;
  }
  if (err == 0 && renameat(root.tmp.get(), tmp.c_str(), root.root.get(), name) != 0) {
    err = errno;
  }
  if (err != 0) {
    unlinkat(root.tmp.get(), tmp.c_str(), 0);
    return fail(err == ENOENT ? Errc::closed : Errc::io_error,
                "cannot write '" + root.path + "/" + name + "': " + base::errno_text(err));
  }
  return ok();
}

Result<std::string> read_small_file(int dir_fd, const char* name, std::size_t max) {
  UniqueFd fd(openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd) {
    int err = errno;
    return fail(err == ENOENT ? Errc::not_found : Errc::io_error, base::errno_text(err));
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) {
    return fail(Errc::io_error, base::errno_text(errno));
  }
  if (!S_ISREG(st.st_mode) || static_cast<std::size_t>(st.st_size) > max) {
    return fail(Errc::malformed, "not a small regular file");
  }
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    got += static_cast<std::size_t>(n);
  }
  text.resize(got);
  return text;
}

Result<std::uint64_t> read_session(const OpenRoot& root) {
  auto text = read_small_file(root.root.get(), session_file, 64);
  if (!text) {
    return fail(text.error().code, "'" + root.path + "/" + session_file + "': " + text.error().message);
  }
  std::string_view view = *text;
  if (!view.empty() && view.back() == '\n') {
    view.remove_suffix(1);
  }
  auto epoch = parse_hex64(view);
  if (!epoch) {
    return fail(Errc::malformed, "'" + root.path + "/" + session_file + "' does not name a session epoch");
  }
  return *epoch;
}

std::size_t clear_for_new_session(const OpenRoot& root) {
  for (const char* marker : markers) {
    unlinkat(root.root.get(), marker, 0);
  }
  std::size_t removed = 0;
  for (int inbox : {root.to_job.get(), root.to_trainer.get()}) {
    auto entries = list_dir(inbox);
    if (!entries) {
      continue;
    }
    for (const auto& name : *entries) {
      if (parse_frame_name(name) && remove_entry(inbox, name) == 0) {
        ++removed;
      }
    }
  }
  remove_all_in(root.tmp.get());
  return removed;
}

std::string remove_root(const OpenRoot& root) {
  for (int folder : {root.tmp.get(), root.to_job.get(), root.to_trainer.get()}) {
    remove_all_in(folder);
  }
  for (const char* folder : folders) {
    unlinkat(root.root.get(), folder, AT_REMOVEDIR);
  }
  for (const char* marker : markers) {
    unlinkat(root.root.get(), marker, 0);
  }
  unlinkat(root.root.get(), session_file, 0);
  if (rmdir(root.path.c_str()) != 0 && errno != ENOENT) {
    return base::errno_text(errno);
  }
  return {};
}

}  // namespace ember::file_pipe
