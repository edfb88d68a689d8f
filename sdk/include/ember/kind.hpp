#pragma once
// The kinds of component a plugin can provide. Their values cross the ABI (the descriptor and its ELF
// section carry them): never renumber one; a new kind takes the next free value.

#include <cstdint>
#include <string_view>

namespace ember {

/// The kinds of component a plugin can provide; the first half of a type name ("pipe.socket").
enum class Kind : std::uint32_t {
  pipe = 1,       ///< carries frames between a client job and its trainer
  launcher = 2,   ///< starts, watches and stops a process tree or a container
  applet = 3,     ///< runs a third-party FL system's programs inside a job
  converter = 4,  ///< turns wire tensors into a framework's tensors and back
  workflow = 5,   ///< server-side round logic
  executor = 6,   ///< client-side task runner
};

/// The TOML-facing name of a kind ("pipe").
constexpr std::string_view to_string(Kind kind) noexcept {
  switch (kind) {
    case Kind::pipe:
      return "pipe";
    case Kind::launcher:
      return "launcher";
    case Kind::applet:
      return "applet";
    case Kind::converter:
      return "converter";
    case Kind::workflow:
      return "workflow";
    case Kind::executor:
      return "executor";
  }
  return "unknown";
}

}  // namespace ember
