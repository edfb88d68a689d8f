#include "spawner.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <exception>
#include <optional>
#include <system_error>

#include <base/strings.hpp>

namespace ember::process_launcher {

struct Spawner::Request {
  const ChildPlan* plan;
  const std::string* label;
  std::optional<Result<Child>> result;
};

namespace {

// What the child reports through its error pipe when it cannot reach exec.
enum class Stage : int { setup = 1, chdir = 2, exec = 3 };
struct ChildFailure {
  Stage stage;
  int error;
};

// Everything the child touches, as plain pointers and numbers: it must not allocate after fork.
struct ChildSetup {
  char* const* argv;
  char* const* envp;
  char* const* candidates;
  const char* cwd;
  int null_fd;
  int out_fd;
  int err_fd;
  int report_fd;
  pid_t parent;
  int max_fd;
};

std::vector<char*> pointers(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const auto& s : strings) {
    out.push_back(const_cast<char*>(s.c_str()));
  }
  out.push_back(nullptr);
  return out;
}

// Moves a descriptor above 2, so the child's dup2 onto 0, 1 and 2 never clobbers one it still needs (the
// launcher may run with a standard stream closed).
UniqueFd above_stdio(int fd) {
  if (fd < 0 || fd > 2) {
    return UniqueFd(fd);
  }
  UniqueFd low(fd);
  return UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 3));
}

Result<std::pair<UniqueFd, UniqueFd>> make_pipe(bool nonblocking_read) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return fail(Errc::io_error, "launcher.process: cannot create a pipe: " + base::errno_text(errno));
  }
  UniqueFd read_end = above_stdio(fds[0]);
  UniqueFd write_end = above_stdio(fds[1]);
  if (!read_end || !write_end) {
    return fail(Errc::io_error, "launcher.process: cannot create a pipe: " + base::errno_text(errno));
  }
  if (nonblocking_read && fcntl(read_end.get(), F_SETFL, O_NONBLOCK) != 0) {
    return fail(Errc::io_error, "launcher.process: cannot set up a pipe: " + base::errno_text(errno));
  }
  return std::pair{std::move(read_end), std::move(write_end)};
}

[[noreturn]] void report_and_exit(int report_fd, Stage stage, int error) noexcept {
  ChildFailure failure{stage, error};
  [[maybe_unused]] ssize_t written = write(report_fd, &failure, sizeof failure);
  _exit(127);
}

// Runs in the child between fork and exec: async-signal-safe calls only.
[[noreturn]] void run_child(const ChildSetup& setup) noexcept {
  int report = setup.report_fd;
  if (setsid() < 0) {
    report_and_exit(report, Stage::setup, errno);
  }
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
    report_and_exit(report, Stage::setup, errno);
  }
  if (getppid() != setup.parent) {
    _exit(127);  // the launcher died before prctl: nothing would ever stop this child
  }
  // Ignored signals and the blocked mask survive exec; the program starts with the defaults instead of
  // whatever the launcher's threads set (the spawner thread blocks everything).
  struct sigaction defaults {};
  defaults.sa_handler = SIG_DFL;
  sigemptyset(&defaults.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) {
      sigaction(sig, &defaults, nullptr);
    }
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (chdir(setup.cwd) != 0) {
    report_and_exit(report, Stage::chdir, errno);
  }
  if (dup2(setup.null_fd, 0) < 0 || dup2(setup.out_fd, 1) < 0 || dup2(setup.err_fd, 2) < 0) {
    report_and_exit(report, Stage::setup, errno);
  }
  if (report != 3) {
    if (dup3(report, 3, O_CLOEXEC) < 0) {
      report_and_exit(report, Stage::setup, errno);
    }
    report = 3;
  }
  if (close_range(4, ~0U, 0) != 0) {
    for (int fd = 4; fd < setup.max_fd; ++fd) {
      close(fd);
    }
  }
  // The PATH search of execvp, over candidates resolved before the fork.
  int error = ENOENT;
  bool denied = false;
  for (char* const* path = setup.candidates; *path != nullptr; ++path) {
    execve(*path, setup.argv, setup.envp);
    if (errno == EACCES) {
      denied = true;
    } else if (errno != ENOENT && errno != ENOTDIR) {
      error = errno;
      denied = false;
      break;
    }
  }
  report_and_exit(report, Stage::exec, denied ? EACCES : error);
}

int max_fd_for_fallback() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY ||
      limit.rlim_cur > (1u << 20)) {
    return 1 << 20;
  }
  return static_cast<int>(limit.rlim_cur);
}

