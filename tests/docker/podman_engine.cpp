#include "podman_engine.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace ember::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

bool executable(const fs::path& path) {
  return ::access(path.c_str(), X_OK) == 0;
}

// Runs a program (no shell), its stdout and stderr together into `out`; killed after `timeout_s` seconds
// (then the exit code is -1). Self-contained, so the benchmark builds this file without the tests' support
// library.
PodmanEngine::Run run_program(const std::vector<std::string>& argv, int timeout_s) {
  PodmanEngine::Run result;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    result.out = "pipe2 failed";
    return result;
  }
  // Built before the fork: the child of a threaded process only makes async-signal-safe calls.
  std::vector<char*> args;
  for (const auto& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    int null_fd = ::open("/dev/null", O_RDONLY);
    ::dup2(null_fd, 0);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  if (pid < 0) {
    ::close(fds[0]);
    result.out = "fork failed";
    return result;
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  bool timed_out = false;
  char buffer[4096];
  while (true) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) {
      break;
    }
    ssize_t got = ::read(fds[0], buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got <= 0) {
      break;
    }
    result.out.append(buffer, static_cast<std::size_t>(got));
  }
  ::close(fds[0]);
  if (timed_out) {
    ::kill(pid, SIGKILL);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = timed_out ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

bool socket_answers(const fs::path& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return false;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

void write_private(const fs::path& file, const std::string& text) {
  std::ofstream(file, std::ios::binary) << text;
  fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write);
}

// Mount points at or below `dir`, deepest first (containers/storage leaves its overlay folder bind-mounted).
std::vector<std::string> mounts_under(const fs::path& dir) {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, point;
    fields >> id >> parent >> dev >> root >> point;
    if (point == dir.string() || point.starts_with(dir.string() + "/")) {
      out.push_back(point);
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.size() > b.size(); });
  return out;
}

}  // namespace

std::unique_ptr<PodmanEngine> PodmanEngine::start(std::string& why) {
  for (const char* tool : {"/usr/bin/podman", "/bin/busybox", "/usr/sbin/runc"}) {
    if (!executable(tool)) {
      why =
          std::string(tool) + " is not installed (scripts/deps.sh installs podman, runc and busybox-static)";
      return nullptr;
    }
  }
  std::string pattern = (fs::temp_directory_path() / "ember-podman-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    why = "cannot create a temporary folder: " + std::string(std::strerror(errno));
    return nullptr;
  }
  std::unique_ptr<PodmanEngine> engine(new PodmanEngine(pattern));
  if (!engine->setup(why)) {
    return nullptr;  // the destructor removes what setup made
  }
  return engine;
}

