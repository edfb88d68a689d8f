#pragma once
// The exit codes of the `ember` program; docs/exit-codes.md is the catalogue and must match.

namespace ember::kernel::exit_code {

inline constexpr int ok = 0;              ///< success
inline constexpr int internal = 1;        ///< a bug in ember: an unexpected exception or broken invariant
inline constexpr int usage = 2;           ///< bad command line
inline constexpr int invalid_config = 3;  ///< a config file is not valid TOML, breaks the schema or an option
inline constexpr int plugin_error = 4;    ///< a plugin was refused, or a component type is not available
inline constexpr int job_failed = 5;      ///< a job ran and failed
inline constexpr int interrupted = 6;     ///< stopped by SIGINT or SIGTERM
inline constexpr int io_error = 7;        ///< a file or folder could not be read or written

}  // namespace ember::kernel::exit_code
