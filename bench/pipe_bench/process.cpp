#include "process.hpp"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

extern char** environ;

namespace ember::bench {

namespace {

using namespace std::chrono_literals;

// The environment without EMBER_* variables, so a developer's settings cannot change what is measured.
std::vector<char*> clean_environment() {
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "EMBER_", 6) != 0) {
      env.push_back(*e);
    }
  }
  env.push_back(nullptr);
  return env;
}

}  // namespace

std::string self_exe() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("/proc/self/exe") : path.string();
}

std::uint64_t peak_rss_kib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("VmHWM:")) {
      return std::strtoull(line.c_str() + 6, nullptr, 10);  // "VmHWM:    123456 kB"
    }
  }
  return 0;
}

Result<std::unique_ptr<Child>> Child::spawn(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  auto env = clean_environment();
  pid_t pid = 0;
  if (int rc = posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), env.data()); rc != 0) {
    return fail(Errc::io_error, "cannot start " + argv[0] + ": " + std::strerror(rc));
  }
  return std::unique_ptr<Child>(new Child(pid));
}

Child::~Child() {
  if (!status_) {
    kill(pid_, SIGKILL);
    wait_for(10s);
  }
}

std::optional<int> Child::wait_for(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!status_) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      status_ = status;
      break;
    }
    if (r < 0 && errno != EINTR) {
      status_ = 255 << 8;  // not our child any more: nothing left to reap
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      break;
    }
    std::this_thread::sleep_for(5ms);
  }
  return status_;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) {
    return "exit " + std::to_string(WEXITSTATUS(status));
  }
  if (WIFSIGNALED(status)) {
    return "signal " + std::to_string(WTERMSIG(status));
  }
  return "status " + std::to_string(status);
}

Result<void> expect_clean_exit(Child& child, std::chrono::milliseconds timeout, const std::string& what) {
  auto status = child.wait_for(timeout);
  if (!status) {
    return fail(Errc::timeout, what + " (pid " + std::to_string(child.pid()) + ") still runs after " +
                                   std::to_string(timeout.count()) + " ms");
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return fail(Errc::internal, what + " ended with " + describe_status(*status));
  }
  return ok();
}

Result<TempDir> TempDir::make(const std::filesystem::path& parent, const std::string& prefix) {
  std::string pattern = (parent / (prefix + ".XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr) {
    return fail(Errc::io_error, "mkdtemp " + pattern + ": " + std::strerror(errno));
  }
  return TempDir(pattern);
}

TempDir::~TempDir() {
  if (!path_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
}

}  // namespace ember::bench
