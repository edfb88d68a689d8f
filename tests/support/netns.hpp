#pragma once
// Network namespaces a test makes and removes: the server's and one per site, each site joined to the
// server by a veth pair (10.231.<n>.1 on the server's side, 10.231.<n>.2 on site n's), addresses that exist
// only inside those namespaces. Used by the tests that cross real interfaces (cell network, federation);
// where the machine cannot make namespaces, such a test exits 77 (a skip) and says why.

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace ember::test {

/// `command` through the shell, its output dropped; its exit code (-1 if it did not exit).
inline int sh(const std::string& command) {
  int status = std::system((command + " >/dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// Whether this machine can make a network namespace (root, iproute2); `why` says what is missing.
inline bool can_make_namespaces(std::string& why) {
  const std::string probe = "ember-probe-" + std::to_string(::getpid() % 100000);
  if (::geteuid() != 0 || sh("ip -V") != 0 || sh("ip netns add " + probe) != 0) {
    why = "this machine cannot create network namespaces (needs root and iproute2's ip)";
    return false;
  }
  sh("ip netns del " + probe);
  return true;
}

/// iproute2's `ip`, as a path (some test runners spawn without a PATH lookup).
inline std::string ip_program() {
  for (const char* path : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (::access(path, X_OK) == 0) {
      return path;
    }
  }
  return "ip";
}

/// `argv` run inside namespace `ns`.
inline std::vector<std::string> in_ns(const std::string& ns, std::vector<std::string> argv) {
  std::vector<std::string> out{ip_program(), "netns", "exec", ns};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

/// The server's namespace ("srv") and one per site ("s1", "s2", ...), removed (with every process left in
/// them) when this goes out of scope.
class Namespaces {
 public:
  explicit Namespaces(int sites = 2) : t_(std::to_string(::getpid() % 100000)), sites_(sites) {}
  ~Namespaces() {
    for (const auto& ns : made_) {
      // Processes first: deleting a namespace does not stop them.
      sh("ip netns pids " + ns + " | xargs -r kill -9");
      sh("ip netns del " + ns);
    }
  }
  Namespaces(const Namespaces&) = delete;
  Namespaces& operator=(const Namespaces&) = delete;

  std::string ns(const std::string& who) const { return "ember-" + who + "-" + t_; }
  std::string veth(const std::string& who, int end) const { return "em" + who + t_ + (end == 0 ? "a" : "b"); }
  /// The server's address on site n's link (n from 1), and the site's.
  static std::string server_address(int n) { return "10.231." + std::to_string(n) + ".1"; }
  static std::string site_address(int n) { return "10.231." + std::to_string(n) + ".2"; }

  /// Makes the namespaces and links; false (with `why`) if this machine cannot.
  bool make(std::string& why) {
    std::vector<std::string> who{"srv"};
    for (int n = 1; n <= sites_; ++n) {
      who.push_back("s" + std::to_string(n));
    }
    for (const auto& w : who) {
      if (sh("ip netns add " + ns(w)) != 0) {
        why = "cannot create a network namespace (needs root and iproute2)";
        return false;
      }
      made_.push_back(ns(w));
      sh("ip -n " + ns(w) + " link set lo up");
    }
    for (int n = 1; n <= sites_; ++n) {
      const std::string site = "s" + std::to_string(n);
      const std::string a = veth(site, 0);
      const std::string b = veth(site, 1);
      if (sh("ip link add " + a + " netns " + ns("srv") + " type veth peer name " + b + " netns " +
             ns(site)) != 0) {
        why = "cannot create a veth pair";
        return false;
      }
      sh("ip -n " + ns("srv") + " addr add " + server_address(n) + "/24 dev " + a);
      sh("ip -n " + ns(site) + " addr add " + site_address(n) + "/24 dev " + b);
      sh("ip -n " + ns("srv") + " link set " + a + " up");
      sh("ip -n " + ns(site) + " link set " + b + " up");
    }
    return true;
  }

 private:
  std::string t_;
  int sites_;
  std::vector<std::string> made_;
};

}  // namespace ember::test
