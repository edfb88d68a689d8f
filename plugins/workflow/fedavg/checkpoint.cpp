#include "checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <string_view>
#include <system_error>

#include "wire/safetensors.hpp"

namespace ember::fedavg {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t chunk_bytes = std::size_t{4} << 20;
constexpr std::string_view prefix = "round-";
constexpr std::string_view suffix = ".safetensors";
constexpr std::string_view temporary_marker = ".tmp-";

class Fd {
 public:
  explicit Fd(int fd) noexcept : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  // Closes now, reporting close()'s result (a late write error can surface there).
  int close() noexcept {
    int rc = fd_ >= 0 ? ::close(fd_) : 0;
    fd_ = -1;
    return rc;
  }
  void reset() noexcept { close(); }

 private:
  int fd_;
};

tl::unexpected<Error> io_error(const std::string& what, const fs::path& file, int error) {
  return fail(Errc::io_error, what + " " + file.string() + ": " + std::strerror(error));
}

Result<void> write_all(int fd, const std::byte* data, std::size_t size, const fs::path& file) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return io_error("cannot write", file, errno);
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return ok();
}

// The round of a checkpoint file's name ("round-12.safetensors"), or nullopt for any other name.
std::optional<std::uint64_t> round_of(std::string_view name) {
  if (!name.starts_with(prefix) || !name.ends_with(suffix)) {
    return std::nullopt;
  }
  auto digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  std::uint64_t round = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), round);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) {
    return std::nullopt;
  }
  return round;
}

Result<void> write_temporary(int fd, const wire::SafetensorsSource& source, const fs::path& temporary) {
  if (::fchmod(fd, 0600) != 0) {  // the server's model is its own (a site's umask cannot widen it)
    return io_error("cannot set the mode of", temporary, errno);
  }
  std::vector<std::byte> buffer(
      static_cast<std::size_t>(std::min<std::uint64_t>(chunk_bytes, source.size())));
  for (std::uint64_t offset = 0; offset < source.size();) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), source.size() - offset));
    auto read = source.read(offset, std::span(buffer.data(), n));
    if (!read) {
      return fail(std::move(read.error()));
    }
    auto written = write_all(fd, buffer.data(), n, temporary);
    if (!written) {
      return written;
    }
    offset += n;
  }
  if (::fsync(fd) != 0) {
    return io_error("cannot fsync", temporary, errno);
  }
  return ok();
}

}  // namespace

Result<StoredModel> read_model(const fs::path& file) {
  Fd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    int error = errno;
    if (error == ENOENT) {
      return fail(Errc::not_found, file.string() + ": no such file");
    }
    return io_error("cannot open", file, error);
  }
  wire::CollectingConsumer consumer;
  wire::SafetensorsStreamReader reader(consumer);
  std::vector<std::byte> buffer(chunk_bytes);
  for (;;) {
    ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return io_error("cannot read", file, errno);
    }
    if (n == 0) {
      break;
    }
    auto fed = reader.feed(std::span(buffer.data(), static_cast<std::size_t>(n)));
    if (!fed) {
      return fail(fed.error().code, file.string() + ": " + fed.error().message);
    }
  }
  auto finished = reader.finish();
  if (!finished) {
    return fail(finished.error().code, file.string() + ": " + finished.error().message);
  }
  return StoredModel{consumer.take_tensors(), consumer.take_metadata()};
}

Result<void> write_bundle(const fs::path& file, const TaskData& bundle) {
  // With the data's checksum: a resumed run must not train on a model whose bytes were damaged at rest.
  auto source = wire::make_params_bundle(bundle, true);
  if (!source) {
    return fail(source.error().code, "cannot write " + file.string() + ": " + source.error().message);
  }
  fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return fail(Errc::io_error, "cannot create the folder " + dir.string() + ": " + ec.message());
  }
  std::string pattern = file.string() + std::string(temporary_marker) + "XXXXXX";
  Fd fd(::mkostemp(pattern.data(), O_CLOEXEC));
  if (!fd) {
    return io_error("cannot create a temporary file beside", file, errno);
  }
  fs::path temporary = pattern;
  auto written = write_temporary(fd.get(), *source, temporary);
  if (written && fd.close() != 0) {
    written = io_error("cannot close", temporary, errno);
  }
  if (written && ::rename(temporary.c_str(), file.c_str()) != 0) {
    written = io_error("cannot rename " + temporary.string() + " to", file, errno);
  }
  if (!written) {
    ::unlink(temporary.c_str());
    return written;
  }
  // The rename is durable once the folder's entry is on disk.
  Fd folder(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!folder || ::fsync(folder.get()) != 0) {
    return io_error("cannot fsync the folder of", file, errno);
  }
  return ok();
}

fs::path checkpoint_path(const fs::path& dir, std::uint64_t round) {
  return dir / (std::string(prefix) + std::to_string(round) + std::string(suffix));
}

Result<std::vector<std::uint64_t>> list_checkpoints(const fs::path& dir) {
  std::vector<std::uint64_t> rounds;
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    return rounds;
  }
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    auto round = round_of(it->path().filename().string());
    if (round && it->is_regular_file(ec)) {
      rounds.push_back(*round);
    }
  }
  if (ec) {
    return fail(Errc::io_error, "cannot list the checkpoints in " + dir.string() + ": " + ec.message());
  }
  std::sort(rounds.rbegin(), rounds.rend());
  return rounds;
}

Result<std::optional<Checkpoint>> newest_checkpoint(const fs::path& dir,
                                                    const std::function<void(const std::string&)>& skipped) {
  auto rounds = list_checkpoints(dir);
  if (!rounds) {
    return fail(std::move(rounds.error()));
  }
  for (auto round : *rounds) {
    auto file = checkpoint_path(dir, round);
    auto model = read_model(file);
    if (!model) {
      skipped(model.error().message);
      continue;
    }
    if (model->metadata.count(wire::bundle_keys::data_crc32c) == 0) {
      skipped(file.string() + ": it carries no checksum of its data (" + wire::bundle_keys::data_crc32c +
              "), so its bytes cannot be trusted");
      continue;
    }
    auto data = wire::params_bundle_from(model->tensors, model->metadata);  // checks the data's checksum
    if (!data) {
      skipped(file.string() + ": " + data.error().message);
      continue;
    }
    if (model->metadata.count(wire::bundle_keys::round) == 0 || data->round != round) {
      skipped(file.string() + ": its metadata does not say round " + std::to_string(round));
      continue;
    }
    return std::optional<Checkpoint>(Checkpoint{file, std::move(*data)});
  }
  return std::optional<Checkpoint>();
}

std::vector<std::string> prune_checkpoints(const fs::path& dir, std::uint64_t first_kept) {
  std::vector<std::string> problems;
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    return problems;
  }
  std::vector<fs::path> doomed;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    auto name = it->path().filename().string();
    auto round = round_of(name);
    bool stale = name.starts_with(prefix) && name.find(temporary_marker) != std::string::npos;
    if ((round && *round < first_kept) || stale) {
      doomed.push_back(it->path());
    }
  }
  if (ec) {
    problems.push_back("cannot list " + dir.string() + ": " + ec.message());
  }
  for (const auto& file : doomed) {
    if (!fs::remove(file, ec) && ec) {
      problems.push_back("cannot remove " + file.string() + ": " + ec.message());
    }
  }
  return problems;
}

}  // namespace ember::fedavg
