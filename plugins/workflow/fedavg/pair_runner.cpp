#include "pair_runner.hpp"

namespace ember::fedavg {

PairRunner::PairRunner(Threading threading) : threading_(threading) {
  if (threading_ == Threading::pool) {
    worker_ = std::jthread([this](std::stop_token stop) { serve(stop); });
  }
}

PairRunner::~PairRunner() {
  if (worker_.joinable()) {
    worker_.request_stop();
    worker_.join();
  }
}

void PairRunner::serve(const std::stop_token& stop) {
  std::unique_lock lock(mutex_);
  while (wake_.wait(lock, stop, [this] { return job_ != nullptr; })) {
    const auto* job = job_;
    lock.unlock();
    std::exception_ptr error;
    try {
      (*job)();
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    job_error_ = error;
    job_ = nullptr;
    done_.notify_one();
  }
}

void PairRunner::run(const std::function<void()>& here, const std::function<void()>& there) {
  switch (threading_) {
    case Threading::single:
      here();
      there();
      return;
    case Threading::spawn: {
      std::exception_ptr error;
      {
        std::jthread helper([&] {
          try {
            there();
          } catch (...) {
            error = std::current_exception();
          }
        });
        here();  // if this throws, the helper is joined as the exception leaves the scope
      }
      if (error) {
        std::rethrow_exception(error);
      }
      return;
    }
    case Threading::pool:
      break;
  }
  {
    std::lock_guard lock(mutex_);
    job_ = &there;
    job_error_ = nullptr;
  }
  wake_.notify_one();
  std::exception_ptr here_error;
  try {
    here();
  } catch (...) {
    here_error = std::current_exception();
  }
  // `there` refers to the caller's object: wait for the worker even when `here` threw.
  std::unique_lock lock(mutex_);
  done_.wait(lock, [this] { return job_ == nullptr; });
  auto there_error = job_error_;
  lock.unlock();
  if (here_error) {
    std::rethrow_exception(here_error);
  }
  if (there_error) {
    std::rethrow_exception(there_error);
  }
}

}  // namespace ember::fedavg
