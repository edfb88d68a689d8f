#pragma once
// A real container engine for tests and benchmarks: podman's Docker-compatible service on a socket in a
// temporary folder, with its own storage and configuration (docs: ../shared/research/toolchain.md §5), and a
// small image imported from a root file system of static busybox, with no registry. Destroying it removes
// every container, stops the service and deletes the folder, mounts included: nothing is left behind.

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace ember::test {

class PodmanEngine {
 public:
  /// Starts the service and imports the image; nullptr when that is not possible here, with `why` saying
  /// why (podman or busybox-static not installed, the service not answering, a container that cannot run).
  static std::unique_ptr<PodmanEngine> start(std::string& why);
  ~PodmanEngine();
  PodmanEngine(const PodmanEngine&) = delete;
  PodmanEngine& operator=(const PodmanEngine&) = delete;

  /// The service's socket.
  std::filesystem::path socket() const { return dir_ / "podman.sock"; }
  /// The imported image: busybox (sh, echo, sleep, cat, ...) with /lib and /lib64 pointing into /usr, so a
  /// program of the host runs in it once the host's /usr is mounted.
  static constexpr const char* image = "localhost/ember-test/busybox:1";

  struct Run {
    int exit_code = -1;
    std::string out;
  };
  /// Runs the podman CLI on the same store as the service (for the tests' own checks and the benchmark's
  /// baseline; the launcher never uses it). Its output is stdout and stderr together.
  Run podman(const std::vector<std::string>& args, int timeout_s = 60) const;
  /// The ids of the containers (any state) with this label ("ember.site=local").
  std::vector<std::string> containers_with_label(const std::string& label) const;

  /// Stops the service (its socket goes away); the store stays until destruction.
  void stop_service();

 private:
  explicit PodmanEngine(std::filesystem::path dir) : dir_(std::move(dir)) {}
  bool setup(std::string& why);

  std::filesystem::path dir_;
  pid_t service_ = -1;
};

}  // namespace ember::test
