#pragma once
// Runs the `ember` command line in process (run_cli), for tests that link the CLI library (cli_dep).

#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"

namespace ember::test {

/// What one in-process `ember` invocation printed and returned.
struct CliRun {
  int code;
  std::string out;
  std::string err;
};

/// `ember ARGS...`, in this process.
inline CliRun cli(std::vector<std::string> args) {
  args.insert(args.begin(), "ember");
  std::vector<const char*> argv;
  for (const auto& a : args) {
    argv.push_back(a.c_str());
  }
  std::ostringstream out;
  std::ostringstream err;
  int code = kernel::run_cli(static_cast<int>(argv.size()), argv.data(), out, err);
  return {code, out.str(), err.str()};
}

}  // namespace ember::test
