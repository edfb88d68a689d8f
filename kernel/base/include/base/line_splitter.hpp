#pragma once
// Splits a byte stream into lines of at most `max_bytes` each, so a program that never prints a newline
// cannot grow the buffer without bound.

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>

namespace ember::base {

class LineSplitter {
 public:
  explicit LineSplitter(std::size_t max_bytes) : max_bytes_(max_bytes) {}

  /// Adds bytes; calls `emit(line)` for each complete line (without its newline) and for each piece of
  /// `max_bytes` of a longer one.
  template <class Emit>
  void feed(std::string_view data, Emit&& emit) {
    while (!data.empty()) {
      auto newline = data.find('\n');
      auto take =
          std::min(newline == std::string_view::npos ? data.size() : newline, max_bytes_ - pending_.size());
      pending_.append(data.substr(0, take));
      data.remove_prefix(take);
      if (!data.empty() && data.front() == '\n') {
        emit(std::string_view(pending_));
        pending_.clear();
        data.remove_prefix(1);
      } else if (!data.empty()) {
        // The line reached max_bytes and goes on. A piece that ends exactly at max_bytes waits for the next
        // byte, so a line of exactly max_bytes is not followed by an empty one.
        emit(std::string_view(pending_));
        pending_.clear();
      }
    }
  }

  /// At end of file: emits a last line that had no newline.
  template <class Emit>
  void finish(Emit&& emit) {
    if (!pending_.empty()) {
      emit(std::string_view(pending_));
      pending_.clear();
    }
  }

 private:
  std::size_t max_bytes_;
  std::string pending_;
};

}  // namespace ember::base
