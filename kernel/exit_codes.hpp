#pragma once
// The exit codes of the `ember` program; docs/exit-codes.md is the catalogue and must match.

#include <ember/result.hpp>

namespace ember::kernel::exit_code {

inline constexpr int ok = 0;              ///< success
inline constexpr int internal = 1;        ///< a bug in ember: an unexpected exception or broken invariant
inline constexpr int usage = 2;           ///< bad command line
inline constexpr int invalid_config = 3;  ///< a config file is not valid TOML, breaks the schema or an option
inline constexpr int plugin_error = 4;    ///< a plugin was refused, or a component is not available or fails
inline constexpr int job_failed = 5;      ///< a job ran and failed
inline constexpr int interrupted = 6;     ///< stopped by SIGINT or SIGTERM
inline constexpr int io_error = 7;        ///< a file or folder is missing, or could not be read or written
inline constexpr int unreachable =
    8;  ///< the cell network: a daemon or the server could not be reached, or refused us

}  // namespace ember::kernel::exit_code

namespace ember::kernel {

/// The exit code of a command that failed with `error` (docs/exit-codes.md, "From error codes to exit
/// codes"). A config file that does not exist is reported by its reader as Errc::not_found and turned into
/// io_error by the command first (as_read_error in cli.cpp): not_found here means a component type or plugin.
constexpr int exit_code_for(const Error& error) noexcept {
  switch (error.code) {
    case Errc::invalid_config:
    case Errc::invalid_option:
      return exit_code::invalid_config;
    case Errc::invalid_argument:
      return exit_code::usage;
    case Errc::io_error:
      return exit_code::io_error;
    case Errc::not_found:
    case Errc::open_failed:
    case Errc::not_a_plugin:
    case Errc::abi_mismatch:
    case Errc::invalid_descriptor:
    case Errc::build_mismatch:
    case Errc::duplicate_name:
    case Errc::create_failed:
      return exit_code::plugin_error;
    case Errc::cancelled:
      return exit_code::interrupted;
    default:
      return exit_code::internal;
  }
}

}  // namespace ember::kernel
