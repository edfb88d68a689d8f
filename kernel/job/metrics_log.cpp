#include "metrics_log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include <nlohmann/json.hpp>

namespace ember::kernel {

Result<std::unique_ptr<MetricsLog>> MetricsLog::open(const std::filesystem::path& file) {
  // Created here, not through a symlink planted in the workspace; its mode is 0666 less the umask (0600 under
  // the site's default umask 0077). The stream then appends to it.
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0666);
  if (fd < 0) {
    return fail(Errc::io_error, file.string() + ": cannot open the metrics file: " + std::strerror(errno));
  }
  ::close(fd);
  std::ofstream out(file, std::ios::app);
  if (!out) {
    return fail(Errc::io_error, file.string() + ": cannot open the metrics file for appending");
  }
  return std::unique_ptr<MetricsLog>(new MetricsLog(file, std::move(out)));
}

void MetricsLog::write(const std::string& source, const std::string& key, double value, std::uint64_t round,
                       std::optional<std::uint64_t> step) {
  nlohmann::json line{{"time", std::time(nullptr)}, {"source", source}, {"round", round}, {"key", key}};
  line["value"] = value;
  if (step) {
    line["step"] = *step;
  }
  std::lock_guard lock(mutex_);
  out_ << line.dump() << "\n" << std::flush;
}

void MetricsLog::record(const Event& event) {
  auto get = [&](const char* key) -> std::string {
    auto it = event.fields.find(key);
    return it != event.fields.end() ? it->second : std::string();
  };
  auto number = [](const std::string& text) -> std::optional<std::uint64_t> {
    std::uint64_t n = 0;
    auto [end, parsed] = std::from_chars(text.data(), text.data() + text.size(), n);
    return !text.empty() && parsed == std::errc() && end == text.data() + text.size() ? std::optional(n)
                                                                                      : std::nullopt;
  };
  write(get("site"), get("key"), std::strtod(get("value").c_str(), nullptr), number(get("round")).value_or(0),
        number(get("step")));
}

}  // namespace ember::kernel