bool PodmanEngine::setup(std::string& why) {
  const std::string d = dir_.string();
  fs::create_directories(dir_ / "pm" / "tmp");
  // One configuration from the very first podman call: a store created with other settings makes every
  // container's cleanup fail and each run hang for 20 s (toolchain.md §5). runc, because crun refuses this
  // machine's hybrid cgroups; explicit ulimits, because raising them needs CAP_SYS_RESOURCE.
  write_private(dir_ / "containers.conf",
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n"
                "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
                "events_logfile_path = \"" +
                    d + "/pm/events.log\"\ntmp_dir = \"" + d + "/pm/tmp\"\n");
  write_private(dir_ / "storage.conf", "[storage]\ndriver = \"overlay\"\ngraphroot = \"" + d +
                                           "/pm/storage\"\nrunroot = \"" + d + "/pm/run\"\n");
  ::setenv("CONTAINERS_CONF", (dir_ / "containers.conf").c_str(), 1);
  ::setenv("CONTAINERS_STORAGE_CONF", (dir_ / "storage.conf").c_str(), 1);
  ::unsetenv("CONTAINER_HOST");

  // The image: static busybox and a few of its applets; /lib and /lib64 lead into /usr, for host programs.
  auto rootfs = dir_ / "rootfs";
  for (const char* sub : {"bin", "etc", "proc", "sys", "dev", "tmp", "usr"}) {
    fs::create_directories(rootfs / sub);
  }
  fs::copy_file("/bin/busybox", rootfs / "bin" / "busybox");
  for (const char* applet : {"sh", "echo", "sleep", "cat", "ls", "kill", "true", "printf", "env", "id"}) {
    fs::create_symlink("busybox", rootfs / "bin" / applet);
  }
  fs::create_symlink("usr/lib", rootfs / "lib");
  fs::create_symlink("usr/lib64", rootfs / "lib64");
  write_private(rootfs / "etc" / "passwd", "root:x:0:0:root:/tmp:/bin/sh\n");
  auto imported = run_program(
      {"/bin/sh", "-c", "tar -C '" + rootfs.string() + "' -c . | /usr/bin/podman import - " + image}, 120);
  if (imported.exit_code != 0) {
    why = "podman import failed: " + imported.out;
    return false;
  }
  auto tried = podman({"run", "--rm", "--network", "none", image, "sh", "-c", "exit 7"});
  if (tried.exit_code != 7) {
    why = "podman cannot run a container here (exit " + std::to_string(tried.exit_code) + "): " + tried.out;
    return false;
  }

  std::string log = (dir_ / "service.log").string();
  std::string where = "unix://" + socket().string();
  pid_t parent = ::getpid();
  service_ = ::fork();
  if (service_ < 0) {
    why = "cannot fork for podman system service: " + std::string(std::strerror(errno));
    return false;
  }
  if (service_ == 0) {
    // The service ends with this process, however it ends (a test killed by its timeout included).
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) {
      ::_exit(1);
    }
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (null_fd < 0 || log_fd < 0 || ::dup2(null_fd, 0) < 0 || ::dup2(log_fd, 1) < 0 ||
        ::dup2(log_fd, 2) < 0) {
      ::_exit(127);
    }
    ::execl("/usr/bin/podman", "podman", "system", "service", "--time=0", where.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  for (int i = 0; i < 300 && !socket_answers(socket()); ++i) {
    int status = 0;
    if (::waitpid(service_, &status, WNOHANG) == service_) {
      service_ = -1;
      std::ifstream in(log);
      why = "podman system service exited at once: " +
            std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      return false;
    }
    std::this_thread::sleep_for(50ms);
  }
  if (!socket_answers(socket())) {
    why = "podman system service did not answer on " + socket().string() + " within 15 s";
    return false;
  }
  return true;
}

PodmanEngine::~PodmanEngine() {
  if (fs::exists(dir_ / "storage.conf")) {
    podman({"rm", "--all", "--force", "--time", "0"}, 120);
  }
  stop_service();
  for (const auto& point : mounts_under(dir_)) {
    ::umount2(point.c_str(), MNT_DETACH);
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void PodmanEngine::stop_service() {
  if (service_ <= 0) {
    return;
  }
  ::kill(service_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 200; ++i) {
    if (::waitpid(service_, &status, WNOHANG) == service_) {
      service_ = -1;
      return;
    }
    std::this_thread::sleep_for(50ms);
  }
  ::kill(service_, SIGKILL);
  ::waitpid(service_, &status, 0);
  service_ = -1;
}

PodmanEngine::Run PodmanEngine::podman(const std::vector<std::string>& args, int timeout_s) const {
  std::vector<std::string> argv{"/usr/bin/podman"};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_program(argv, timeout_s);
}

std::vector<std::string> PodmanEngine::containers_with_label(const std::string& label) const {
  auto run = podman({"ps", "--all", "--quiet", "--no-trunc", "--filter", "label=" + label});
  std::vector<std::string> ids;
  if (run.exit_code != 0) {
    ids.push_back("<podman ps failed: " + run.out + ">");  // never an empty list by mistake
    return ids;
  }
  std::istringstream lines(run.out);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.empty()) {
      ids.push_back(line);
    }
  }
  return ids;
}

}  // namespace ember::test
