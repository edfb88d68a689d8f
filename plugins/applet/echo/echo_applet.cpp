// applet.echo: an applet whose "programs" answer every relayed message with the message itself, after an
// optional prefix. A reference plugin and an SDK example of the Applet interface.

#include <mutex>
#include <stdexcept>

#include <ember/applet.hpp>
#include <ember/plugin.hpp>

namespace {

class EchoApplet final : public ember::Applet {
 public:
  explicit EchoApplet(const ember::ComponentContext& context)
      : logger_(context.logger_ptr()),
        prefix_(context.options().string("prefix")),
        max_message_(context.options().integer("max_message_bytes")) {}

  ember::Result<void> start() override {
    std::lock_guard lock(mutex_);
    if (state_ == ember::RunState::started) {
      return ember::fail(ember::Errc::invalid_argument, "applet.echo: already started");
    }
    state_ = ember::RunState::started;
    logger_->info("started");
    return ember::ok();
  }

  ember::RunState state() override {
    std::lock_guard lock(mutex_);
    return state_;
  }

  ember::Result<std::vector<std::byte>> relay(std::span<const std::byte> message) override {
    std::lock_guard lock(mutex_);
    if (state_ != ember::RunState::started) {
      return ember::fail(ember::Errc::closed,
                         "applet.echo: not running (state " + std::string(ember::to_string(state_)) + ")");
    }
    if (message.size() > static_cast<std::size_t>(max_message_)) {
      return ember::fail(
          ember::Errc::invalid_argument,
          "applet.echo: message of " + std::to_string(message.size()) + " bytes exceeds max_message_bytes");
    }
    std::vector<std::byte> reply;
    reply.reserve(prefix_.size() + message.size());
    for (char c : prefix_) {
      reply.push_back(static_cast<std::byte>(c));
    }
    reply.insert(reply.end(), message.begin(), message.end());
    return reply;
  }

  ember::Result<void> stop(std::chrono::milliseconds) override {
    std::lock_guard lock(mutex_);
    if (state_ == ember::RunState::started) {
      logger_->info("stopped");
    }
    state_ = ember::RunState::stopped;
    return ember::ok();
  }

 private:
  std::shared_ptr<ember::Logger> logger_;
  std::string prefix_;
  std::int64_t max_message_;
  std::mutex mutex_;
  ember::RunState state_ = ember::RunState::not_started;
};

constexpr ember::OptionSpec echo_options[] = {
    {"prefix", ember::OptionType::string, "\"\"", "text put in front of every reply"},
    {.name = "max_message_bytes",
     .type = ember::OptionType::integer,
     .default_value = "1048576",
     .doc = "largest message relayed",
     .minimum = "1"},
};

constexpr ember::ComponentDescriptor components[] = {
    ember::component<EchoApplet>("echo", "Answers every relayed message with itself", echo_options),
};

}  // namespace

EMBER_PLUGIN(echo_applet, "echo-applet", "0.1.0", "An applet that echoes: a reference plugin", "Apache-2.0",
             components)
