#include "federation.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "base/unique_fd.hpp"

namespace ember::kernel::fed {

Result<cell::Config> cell_config(const SiteConfig& site, std::string fqcn, std::string parent,
                                 std::string listen) {
  if (!site.cell) {
    return fail(
        Errc::invalid_config,
        site.file.string() + ": no [cell] table: a daemon needs a startup kit's kit.toml (ember provision)");
  }
  const auto& c = *site.cell;
  cell::Config config;
  config.fqcn = std::move(fqcn);
  config.parent = std::move(parent);
  config.listen = std::move(listen);
  config.parent_name = c.server_name;
  config.insecure = c.insecure;
  if (!c.insecure || (!c.ca.empty() && !c.cert.empty() && !c.key.empty())) {
    if (c.ca.empty() || c.cert.empty() || c.key.empty()) {
      return fail(Errc::invalid_config,
                  site.file.string() + ": cell.ca, cell.cert and cell.key are required (or insecure = true)");
    }
    config.tls = cell::TlsFiles{c.ca, c.cert, c.key};
    config.insecure = false;
  }
  config.packet_bytes = static_cast<std::uint32_t>(c.packet_bytes);
  config.max_message_bytes = c.max_message_bytes;
  config.connect_timeout = c.connect_timeout;
  config.keepalive = c.keepalive;
  config.keepalive_timeout = c.keepalive_timeout;
  config.backoff_initial = c.backoff_initial;
  config.backoff_max = c.backoff_max;
  return config;
}

std::string random_token() {
  unsigned char bytes[32];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    }
  }
  static constexpr char hex[] = "0123456789abcdef";
  std::string text;
  for (unsigned char b : bytes) {
    text += hex[b >> 4];
    text += hex[b & 15];
  }
  return text;
}

Result<std::string> read_token_file(const std::filesystem::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    return fail(Errc::io_error, file.string() + ": cannot read the job token: " + std::strerror(errno));
  }
  if ((st.st_mode & 077) != 0) {
    return fail(Errc::invalid_argument,
                file.string() + ": the job token is readable by others (want mode 0600)");
  }
  auto text = read_text_file(file, 4096);
  if (!text) {
    return fail(std::move(text.error()));
  }
  while (!text->empty() && (text->back() == '\n' || text->back() == '\r')) {
    text->pop_back();
  }
  if (text->empty()) {
    return fail(Errc::invalid_argument, file.string() + ": the job token file is empty");
  }
  return *text;
}

Result<void> write_token_file(const std::filesystem::path& file, const std::string& token) {
  base::UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) {
    return fail(Errc::io_error, file.string() + ": cannot write the job token: " + std::strerror(errno));
  }
  const std::string line = token + "\n";
  if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    return fail(Errc::io_error, file.string() + ": cannot write the job token: " + std::strerror(errno));
  }
  return ok();
}

bool sleep_for(std::chrono::milliseconds d, std::stop_token stop) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  cv.wait_for(lock, stop, d, [] { return false; });
  return !stop.stop_requested();
}

}  // namespace ember::kernel::fed
