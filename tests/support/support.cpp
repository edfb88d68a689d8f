#include "support.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <stdexcept>

#include <ember/plugin.hpp>

EMBER_DECLARE_STATIC_PLUGIN(memory_pipe);
EMBER_DECLARE_STATIC_PLUGIN(fake_launcher);
EMBER_DECLARE_STATIC_PLUGIN(echo_applet);
EMBER_DECLARE_STATIC_PLUGIN(identity_converter);

extern char** environ;

namespace ember::test {

namespace fs = std::filesystem;

TempDir::TempDir() {
  std::string pattern = (fs::temp_directory_path() / "ember-test-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed");
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

fs::path TempDir::write(const std::string& name, const std::string& text) const {
  auto file = path_ / name;
  fs::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary) << text;
  return file;
}

std::unique_ptr<kernel::Kernel> static_kernel() {
  kernel::KernelSettings settings;
  settings.use_default_paths = false;
  settings.use_env_path = false;
  settings.log.level = LogLevel::warn;
  auto k = std::make_unique<kernel::Kernel>(std::move(settings));
  for (auto* d : {ember_plugin_descriptor_memory_pipe(), ember_plugin_descriptor_fake_launcher(),
                  ember_plugin_descriptor_echo_applet(), ember_plugin_descriptor_identity_converter()}) {
    auto added = k->add_static(d, "<static>");
    if (!added) {
      throw std::runtime_error(added.error().message);
    }
  }
  return k;
}

std::unique_ptr<kernel::Kernel> kernel_with_paths(std::vector<fs::path> paths, const fs::path& workspace) {
  kernel::KernelSettings settings;
  settings.workspace = workspace;
  settings.subs.workspace = workspace.string();
  settings.plugin_paths = std::move(paths);
  settings.use_default_paths = false;
  settings.use_env_path = false;
  settings.log.level = LogLevel::warn;
  auto k = std::make_unique<kernel::Kernel>(std::move(settings));
  k->load_plugins();
  return k;
}

fs::path build_root() {
  return EMBER_TEST_BUILD_ROOT;
}
fs::path source_root() {
  return EMBER_TEST_SOURCE_ROOT;
}

namespace {

void drain(int fd, std::string& into) {
  char buffer[4096];
  ssize_t n = read(fd, buffer, sizeof buffer);
  if (n > 0) {
    into.append(buffer, static_cast<std::size_t>(n));
  }
}

}  // namespace

RunResult run_program(const std::vector<std::string>& argv, int timeout_s) {
  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe2 failed");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  std::vector<char*> args;
  for (const auto& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  RunResult result;
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    result.err = "posix_spawn failed: " + std::to_string(rc);
    return result;
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  bool timed_out = false;
  while (open_fds > 0) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    if (poll(fds, 2, static_cast<int>(left.count())) < 0) {
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP)) != 0) {
        std::string& into = i == 0 ? result.out : result.err;
        std::size_t before = into.size();
        drain(fds[i].fd, into);
        if (into.size() == before) {
          close(fds[i].fd);
          fds[i].fd = -1;
          --open_fds;
        }
      }
    }
  }
  if (timed_out) {
    kill(pid, SIGKILL);
  }
  for (auto& f : fds) {
    if (f.fd >= 0) {
      close(f.fd);
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = timed_out ? -1 : (WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  return result;
}

}  // namespace ember::test
