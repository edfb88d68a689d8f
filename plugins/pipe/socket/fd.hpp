#pragma once
// An owned file descriptor: closed exactly once, when its owner lets go of it.

#include <unistd.h>

#include <utility>

namespace ember::socket_pipe {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset() noexcept {
    if (fd_ >= 0) {
      ::close(fd_);  // never retried on EINTR: on Linux the descriptor is released either way
      fd_ = -1;
    }
  }

 private:
  int fd_ = -1;
};

}  // namespace ember::socket_pipe
