#include "file_endpoint.hpp"

#include <thread>

#include <exception>
#include <new>

namespace ember::file_pipe {

namespace {

// Turns an exception that escaped a half (out of memory for a large frame) into a Result.
Error error_from_current_exception(const std::string& root) {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return Error{Errc::internal, "pipe.file dir:" + root + ": out of memory"};
  } catch (const std::exception& e) {
    return Error{Errc::internal, "pipe.file dir:" + root + ": " + e.what()};
  } catch (...) {
    return Error{Errc::internal, "pipe.file dir:" + root + ": unknown exception"};
  }
}

// Our frame files still waiting in the peer's inbox.
std::size_t frames_waiting(int inbox_fd, std::uint64_t epoch) {
  std::size_t count = 0;
  if (auto names = list_dir(inbox_fd)) {
    for (const auto& name : *names) {
      if (auto parsed = parse_frame_name(name); parsed && parsed->epoch == epoch) {
        ++count;
      }
    }
  }
  return count;
}

void remove_own_leftovers(const OpenRoot& root, PipeSide side) {
  const auto prefix = tmp_prefix(side);
  if (auto names = list_dir(root.tmp.get())) {
    for (const auto& name : *names) {
      if (name.starts_with(prefix)) {
        remove_entry(root.tmp.get(), name);
      }
    }
  }
}

}  // namespace

FileEndpoint::FileEndpoint(OpenRoot root, const EndSettings& settings, std::shared_ptr<Logger> logger,
                           std::shared_ptr<RootKeeper> keeper, std::unique_ptr<Wakeup> wakeup)
    : root_(std::move(root)),
      settings_(settings),
      logger_(std::move(logger)),
      keeper_(std::move(keeper)),
      wakeup_(std::move(wakeup)),
      inbox_(root_, settings.side, settings.epoch, settings.max_frame, *wakeup_, logger_),
      outbox_(root_, settings.side, settings.epoch, settings.max_frame, settings.capacity, *wakeup_,
              logger_) {}

Result<std::unique_ptr<FileEndpoint>> FileEndpoint::open(OpenRoot root, const EndSettings& settings,
                                                         std::shared_ptr<Logger> logger,
                                                         const std::stop_token& stop,
                                                         std::shared_ptr<RootKeeper> keeper) {
  auto wakeup = Wakeup::create();
  if (!wakeup) {
    return fail(std::move(wakeup.error()));
  }
  std::unique_ptr<FileEndpoint> end(
      new FileEndpoint(std::move(root), settings, std::move(logger), std::move(keeper), std::move(*wakeup)));
  auto started = end->inbox_.start();
  if (started) {
    started = end->outbox_.start();
  }
  if (!started) {
    end->wakeup_->close();  // so the destructor's close() leaves the folder to the caller
    return fail(std::move(started.error()));
  }
  end->on_stop_.emplace(stop, StopWaker{end->wakeup_.get()});
  return end;
}

FileEndpoint::~FileEndpoint() {
  close();
}

Result<void> FileEndpoint::send(std::span<const std::byte> frame, std::chrono::milliseconds timeout) {
  try {
    return outbox_.send(frame, timeout);
  } catch (...) {
    return fail(error_from_current_exception(root_.path));
  }
}

Result<std::optional<std::vector<std::byte>>> FileEndpoint::receive(std::chrono::milliseconds timeout) {
  try {
    return inbox_.receive(timeout);
  } catch (...) {
    return fail(error_from_current_exception(root_.path));
  }
}

void FileEndpoint::close() noexcept {
  if (!wakeup_->close()) {
    return;  // closed before; the first call did the work
  }
  try {
    const std::uint64_t sent = outbox_.seal();
    if (settings_.side == PipeSide::job) {
      close_job_end(sent);
    } else {
      close_trainer_end(sent);
    }
  } catch (...) {
    logger_->warn(error_from_current_exception(root_.path).message);
  }
}

std::string FileEndpoint::describe() const {
  return "dir:" + root_.path + " (" + std::string(side_name(peer_of(settings_.side))) + " end)";
}

void FileEndpoint::close_job_end(std::uint64_t sent) {
  if (auto session = read_session(root_); !session || *session != settings_.epoch) {
    logger_->info("pipe.file dir:" + root_.path +
                  ": job end closed; the folder now belongs to another session");
    return;
  }
  PeerState trainer;
  refresh_peer(root_, settings_.side, settings_.epoch, trainer);
  const std::size_t waiting = frames_waiting(root_.to_trainer.get(), settings_.epoch);
  if (trainer.ended || waiting == 0) {
    // Nothing more for the trainer to read: the folder goes, and the trainer sees it go (closed). A trainer
    // that is closing at the same moment may still be writing its end marker: try again a few times.
    auto stayed = remove_root(root_);
    for (int attempt = 0; attempt < 5 && !stayed.empty(); ++attempt) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      stayed = remove_root(root_);
    }
    if (stayed.empty()) {
      logger_->debug("pipe.file dir:" + root_.path + ": job end closed after sending " +
                     std::to_string(sent) + " frames; folder removed");
    } else {
      logger_->warn("pipe.file dir:" + root_.path + ": job end closed, but the folder stayed: " + stayed);
    }
    return;
  }
  // The trainer still has frames of ours to read: leave them, with the marker that tells it they are the
  // last. What the trainer sent us and our half-written files go now; the component removes the rest.
  write_marker(sent);
  if (auto names = list_dir(root_.to_job.get())) {
    for (const auto& name : *names) {
      remove_entry(root_.to_job.get(), name);
    }
  }
  remove_own_leftovers(root_, settings_.side);
  if (keeper_) {
    std::lock_guard lock(keeper_->mutex);
    keeper_->left_behind = true;
  }
  logger_->debug("pipe.file dir:" + root_.path + ": job end closed after sending " + std::to_string(sent) +
                 " frames; " + std::to_string(waiting) + " left for the trainer end to read");
}

void FileEndpoint::close_trainer_end(std::uint64_t sent) {
  write_marker(sent);
  remove_own_leftovers(root_, settings_.side);
  logger_->debug("pipe.file dir:" + root_.path + ": trainer end closed after sending " +
                 std::to_string(sent) + " frames");
}

void FileEndpoint::write_marker(std::uint64_t sent) {
  auto written = write_small_file(root_, tmp_prefix(settings_.side) + "closed.part",
                                  marker_name(settings_.side), marker_text(settings_.epoch, sent));
  if (!written) {
    // The folder is gone (the job end removed it) or unwritable: the peer learns of the end otherwise.
    logger_->debug("pipe.file dir:" + root_.path + ": no closed marker: " + written.error().message);
  }
}

}  // namespace ember::file_pipe
