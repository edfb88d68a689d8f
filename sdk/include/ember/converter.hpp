#pragma once
// Converters: turn wire tensors into a framework's tensors (on a chosen device) and back.

#include <string_view>

#include <ember/component.hpp>
#include <ember/tensor.hpp>

namespace ember {

/// A converter component. Both ends of a session declare their converters' formats in HELLO.
/// Thread-safe: to_native() and to_wire() may run on several threads at once (a session's reader and a
/// trainer's own threads); format() is constant.
class EMBER_API Converter : public Component {
 public:
  /// The native format this converter produces and accepts ("torch", "wire").
  virtual std::string_view format() const noexcept = 0;
  /// Wire to native. May share `tensor.bytes` (keeping `tensor.owner` alive) instead of copying.
  virtual Result<NativeTensor> to_native(const WireTensor& tensor) = 0;
  /// Native to wire; the result owns or shares its bytes.
  virtual Result<WireTensor> to_wire(const NativeTensor& tensor, std::string name) = 0;
};

}  // namespace ember