void reap(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

Error child_error(const ChildPlan& plan, const std::string& label, ChildFailure failure) {
  std::string where = "launcher.process: '" + label + "': ";
  std::string cause = base::errno_text(failure.error);
  Errc code = failure.error == ENOENT ? Errc::not_found : Errc::io_error;
  switch (failure.stage) {
    case Stage::exec:
      return Error{code, where + "cannot start '" + plan.argv.front() + "': " + cause};
    case Stage::chdir:
      return Error{code, where + "cannot change to directory '" + plan.cwd + "': " + cause};
    case Stage::setup:
      break;
  }
  return Error{Errc::io_error, where + "cannot set up the child for '" + plan.argv.front() + "': " + cause};
}

Result<Child> start_child(const ChildPlan& plan, const std::string& label) {
  auto argv = pointers(plan.argv);
  auto envp = pointers(plan.env);
  auto candidates = pointers(plan.candidates);
  UniqueFd null_fd = above_stdio(open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!null_fd) {
    return fail(Errc::io_error, "launcher.process: cannot open /dev/null: " + base::errno_text(errno));
  }
  auto out = make_pipe(true);
  if (!out) {
    return fail(std::move(out.error()));
  }
  auto err = make_pipe(true);
  if (!err) {
    return fail(std::move(err.error()));
  }
  auto report = make_pipe(false);
  if (!report) {
    return fail(std::move(report.error()));
  }
  ChildSetup setup{argv.data(),   envp.data(),          candidates.data(), plan.cwd.c_str(),
                   null_fd.get(), out->second.get(),    err->second.get(), report->second.get(),
                   getpid(),      max_fd_for_fallback()};
  pid_t pid = fork();
  if (pid < 0) {
    return fail(Errc::io_error, "launcher.process: '" + label + "': cannot fork: " + base::errno_text(errno));
  }
  if (pid == 0) {
    run_child(setup);
  }
  null_fd.reset();
  out->second.reset();
  err->second.reset();
  report->second.reset();
  // Taken before anything can reap the child; ENOSYS on old kernels, where handles poll instead.
  // Through syscall(): Debian 12's <sys/pidfd.h> declares pidfd_open without C linkage.
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  // The report pipe is close-on-exec: end of file means the program is running.
  ChildFailure failure{};
  ssize_t got = 0;
  do {
    got = read(report->first.get(), &failure, sizeof failure);
  } while (got < 0 && errno == EINTR);
  if (got == 0) {
    return Child{pid, std::move(out->first), std::move(err->first), std::move(pidfd)};
  }
  reap(pid);
  if (got != static_cast<ssize_t>(sizeof failure)) {
    return fail(Errc::internal, "launcher.process: '" + label + "': the child of '" + plan.argv.front() +
                                    "' failed before exec without saying why");
  }
  return fail(child_error(plan, label, failure));
}

}  // namespace

std::shared_ptr<Spawner> Spawner::shared() {
  // The only process-wide state of the plugin, and it must be: PR_SET_PDEATHSIG ties children to the thread
  // that forked them, and the subreaper flag belongs to the process.
  static std::mutex mutex;
  static std::weak_ptr<Spawner> current;
  std::lock_guard lock(mutex);
  auto spawner = current.lock();
  if (!spawner) {
    spawner = std::shared_ptr<Spawner>(new Spawner());
    current = spawner;
  }
  return spawner;
}

Spawner::Spawner() {
  // Without it, a grandchild orphaned inside a job's group goes to init and cannot be reaped by the launcher.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  thread_ = std::thread([this] { run(); });
}

Spawner::~Spawner() {
  {
    std::lock_guard lock(mutex_);
    quit_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Result<Child> Spawner::spawn(const ChildPlan& plan, const std::string& label) {
  Request request{&plan, &label, std::nullopt};
  std::unique_lock lock(mutex_);
  queue_.push_back(&request);
  wake_.notify_one();
  done_.wait(lock, [&] { return request.result.has_value(); });
  return std::move(*request.result);
}

void Spawner::run() {
  // Signals meant for the process are handled by other threads; children reset the mask before exec.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  std::unique_lock lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return quit_ || !queue_.empty(); });
    if (queue_.empty()) {
      return;
    }
    Request* request = queue_.front();
    queue_.pop_front();
    lock.unlock();
    std::optional<Result<Child>> result;
    try {
      result = start_child(*request->plan, *request->label);
    } catch (const std::exception& e) {
      result =
          Result<Child>(fail(Errc::internal, "launcher.process: '" + *request->label + "': " + e.what()));
    }
    lock.lock();
    request->result = std::move(result);
    done_.notify_all();
  }
}

}  // namespace ember::process_launcher
