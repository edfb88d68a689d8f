// A stand-in for a control process: launches `sleep` through launcher.process, writes the sleep's pid to the
// file named by argv[1], and waits to be killed. process_launcher_test kills it with SIGKILL and checks that
// the sleep died with it.

#include <unistd.h>

#include <cstdio>

#include <ember/launcher.hpp>
#include <ember/plugin.hpp>

#include "support.hpp"

EMBER_DECLARE_STATIC_PLUGIN(process_launcher);

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s PID_FILE\n", argv[0]);
    return 2;
  }
  alarm(120);  // if the test never kills it, it still ends (and the sleep with it)
  auto kernel = ember::test::static_kernel();
  if (!kernel->add_static(ember_plugin_descriptor_process_launcher(), "<static>")) {
    return 1;
  }
  auto launcher = kernel->registry().create_as<ember::Launcher>("launcher.process", ember::Options{});
  if (!launcher) {
    std::fprintf(stderr, "%s\n", launcher.error().message.c_str());
    return 1;
  }
  // The pid is written only once the program runs; `exec` makes the sleep the launched process itself.
  auto handle = (*launcher)->launch(ember::LaunchSpec{
      "orphan",
      {"/bin/sh", "-c", "echo $$ > \"$1.tmp\" && mv \"$1.tmp\" \"$1\" && exec sleep 300", "sh", argv[1]},
      {},
      {},
      {}});
  if (!handle) {
    std::fprintf(stderr, "%s\n", handle.error().message.c_str());
    return 1;
  }
  while (true) {
    pause();
  }
}
