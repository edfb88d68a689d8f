// pipe.file: frames between a client job and its trainer through a shared folder, for a trainer that can
// reach the site only through a filesystem (a container with the job folder mounted, no network).
//
// Each frame is one file: the sender writes it into tmp/ and renames it into the peer's inbox, so it
// appears whole or not at all; the receiver learns of it through inotify (no polling), reads it and removes
// it, and the removal is what frees room in the sender's window of `capacity` frames. Names are checked
// against an exact pattern and files opened with O_NOFOLLOW and checked on the descriptor before a byte is
// read, so nothing put into the folder can make the pipe read outside it or allocate more than
// max_frame_bytes. A per-session random epoch in every name keeps an earlier session's files out.
// layout.hpp draws the folder; inbox.hpp and outbox.hpp tell the two directions.
//
// inotify sees changes made on this host only: both ends must run on the same machine (a container on it
// counts), not on two hosts sharing a network filesystem.

#include <fcntl.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <random>

#include <ember/pipe.hpp>
#include <ember/plugin.hpp>

#include "file_endpoint.hpp"
#include "layout.hpp"
#include "watch.hpp"

namespace ember::file_pipe {
namespace {

using namespace std::chrono_literals;

// Beyond this a frame file is no longer a sensible unit to hold in memory whole.
constexpr std::int64_t largest_max_frame = std::int64_t{1} << 40;
constexpr std::int64_t largest_capacity = 65536;
// When neither the root nor its parent exists yet there is nothing to watch: look again this often.
constexpr auto attach_retry = 50ms;

struct Settings {
  std::filesystem::path root;
  std::size_t max_frame = 0;
  std::size_t capacity = 0;
};

Result<Settings> read_settings(const ComponentContext& context) {
  const auto& options = context.options();
  std::string_view address = options.string("address");
  if (address.starts_with("dir:")) {
    address.remove_prefix(4);  // the form describe() and messages use
  }
  if (address.empty() || address.find('\0') != std::string_view::npos) {
    return fail(Errc::invalid_option, "pipe.file: option 'address' must name a folder");
  }
  std::error_code ec;
  auto root = std::filesystem::absolute(std::filesystem::path(address), ec).lexically_normal();
  if (ec) {
    return fail(Errc::invalid_option, "pipe.file: option 'address' '" + std::string(address) +
                                          "' cannot be made absolute: " + ec.message());
  }
  if (!root.has_filename()) {
    root = root.parent_path();  // "/ws/pipe/" names /ws/pipe
  }
  if (root == root.root_path() || root.filename() == "..") {
    return fail(Errc::invalid_option,
                "pipe.file: option 'address' '" + std::string(address) + "' must name a folder of its own");
  }
  const auto max_frame = options.integer("max_frame_bytes");
  if (max_frame < 1 || max_frame > largest_max_frame) {
    return fail(Errc::invalid_option, "pipe.file: option 'max_frame_bytes' must be between 1 and " +
                                          std::to_string(largest_max_frame) + ", is " +
                                          std::to_string(max_frame));
  }
  const auto capacity = options.integer("capacity");
  if (capacity < 1 || capacity > largest_capacity) {
    return fail(Errc::invalid_option, "pipe.file: option 'capacity' must be between 1 and " +
                                          std::to_string(largest_capacity) + ", is " +
                                          std::to_string(capacity));
  }
  return Settings{std::move(root), static_cast<std::size_t>(max_frame), static_cast<std::size_t>(capacity)};
}

std::uint64_t random_epoch() {
  std::uint64_t epoch = 0;
  if (getrandom(&epoch, sizeof epoch, 0) != static_cast<ssize_t>(sizeof epoch)) {
    std::random_device device;
    epoch = (std::uint64_t{device()} << 32) ^ device();
  }
  return epoch;
}

class FilePipe final : public Pipe {
 public:
  static Result<std::unique_ptr<FilePipe>> create(const ComponentContext& context) {
    auto settings = read_settings(context);
    if (!settings) {
      return fail(std::move(settings.error()));
    }
    return std::unique_ptr<FilePipe>(new FilePipe(context, std::move(*settings)));
  }

  ~FilePipe() override { remove_left_root(); }

