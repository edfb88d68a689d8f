#include "client_job.hpp"

#include <exception>

namespace ember::kernel {
namespace {

Error thrown(const std::string& site, std::string_view call) {
  try {
    throw;
  } catch (const std::exception& e) {
    return Error{Errc::internal, site + ": the executor's " + std::string(call) + " threw: " + e.what()};
  } catch (...) {
    return Error{Errc::internal,
                 site + ": the executor's " + std::string(call) + " threw a non-standard exception"};
  }
}

}  // namespace

Result<std::unique_ptr<ClientJob>> ClientJob::create(std::string site, std::unique_ptr<JobScope> scope,
                                                     std::string_view executor_id) {
  auto executor = scope->create_configured_as<Executor>(executor_id);
  if (!executor) {
    return fail(executor.error().code, site + ": " + executor.error().message);
  }
  return std::make_unique<ClientJob>(std::move(site), std::move(*executor), std::move(scope));
}

ClientJob::ClientJob(std::string site, std::shared_ptr<Executor> executor, std::unique_ptr<JobScope> scope)
    : site_(std::move(site)), scope_(std::move(scope)), executor_(std::move(executor)) {}

ClientJob::~ClientJob() {
  stop();
  executor_.reset();
}

Result<void> ClientJob::start(std::stop_token stop) {
  set(RunState::starting);
  Result<void> started = ok();
  try {
    started = executor_->start(std::move(stop));
  } catch (...) {
    started = fail(thrown(site_, "start()"));
  }
  if (!started) {
    set(RunState::failed, started.error());
    return started;
  }
  set(RunState::started);
  return ok();
}

Result<TaskData> ClientJob::execute(const TaskData& task, std::stop_token stop) {
  {
    std::lock_guard lock(mutex_);
    if (state_ != RunState::started) {
      if (error_) {
        return fail(*error_);
      }
      return fail(Errc::closed, site_ + ": the site is " + std::string(to_string(state_)));
    }
  }
  try {
    return executor_->execute(task, std::move(stop));
  } catch (...) {
    return fail(thrown(site_, "execute()"));
  }
}

void ClientJob::stop() noexcept {
  {
    std::lock_guard lock(mutex_);
    if (state_ == RunState::stopped || !executor_) {
      return;
    }
  }
  try {
    executor_->stop();
  } catch (...) {
    // stop() is noexcept in the SDK; a plugin that breaks that must not end the process either.
  }
  std::lock_guard lock(mutex_);
  if (state_ != RunState::failed) {
    state_ = RunState::stopped;
  }
}

bool ClientJob::abort_task() {
  auto* aborting = dynamic_cast<TaskAborting*>(executor_.get());
  return aborting != nullptr && aborting->abort_task();
}

RunState ClientJob::status() const {
  std::lock_guard lock(mutex_);
  return state_;
}

std::optional<Error> ClientJob::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

void ClientJob::set(RunState state, std::optional<Error> error) {
  std::lock_guard lock(mutex_);
  state_ = state;
  if (error) {
    error_ = std::move(error);
  }
}

bool is_site_failure(const Error& error) noexcept {
  switch (error.code) {
    case Errc::peer_gone:
    case Errc::rejected:
    case Errc::timeout:
    case Errc::closed:
    case Errc::cancelled:
    case Errc::malformed:
    case Errc::internal:
      return true;
    default:
      return false;
  }
}

}  // namespace ember::kernel
