#pragma once
// The small string helpers that the kernel, its IPC libraries and the in-tree plugins share.

#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace ember::base {

/// `items` joined with `separator` between them.
inline std::string join(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i != 0) {
      out.append(separator);
    }
    out.append(items[i]);
  }
  return out;
}

/// The non-empty pieces of `text` between occurrences of `separator`.
inline std::vector<std::string> split(std::string_view text, char separator) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find(separator, start);
    if (end == std::string_view::npos) {
      end = text.size();
    }
    if (end > start) {
      out.emplace_back(text.substr(start, end - start));
    }
    start = end + 1;
  }
  return out;
}

/// A tensor shape as "[2, 3]".
inline std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) {
      text += ", ";
    }
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

/// The system's message for an errno value ("No such file or directory"); thread-safe, unlike strerror.
inline std::string errno_text(int error) {
  return std::system_category().message(error);
}

}  // namespace ember::base
