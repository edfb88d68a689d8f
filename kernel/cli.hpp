#pragma once
// The `ember` command line, as a function so tests can run it in-process.

#include <iosfwd>

namespace ember::kernel {

/// Runs `ember` with `argv`; writes results to `out` and problems to `err`; returns the exit code.
int run_cli(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

}  // namespace ember::kernel
