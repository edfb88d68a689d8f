#include "signal_stop.hpp"

#include <ctime>

namespace ember::kernel {

SignalStop::SignalStop(std::stop_source& stop) {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &set_, &previous_);
  waiter_ = std::jthread([this, &stop](std::stop_token token) {
    timespec tick{0, 100'000'000};
    while (!token.stop_requested()) {
      int sig = ::sigtimedwait(&set_, nullptr, &tick);
      if (sig == SIGINT || sig == SIGTERM) {
        signal_ = sig;
        stop.request_stop();
      }
    }
  });
}

SignalStop::~SignalStop() {
  waiter_.request_stop();
  waiter_.join();
  ::pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
}

}  // namespace ember::kernel
