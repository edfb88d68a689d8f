// launcher.fake: launches nothing, but behaves like a launcher whose program runs for `run_time` and then
// exits with `exit_code`. Lets workflows and executors be tested without processes; a reference plugin and
// an SDK example of the Launcher interface.

#include <condition_variable>
#include <csignal>
#include <mutex>
#include <stdexcept>

#include <ember/launcher.hpp>
#include <ember/plugin.hpp>

namespace {

using Clock = std::chrono::steady_clock;

class FakeHandle final : public ember::LaunchHandle {
 public:
  FakeHandle(std::string id, std::chrono::milliseconds run_time, int exit_code, bool ignore_stop)
      : id_(std::move(id)), end_(Clock::now() + run_time), exit_code_(exit_code), ignore_stop_(ignore_stop) {}
  ~FakeHandle() override { stop(std::chrono::milliseconds(0)); }

  std::string id() const override { return id_; }

  ember::RunState state() override {
    std::lock_guard lock(mutex_);
    settle();
    if (!status_) {
      return ember::RunState::started;
    }
    return status_->success() ? ember::RunState::stopped : ember::RunState::failed;
  }

  ember::Result<std::optional<ember::ExitStatus>> wait(std::chrono::milliseconds timeout) override {
    std::unique_lock lock(mutex_);
    auto deadline = std::min(end_, Clock::now() + timeout);
    cv_.wait_until(lock, deadline, [&] { return status_.has_value(); });
    settle();
    return status_;
  }

  ember::Result<ember::ExitStatus> stop(std::chrono::milliseconds grace) override {
    std::unique_lock lock(mutex_);
    settle();
    if (!status_) {
      if (ignore_stop_) {
        // A program that ignores SIGTERM: it ends at its own time or is killed when the grace runs out.
        cv_.wait_until(lock, std::min(end_, Clock::now() + grace), [&] { return status_.has_value(); });
        settle();
        if (!status_) {
          status_ = ember::ExitStatus{ember::ExitStatus::How::signaled, SIGKILL};
        }
      } else {
        status_ = ember::ExitStatus{ember::ExitStatus::How::signaled, SIGTERM};
      }
      cv_.notify_all();
    }
    return *status_;
  }

 private:
  // Called with the mutex held: the fake program ends on its own once its run time is over.
  void settle() {
    if (!status_ && Clock::now() >= end_) {
      status_ = ember::ExitStatus{ember::ExitStatus::How::exited, exit_code_};
    }
  }

  std::string id_;
  Clock::time_point end_;
  int exit_code_;
  bool ignore_stop_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::optional<ember::ExitStatus> status_;
};

class FakeLauncher final : public ember::Launcher {
 public:
  explicit FakeLauncher(const ember::ComponentContext& context)
      : context_(context),
        run_time_(context.options().duration("run_time")),
        exit_code_(static_cast<int>(context.options().integer("exit_code"))),
        fail_launch_(context.options().boolean("fail_launch")),
        ignore_stop_(context.options().boolean("ignore_stop")) {}

  ember::Result<std::unique_ptr<ember::LaunchHandle>> launch(const ember::LaunchSpec& spec) override {
    if (spec.argv.empty()) {
      return ember::fail(ember::Errc::invalid_argument,
                         "launcher.fake: '" + spec.name + "' has an empty argv");
    }
    if (fail_launch_) {
      return ember::fail(ember::Errc::io_error,
                         "launcher.fake: launch of '" + spec.name + "' failed (fail_launch)");
    }
    std::string id = "fake-" + std::to_string(++launches_);
    context_.logger().info("launched '" + spec.name + "' as " + id + " (" + spec.argv.front() + ")");
    context_.events().publish(
        {"launcher.launched", "plugin.launcher.fake", {{"name", spec.name}, {"id", id}}});
    return std::unique_ptr<ember::LaunchHandle>(
        std::make_unique<FakeHandle>(id, run_time_, exit_code_, ignore_stop_));
  }

 private:
  ember::ComponentContext context_;
  std::chrono::milliseconds run_time_;
  int exit_code_;
  bool fail_launch_;
  bool ignore_stop_;
  std::uint64_t launches_ = 0;
};

constexpr ember::OptionSpec fake_options[] = {
    {.name = "run_time",
     .type = ember::OptionType::duration,
     .default_value = "0ms",
     .doc = "how long the pretend program runs before it exits",
     .minimum = "0ms"},
    {.name = "exit_code",
     .type = ember::OptionType::integer,
     .default_value = "0",
     .doc = "the code it exits with",
     .minimum = "0",
     .maximum = "255"},
    {"fail_launch", ember::OptionType::boolean, "false", "make every launch fail"},
    {"ignore_stop", ember::OptionType::boolean, "false", "pretend the program ignores SIGTERM"},
};

constexpr ember::ComponentDescriptor components[] = {
    ember::component<FakeLauncher>("fake", "Pretends to launch programs (tests without processes)",
                                   fake_options),
};

}  // namespace

EMBER_PLUGIN(fake_launcher, "fake-launcher", "0.1.0", "A launcher that launches nothing: a reference plugin",
             "Apache-2.0", components)
