// pipe.memory: both ends of a pipe inside one process, for tests and for wiring components together
// without a real transport. A reference plugin and an SDK example of the Pipe interface.

#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>

#include <ember/pipe.hpp>
#include <ember/plugin.hpp>

namespace {

using namespace std::chrono_literals;

// One direction: a bounded queue of frames.
class Channel {
 public:
  explicit Channel(std::size_t capacity) : capacity_(capacity) {}

  ember::Result<void> push(std::vector<std::byte> frame, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, timeout, [&] { return closed_ || frames_.size() < capacity_; })) {
      return ember::fail(ember::Errc::timeout, "pipe.memory: no room for a frame within " +
                                                   std::to_string(timeout.count()) +
                                                   " ms (peer not reading)");
    }
    if (closed_) {
      return ember::fail(ember::Errc::closed, "pipe.memory: the peer has closed");
    }
    frames_.push_back(std::move(frame));
    cv_.notify_all();
    return ember::ok();
  }

  ember::Result<std::optional<std::vector<std::byte>>> pop(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, timeout, [&] { return closed_ || !frames_.empty(); })) {
      return std::optional<std::vector<std::byte>>();
    }
    if (frames_.empty()) {
      return ember::fail(ember::Errc::closed, "pipe.memory: the peer has closed");
    }
    auto frame = std::move(frames_.front());
    frames_.pop_front();
    cv_.notify_all();
    return std::optional<std::vector<std::byte>>(std::move(frame));
  }

  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::vector<std::byte>> frames_;
  std::size_t capacity_;
  bool closed_ = false;
};

class MemoryEndpoint final : public ember::PipeEndpoint {
 public:
  MemoryEndpoint(std::shared_ptr<Channel> out, std::shared_ptr<Channel> in, std::size_t max_frame,
                 std::string peer)
      : out_(std::move(out)), in_(std::move(in)), max_frame_(max_frame), peer_(std::move(peer)) {}
  ~MemoryEndpoint() override { close(); }

  ember::Result<void> send(std::span<const std::byte> frame, std::chrono::milliseconds timeout) override {
    if (frame.size() > max_frame_) {
      return ember::fail(ember::Errc::invalid_argument,
                         "pipe.memory: frame of " + std::to_string(frame.size()) +
                             " bytes exceeds max_frame_bytes " + std::to_string(max_frame_));
    }
    return out_->push(std::vector<std::byte>(frame.begin(), frame.end()), timeout);
  }

  ember::Result<std::optional<std::vector<std::byte>>> receive(std::chrono::milliseconds timeout) override {
    return in_->pop(timeout);
  }

  std::string describe() const override { return peer_; }

  void close() noexcept override {
    // Our frames already sent stay readable by the peer; the peer's sends to us fail from now on.
    out_->close();
    in_->close();
  }

 private:
  std::shared_ptr<Channel> out_;
  std::shared_ptr<Channel> in_;
  std::size_t max_frame_;
  std::string peer_;
};

class MemoryPipe final : public ember::Pipe {
 public:
  explicit MemoryPipe(const ember::ComponentContext& context)
      : logger_(context.logger_ptr()), instance_(context.instance()) {
    auto capacity = context.options().integer("capacity");
    auto max_frame = context.options().integer("max_frame_bytes");
    max_frame_ = static_cast<std::size_t>(max_frame);
    to_trainer_ = std::make_shared<Channel>(static_cast<std::size_t>(capacity));
    to_job_ = std::make_shared<Channel>(static_cast<std::size_t>(capacity));
  }

  ember::Result<std::unique_ptr<ember::PipeEndpoint>> open(ember::PipeSide side, std::chrono::milliseconds,
                                                           const ember::PeerAdmission&) override {
    std::lock_guard lock(mutex_);
    bool& opened = side == ember::PipeSide::job ? job_open_ : trainer_open_;
    if (opened) {
      return ember::fail(ember::Errc::invalid_argument,
                         "pipe.memory '" + instance_ + "': the " +
                             (side == ember::PipeSide::job ? std::string("job") : std::string("trainer")) +
                             " end is already open");
    }
    opened = true;
    logger_->debug(side == ember::PipeSide::job ? "job end opened" : "trainer end opened");
    if (side == ember::PipeSide::job) {
      return std::unique_ptr<ember::PipeEndpoint>(
          std::make_unique<MemoryEndpoint>(to_trainer_, to_job_, max_frame_, address() + " (trainer end)"));
    }
    return std::unique_ptr<ember::PipeEndpoint>(
        std::make_unique<MemoryEndpoint>(to_job_, to_trainer_, max_frame_, address() + " (job end)"));
  }

  std::string address() const override { return "memory:" + instance_; }

 private:
  std::shared_ptr<ember::Logger> logger_;
  std::string instance_;
  std::size_t max_frame_ = 0;
  std::shared_ptr<Channel> to_trainer_;
  std::shared_ptr<Channel> to_job_;
  std::mutex mutex_;
  bool job_open_ = false;
  bool trainer_open_ = false;
};

constexpr ember::OptionSpec memory_options[] = {
    {.name = "capacity",
     .type = ember::OptionType::integer,
     .default_value = "64",
     .doc = "frames buffered in each direction before send() waits",
     .minimum = "1",
     .maximum = "65536"},
    {.name = "max_frame_bytes",
     .type = ember::OptionType::integer,
     .default_value = "67108864",
     .doc = "largest frame accepted, in bytes",
     .minimum = "1"},
};

constexpr ember::ComponentDescriptor components[] = {
    ember::component<MemoryPipe>("memory", "Both ends of a pipe in one process (tests, in-process wiring)",
                                 memory_options),
};

}  // namespace

EMBER_PLUGIN(memory_pipe, "memory-pipe", "0.1.0", "In-process pipe: a reference plugin and SDK example",
             "Apache-2.0", components)
