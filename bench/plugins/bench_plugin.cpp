// A trivial applet for the plugin-load benchmark. bench/plugins/meson.build compiles this file ten times with
// EMBER_BENCH_INDEX=0..9, giving ten distinct small plugins (bench-applet-<n>, component applet.bench<n>)
// that need nothing beyond the SDK: what loading costs when a plugin brings no heavy library.

#include <mutex>

#include <ember/applet.hpp>
#include <ember/plugin.hpp>

#ifndef EMBER_BENCH_INDEX
#error "compile with -DEMBER_BENCH_INDEX=<n>"
#endif

#define EMBER_BENCH_STR2(x) #x
#define EMBER_BENCH_STR(x) EMBER_BENCH_STR2(x)

namespace {

class BenchApplet final : public ember::Applet {
 public:
  explicit BenchApplet(const ember::ComponentContext&) {}

  ember::Result<void> start() override {
    std::lock_guard lock(mutex_);
    state_ = ember::RunState::started;
    return ember::ok();
  }

  ember::RunState state() override {
    std::lock_guard lock(mutex_);
    return state_;
  }

  ember::Result<std::vector<std::byte>> relay(std::span<const std::byte> message) override {
    return std::vector<std::byte>(message.begin(), message.end());
  }

  ember::Result<void> stop(std::chrono::milliseconds) override {
    std::lock_guard lock(mutex_);
    state_ = ember::RunState::stopped;
    return ember::ok();
  }

 private:
  std::mutex mutex_;
  ember::RunState state_ = ember::RunState::not_started;
};

// Two options, as the reference applet has: the kernel parses each default when it reads the descriptor.
constexpr ember::OptionSpec bench_options[] = {
    {"prefix", ember::OptionType::string, "\"\"", "unused"},
    {"max_message_bytes", ember::OptionType::integer, "1048576", "unused"},
};

constexpr ember::ComponentDescriptor components[] = {
    ember::component<BenchApplet>("bench" EMBER_BENCH_STR(EMBER_BENCH_INDEX), "A benchmark applet",
                                  bench_options),
};

}  // namespace

// EMBER_PLUGIN pastes its first argument, so the index is expanded one macro level earlier.
#define EMBER_BENCH_PLUGIN2(n) \
  EMBER_PLUGIN(bench_applet_##n, "bench-applet-" #n, "0.1.0", "A benchmark plugin", "Apache-2.0", components)
#define EMBER_BENCH_PLUGIN(n) EMBER_BENCH_PLUGIN2(n)

EMBER_BENCH_PLUGIN(EMBER_BENCH_INDEX)
