#pragma once
// Results and errors: every fallible SDK and kernel call returns ember::Result<T>.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include <tl/expected.hpp>

namespace ember {

/// What went wrong, as a stable code (values cross the plugin ABI: never renumber); the message says where
/// and why.
enum class Errc : std::uint32_t {
  not_found = 0,           ///< a file, plugin, component or key that was asked for does not exist
  open_failed = 1,         ///< the dynamic loader refused a file (its message is kept)
  not_a_plugin = 2,        ///< a file without the .ember_plugin section (or the entry symbol)
  abi_mismatch = 3,        ///< a plugin built against another SDK ABI version
  invalid_descriptor = 4,  ///< a plugin whose descriptor is malformed (size, names, options)
  build_mismatch = 5,      ///< a plugin built by an incompatible compiler or standard library
  duplicate_name = 6,      ///< a plugin or component name that an earlier plugin already provides
  invalid_option = 7,      ///< a component option that is unknown, mistyped or out of range
  create_failed = 8,       ///< a component factory that failed or threw
  invalid_config = 9,      ///< a config file that is not valid TOML or breaks the schema
  io_error = 10,           ///< an operating-system call failed
  timeout = 11,            ///< a bounded wait ran out
  closed = 12,             ///< the other end or the object is closed
  cancelled = 13,          ///< the stop token was triggered
  invalid_argument = 14,   ///< a caller passed a value the callee cannot accept
  unsupported = 15,        ///< the component does not support what was asked
  malformed = 16,          ///< input that breaks its format: a frame, a file, a tensor header
  peer_gone = 17,          ///< the other end of a session stopped answering or went away
  rejected = 18,           ///< the peer refused what was sent (a HELLO token, a result)
  internal = 19,           ///< a broken invariant inside ember
};

/// A short, stable name of an error code ("abi_mismatch"), for logs and JSON.
constexpr std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::not_found:
      return "not_found";
    case Errc::open_failed:
      return "open_failed";
    case Errc::not_a_plugin:
      return "not_a_plugin";
    case Errc::abi_mismatch:
      return "abi_mismatch";
    case Errc::invalid_descriptor:
      return "invalid_descriptor";
    case Errc::build_mismatch:
      return "build_mismatch";
    case Errc::duplicate_name:
      return "duplicate_name";
    case Errc::invalid_option:
      return "invalid_option";
    case Errc::create_failed:
      return "create_failed";
    case Errc::invalid_config:
      return "invalid_config";
    case Errc::io_error:
      return "io_error";
    case Errc::timeout:
      return "timeout";
    case Errc::closed:
      return "closed";
    case Errc::cancelled:
      return "cancelled";
    case Errc::invalid_argument:
      return "invalid_argument";
    case Errc::unsupported:
      return "unsupported";
    case Errc::malformed:
      return "malformed";
    case Errc::peer_gone:
      return "peer_gone";
    case Errc::rejected:
      return "rejected";
    case Errc::internal:
      return "internal";
  }
  return "unknown";
}

/// An error: a code for programs and a message for people, which names the file, key or peer and the cause.
struct Error {
  Errc code = Errc::internal;
  std::string message;
};

/// The result of a fallible call: a value or an Error (tl::expected, the one alias the SDK uses).
template <class T>
using Result = tl::expected<T, Error>;

/// Builds the error side of a Result: `return ember::fail(Errc::not_found, "...")`.
inline tl::unexpected<Error> fail(Errc code, std::string message) {
  return tl::unexpected<Error>(Error{code, std::move(message)});
}

/// Re-raises an existing error in a Result of another type.
inline tl::unexpected<Error> fail(Error error) {
  return tl::unexpected<Error>(std::move(error));
}

/// A successful Result<void>.
inline Result<void> ok() {
  return {};
}

}  // namespace ember
