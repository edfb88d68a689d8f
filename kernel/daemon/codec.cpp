#include "codec.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>

#include "base/unique_fd.hpp"
#include "wire/safetensors.hpp"

namespace ember::kernel::fed {
namespace {

namespace fs = std::filesystem;

constexpr const char* folder_key = "ember.folder";

Result<std::vector<std::byte>> source_bytes(const wire::SafetensorsSource& source) {
  std::vector<std::byte> out(source.size());
  if (auto read = source.read(0, out); !read) {
    return fail(std::move(read.error()));
  }
  return out;
}

// Reads a whole bundle through the checked stream reader.
Result<wire::CollectingConsumer> read_bundle(std::span<const std::byte> bytes, std::string_view what) {
  wire::CollectingConsumer consumer;
  wire::SafetensorsStreamReader reader(consumer);
  auto fed = reader.feed(bytes);
  if (fed) {
    fed = reader.finish();
  }
  if (!fed) {
    return fail(Errc::malformed, std::string(what) + ": " + fed.error().message);
  }
  return consumer;
}

bool safe_relative(const std::string& path) {
  if (path.empty() || path.front() == '/' || path.find('\0') != std::string::npos || path.size() > 4096) {
    return false;
  }
  for (const auto& part : fs::path(path)) {
    const auto text = part.string();
    if (text.empty() || text == "." || text == ".." || text == "/") {
      return false;
    }
  }
  return true;
}

Result<void> write_private(const fs::path& file, std::span<const std::byte> bytes) {
  base::UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) {
    return fail(Errc::io_error, file.string() + ": cannot write: " + std::strerror(errno));
  }
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return fail(Errc::io_error, file.string() + ": cannot write: " + std::strerror(errno));
    }
    done += static_cast<std::size_t>(n);
  }
  return ok();
}

}  // namespace

Result<std::vector<std::byte>> encode_task(const TaskData& task) {
  auto source = wire::make_params_bundle(task);
  if (!source) {
    return fail(std::move(source.error()));
  }
  return source_bytes(*source);
}

Result<TaskData> decode_task(std::span<const std::byte> bytes, std::string_view what) {
  auto bundle = read_bundle(bytes, what);
  if (!bundle) {
    return fail(std::move(bundle.error()));
  }
  auto task = wire::params_bundle_from(bundle->tensors(), bundle->metadata());
  if (!task) {
    return fail(Errc::malformed, std::string(what) + ": " + task.error().message);
  }
  return task;
}

Result<void> read_folder(const fs::path& dir, const std::string& prefix, std::uint64_t max_bytes,
                         FileMap& files, std::uint64_t& total) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return fail(Errc::io_error, dir.string() + ": not a folder");
  }
  std::vector<std::pair<std::string, fs::path>> found;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const auto status = it->symlink_status(ec);
    if (ec) {
      break;
    }
    if (fs::is_directory(status)) {
      continue;
    }
    if (!fs::is_regular_file(status)) {
      return fail(Errc::invalid_argument,
                  it->path().string() + ": only regular files can be sent (not a link, socket or device)");
    }
    found.emplace_back(prefix + fs::relative(it->path(), dir).generic_string(), it->path());
  }
  if (ec) {
    return fail(Errc::io_error, dir.string() + ": cannot list: " + ec.message());
  }
  for (const auto& [name, path] : found) {
    const auto size = fs::file_size(path, ec);
    std::ifstream in(path, std::ios::binary);
    if (!in || ec) {
      return fail(Errc::io_error, path.string() + ": cannot read");
    }
    total += size;
    if (total > max_bytes) {
      return fail(Errc::invalid_argument, dir.string() + ": more than " + std::to_string(max_bytes) +
                                              " bytes of files (the limit for one transfer)");
    }
    auto bytes = std::make_shared<std::vector<std::byte>>(size);
    in.read(reinterpret_cast<char*>(bytes->data()), static_cast<std::streamsize>(size));
    if (static_cast<std::uint64_t>(in.gcount()) != size) {
      return fail(Errc::io_error, path.string() + ": changed while being read");
    }
    files[name] = std::move(bytes);
  }
  return ok();
}

Result<std::vector<std::byte>> pack_files(const FileMap& files) {
  std::vector<WireTensor> tensors;
  for (const auto& [name, bytes] : files) {
    WireTensor t;
    t.name = name;
    t.dtype = DType::U8;
    t.shape = {static_cast<std::int64_t>(bytes->size())};
    t.bytes = std::span<const std::byte>(bytes->data(), bytes->size());
    t.owner = bytes;
    tensors.push_back(std::move(t));
  }
  auto source = wire::SafetensorsSource::make(std::move(tensors), {{folder_key, "1"}});
  if (!source) {
    return fail(std::move(source.error()));
  }
  return source_bytes(*source);
}

Result<std::vector<std::byte>> pack_folder(const fs::path& dir, std::uint64_t max_bytes) {
  FileMap files;
  std::uint64_t total = 0;
  if (auto read = read_folder(dir, "", max_bytes, files, total); !read) {
    return fail(std::move(read.error()));
  }
  return pack_files(files);
}

Result<std::vector<std::string>> unpack_folder(std::span<const std::byte> bytes, const fs::path& dir,
                                               std::string_view what) {
  auto bundle = read_bundle(bytes, what);
  if (!bundle) {
    return fail(std::move(bundle.error()));
  }
  if (!bundle->metadata().contains(folder_key)) {
    return fail(Errc::malformed, std::string(what) + ": not a folder bundle (no " + folder_key + ")");
  }
  // Every name is checked before anything is written.
  std::vector<std::string> names;
  for (const auto& t : bundle->tensors()) {
    if (!safe_relative(t.name) || t.dtype != DType::U8 || t.shape.size() != 1) {
      return fail(Errc::malformed, std::string(what) + ": file '" + t.name +
                                       "' is not a plain relative path of U8 bytes (absolute, '.', '..')");
    }
    names.push_back(t.name);
  }
  for (const auto& t : bundle->tensors()) {
    const fs::path file = dir / t.name;
    std::error_code ec;
    fs::create_directories(file.parent_path(), ec);
    if (ec) {
      return fail(Errc::io_error, file.parent_path().string() + ": cannot create: " + ec.message());
    }
    ::chmod(file.parent_path().c_str(), 0700);
    if (auto written = write_private(file, t.bytes); !written) {
      return fail(std::move(written.error()));
    }
  }
  return names;
}

void put_error(wire::Headers& headers, const Error& error) {
  headers.emplace_back("error.code", std::to_string(static_cast<std::uint32_t>(error.code)));
  headers.emplace_back("error.message", error.message);
}

std::optional<Error> get_error(const wire::Headers& headers) {
  std::optional<Error> error;
  for (const auto& [k, v] : headers) {
    if (k == "error.code") {
      std::uint32_t code = 0;
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), code);
      if (!error) {
        error.emplace();
      }
      error->code = ec == std::errc{} && end == v.data() + v.size() &&
                            code <= static_cast<std::uint32_t>(Errc::internal)
                        ? static_cast<Errc>(code)
                        : Errc::internal;
    } else if (k == "error.message") {
      if (!error) {
        error.emplace();
        error->code = Errc::internal;
      }
      error->message = v;
    }
  }
  return error;
}

}  // namespace ember::kernel::fed
