// applet.reverse: an applet whose "program" answers each relayed message with the message's bytes in
// reverse order. An out-of-tree example: it is built against the installed SDK only (see README.md).

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <ember/applet.hpp>
#include <ember/plugin.hpp>

namespace {

class ReverseApplet final : public ember::Applet {
 public:
  // The factory prefers create() over the constructor. The schema's minimum (below) is checked by the kernel
  // before this runs, so create() only hands the values on; a check the schema cannot say would go here, as
  // an Errc::invalid_option error rather than an exception.
  static ember::Result<std::unique_ptr<ReverseApplet>> create(const ember::ComponentContext& context) {
    const ember::Options& options = context.options();
    std::int64_t max_bytes = options.integer("max_message_bytes");
    return std::make_unique<ReverseApplet>(context.logger_ptr(), static_cast<std::size_t>(max_bytes),
                                           options.boolean("log_messages"));
  }

  ReverseApplet(std::shared_ptr<ember::Logger> logger, std::size_t max_bytes, bool log_messages)
      : logger_(std::move(logger)), max_bytes_(max_bytes), log_messages_(log_messages) {}

  ember::Result<void> start() override {
    auto previous = state_.exchange(ember::RunState::started);
    if (previous == ember::RunState::started) {
      return ember::fail(ember::Errc::invalid_argument, "applet.reverse: already started");
    }
    logger_->info("started");
    return ember::ok();
  }

  ember::RunState state() override { return state_.load(); }

  ember::Result<std::vector<std::byte>> relay(std::span<const std::byte> message) override {
    if (auto now = state_.load(); now != ember::RunState::started) {
      return ember::fail(ember::Errc::closed,
                         "applet.reverse: not running (state " + std::string(ember::to_string(now)) + ")");
    }
    // Checked before the reply is allocated: the limit bounds this applet's memory per message.
    if (message.size() > max_bytes_) {
      return ember::fail(ember::Errc::invalid_argument,
                         "applet.reverse: message of " + std::to_string(message.size()) +
                             " bytes exceeds max_message_bytes " + std::to_string(max_bytes_));
    }
    if (log_messages_ && logger_->enabled(ember::LogLevel::debug)) {
      logger_->debug("relaying " + std::to_string(message.size()) + " bytes");
    }
    return std::vector<std::byte>(message.rbegin(), message.rend());
  }

  // There is no real program to stop, so the grace period is not needed.
  ember::Result<void> stop(std::chrono::milliseconds /*grace*/) override {
    if (state_.exchange(ember::RunState::stopped) == ember::RunState::started) {
      logger_->info("stopped");
    }
    return ember::ok();
  }

 private:
  std::shared_ptr<ember::Logger> logger_;  // shared: the component may outlive its ComponentContext
  std::size_t max_bytes_;
  bool log_messages_;
  std::atomic<ember::RunState> state_{ember::RunState::not_started};
};

// Defaults are written as TOML values; the kernel checks them when it loads the plugin.
constexpr ember::OptionSpec reverse_options[] = {
    {.name = "max_message_bytes",
     .type = ember::OptionType::integer,
     .default_value = "1048576",
     .doc = "largest message relayed; larger ones fail",
     .minimum = "1"},
    {"log_messages", ember::OptionType::boolean, "false", "log the size of each relayed message (debug)"},
};

constexpr ember::ComponentDescriptor components[] = {
    ember::component<ReverseApplet>("reverse", "Answers each relayed message with its bytes reversed",
                                    reverse_options),
};

}  // namespace

EMBER_PLUGIN(reverse_applet, "reverse-applet", "0.1.0", "An example applet, built out of tree", "Apache-2.0",
             components)