  Result<std::unique_ptr<PipeEndpoint>> open(PipeSide side, std::chrono::milliseconds timeout,
                                             const PeerAdmission&) override {
    // No connections, so no admission to screen: only processes that can write the folder (0700, ours)
    // reach it, and one trainer end per session, by attached.trainer.
    auto& opened = side == PipeSide::job ? job_opened_ : trainer_opened_;
    if (opened.exchange(true)) {
      return fail(Errc::invalid_argument, "pipe.file dir:" + settings_.root.string() + ": the " +
                                              std::string(side_name(side)) + " end is already open");
    }
    Result<std::unique_ptr<PipeEndpoint>> end = fail(Errc::internal, "pipe.file: not opened");
    try {
      end = side == PipeSide::job ? open_job_end() : open_trainer_end(timeout);
    } catch (const std::exception& e) {
      end = fail(Errc::internal, "pipe.file dir:" + settings_.root.string() + ": " + e.what());
    } catch (...) {
      end = fail(Errc::internal, "pipe.file dir:" + settings_.root.string() + ": unknown exception");
    }
    if (!end) {
      opened = false;
    }
    return end;
  }

  /// The root folder as an absolute path: what the trainer end is given as its `address`.
  std::string address() const override { return settings_.root.string(); }

 private:
  FilePipe(const ComponentContext& context, Settings settings)
      : logger_(context.logger_ptr()), stop_(context.stop_token()), settings_(std::move(settings)) {}

  EndSettings end_settings(PipeSide side, std::uint64_t epoch) const {
    return EndSettings{side, epoch, settings_.max_frame, settings_.capacity};
  }

  Result<std::unique_ptr<PipeEndpoint>> open_job_end() {
    auto root = create_root(settings_.root);
    if (!root) {
      return fail(Errc::io_error, "pipe.file: " + root.error().message);
    }
    // One job end per folder: a second one (two sites or jobs given the same address) would wipe the
    // first one's frames and take its session over. The lock lives as long as the end's descriptor of
    // the root, and is taken before anything in the folder is touched.
    if (::flock(root->root.get(), LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      return fail(
          err == EWOULDBLOCK ? Errc::invalid_argument : Errc::io_error,
          "pipe.file dir:" + root->path +
              (err == EWOULDBLOCK ? std::string(": another job end uses this folder (two sites or jobs "
                                                "given the same address?); refusing to share it")
                                  : ": cannot lock the folder: " + errno_text(err)));
    }
    if (auto stale = clear_for_new_session(*root); stale > 0) {
      logger_->info("pipe.file dir:" + root->path + ": removed " + std::to_string(stale) +
                    " frame files of an earlier session");
    }
    const auto epoch = random_epoch();
    auto written = write_small_file(*root, tmp_prefix(PipeSide::job) + "session.part", session_file,
                                    hex64(epoch) + "\n");
    if (!written) {
      return fail(Errc::io_error, "pipe.file: " + written.error().message);
    }
    {
      std::lock_guard lock(keeper_->mutex);
      keeper_->left_behind = false;
      keeper_->epoch = epoch;
    }
    auto end =
        FileEndpoint::open(std::move(*root), end_settings(PipeSide::job, epoch), logger_, stop_, keeper_);
    if (!end) {
      if (auto again = open_root(settings_.root)) {
        remove_root(*again);
      }
      return fail(std::move(end.error()));
    }
    logger_->info("pipe.file dir:" + settings_.root.string() + ": job end open, session " + hex64(epoch));
    return std::unique_ptr<PipeEndpoint>(std::move(*end));
  }

  Result<std::unique_ptr<PipeEndpoint>> open_trainer_end(std::chrono::milliseconds timeout) {
    const auto deadline = deadline_after(timeout);
    for (;;) {
      // Watch first, then look: a session written in between still wakes the wait.
      auto watch = Watch::create();
      if (!watch) {
        return fail(std::move(watch.error()));
      }
      bool watching = watch_for_session(*watch);
      auto root = open_root(settings_.root);
      if (root) {
        auto epoch = read_session(*root);
        if (epoch) {
          return attach(std::move(*root), *epoch);
        }
        if (epoch.error().code != Errc::not_found) {
          return fail(Errc::malformed, "pipe.file: " + epoch.error().message);
        }
      } else if (root.error().code != Errc::not_found) {
        return fail(Errc::io_error, "pipe.file: " + root.error().message);
      }
      if (Clock::now() >= deadline) {
        return fail(Errc::timeout, "pipe.file dir:" + settings_.root.string() + ": no session within " +
                                       std::to_string(timeout.count()) + " ms (has the job end opened it?)");
      }
      watch->wait(-1, watching ? deadline : std::min(deadline, Clock::now() + attach_retry));
    }
  }

  // Watches the root for the session file, or, while there is no root, its parent for the root.
  bool watch_for_session(Watch& watch) const {
    for (const auto& folder : {settings_.root, settings_.root.parent_path()}) {
      UniqueFd fd(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (fd && watch.add(fd.get(), folder.string(), IN_MOVED_TO | IN_CREATE)) {
        return true;
      }
    }
    return false;
  }

  Result<std::unique_ptr<PipeEndpoint>> attach(OpenRoot root, std::uint64_t epoch) {
    // One trainer end per session: a second one would count its frames from 0 again, and the job end
    // would refuse them as repeats.
    const auto claim = [&] {
      return UniqueFd(
          openat(root.root.get(), attached_file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    };
    UniqueFd claimed = claim();
    if (!claimed && errno == EEXIST) {
      auto holder = read_small_file(root.root.get(), attached_file, 64);
      if (holder && *holder == hex64(epoch) + "\n") {
        return fail(Errc::rejected, "pipe.file dir:" + root.path +
                                        ": a trainer end already attached to session " + hex64(epoch));
      }
      unlinkat(root.root.get(), attached_file, 0);  // an earlier session's
      claimed = claim();
    }
    if (!claimed) {
      return fail(Errc::io_error,
                  "pipe.file: cannot create '" + root.path + "/" + attached_file + "': " + errno_text(errno));
    }
    const auto text = hex64(epoch) + "\n";
    write_all(claimed.get(), text.data(), text.size());
    auto end =
        FileEndpoint::open(std::move(root), end_settings(PipeSide::trainer, epoch), logger_, stop_, nullptr);
    if (!end) {
      return fail(std::move(end.error()));
    }
    logger_->debug("pipe.file dir:" + settings_.root.string() + ": trainer end attached to session " +
                   hex64(epoch));
    return std::unique_ptr<PipeEndpoint>(std::move(*end));
  }

  // A job end that closed while the trainer still had frames to read left the root; it goes now.
  void remove_left_root() noexcept {
    try {
      std::lock_guard lock(keeper_->mutex);
      if (!keeper_->left_behind) {
        return;
      }
      keeper_->left_behind = false;
      auto root = open_root(settings_.root);
      if (!root) {
        return;
      }
      if (auto session = read_session(*root); !session || *session != keeper_->epoch) {
        return;  // another session has it now
      }
      if (auto stayed = remove_root(*root); !stayed.empty()) {
        logger_->warn("pipe.file dir:" + root->path + ": the folder stayed: " + stayed);
      }
    } catch (...) {
      logger_->warn("pipe.file dir:" + settings_.root.string() + ": could not remove the folder");
    }
  }

  std::shared_ptr<Logger> logger_;
  std::stop_token stop_;
  Settings settings_;
  std::atomic<bool> job_opened_{false};
  std::atomic<bool> trainer_opened_{false};
  std::shared_ptr<RootKeeper> keeper_ = std::make_shared<RootKeeper>();
};

constexpr OptionSpec file_options[] = {
    {"address", OptionType::string, "{workspace}/pipe",
     "the pipe's root folder; the trainer end is given the job end's address()"},
    // The maxima are largest_max_frame (1 TiB) and largest_capacity.
    {.name = "max_frame_bytes",
     .type = OptionType::integer,
     .default_value = "68157440",
     .doc = "largest frame accepted, in bytes (default 65 MiB)",
     .minimum = "1",
     .maximum = "1099511627776"},
    {.name = "capacity",
     .type = OptionType::integer,
     .default_value = "64",
     .doc = "frames a sender may have unread in the peer's inbox before send() waits",
     .minimum = "1",
     .maximum = "65536"},
};

constexpr ComponentDescriptor components[] = {
    component<FilePipe>("file", "Frames as files in a shared folder: atomic rename, inotify, no polling",
                        file_options),
};

}  // namespace
}  // namespace ember::file_pipe

EMBER_PLUGIN(file_pipe, "file-pipe", "0.1.0",
             "Pipe through a shared folder, for trainers reachable only by files", "Apache-2.0",
             ember::file_pipe::components)
