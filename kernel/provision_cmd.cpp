// `ember provision`: the CA and the startup kits of a project, written all at once or not at all.

#include "provision_cmd.hpp"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iomanip>
#include <ostream>

#include <base/strings.hpp>
#include <provision/certs.hpp>
#include <provision/files.hpp>

#include "exit_codes.hpp"

namespace ember::kernel {

namespace fs = std::filesystem;
using provision::Credentials;
using provision::Role;

namespace {

// Modes of what a kit holds: keys are the owner's only; certificates and kit.toml are public information,
// but sit in 0700 folders all the same.
constexpr mode_t key_mode = 0600;
constexpr mode_t public_mode = 0644;
constexpr mode_t dir_mode = 0700;

// A TOML basic string. Names are checked to [A-Za-z0-9@._-] before they get here; escaping keeps the
// output valid TOML whatever a caller passes.
std::string toml_string(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out + "\"";
}

std::string toml_string_list(const std::vector<std::string>& items) {
  std::vector<std::string> parts;
  for (const auto& item : items) {
    parts.push_back(toml_string(item));
  }
  // Appended piecewise: GCC 12 at -O3 reports a false -Wrestrict on `"[" + std::string&&` (release builds).
  std::string list = "[";
  list += base::join(parts, ", ");
  list += "]";
  return list;
}

// host:port, with an IPv6 address in brackets.
std::string endpoint(const std::string& host, std::uint16_t port) {
  bool ipv6 = host.find(':') != std::string::npos;
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Role role_of(const ProjectConfig& project, const std::string& kit) {
  if (kit == project.server_name) {
    return Role::server;
  }
  return std::find(project.sites.begin(), project.sites.end(), kit) != project.sites.end() ? Role::site
                                                                                           : Role::admin;
}

// Removes a folder tree on destruction unless released: a failed run leaves nothing behind.
class TreeGuard {
 public:
  explicit TreeGuard(fs::path dir) : dir_(std::move(dir)) {}
  ~TreeGuard() {
    if (!dir_.empty()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }
  TreeGuard(const TreeGuard&) = delete;
  TreeGuard& operator=(const TreeGuard&) = delete;
  void release() { dir_.clear(); }

 private:
  fs::path dir_;
};

Result<void> write_kit(const fs::path& dir, const ProjectConfig& project, const std::string& kit,
                       const Credentials& ca, const Credentials& leaf) {
  if (auto made = provision::make_dir(dir, dir_mode); !made) {
    return made;
  }
  const std::pair<const char*, std::pair<const std::string*, mode_t>> files[] = {
      {"ca.crt", {&ca.cert_pem, public_mode}},
      {"cert.crt", {&leaf.cert_pem, public_mode}},
      {"cert.key", {&leaf.key_pem, key_mode}},
  };
  for (const auto& [name, content] : files) {
    if (auto written = provision::write_file_atomic(dir / name, *content.first, content.second); !written) {
      return written;
    }
  }
  return provision::write_file_atomic(dir / "kit.toml", kit_toml(project, kit), public_mode);
}

// Checks what is at `out` now; an existing folder may be replaced only with --force, and only when it is
// empty or an earlier output, so a mistyped --out never deletes someone's files.
Result<bool> check_out_dir(const fs::path& out, bool force) {
  std::error_code ec;
  auto status = fs::symlink_status(out, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return fail(Errc::io_error, out.string() + ": " + ec.message());
  }
  if (!fs::exists(status)) {
    return false;
  }
  if (!force) {
    return fail(
        Errc::io_error,
        out.string() + ": already exists; give --force to replace it (its CA and every kit are replaced)");
  }
  if (!fs::is_directory(status)) {
    return fail(Errc::io_error, out.string() + ": exists and is not a folder; not replacing it");
  }
  bool empty = fs::is_empty(out, ec);
  if (!empty && !fs::exists(out / "ca" / "ca.crt", ec)) {
    return fail(Errc::io_error, out.string() +
                                    ": exists and is not an output of 'ember provision' (no ca/ca.crt); not "
                                    "replacing it");
  }
  return true;
}

}  // namespace

std::string kit_toml(const ProjectConfig& project, const std::string& kit) {
  Role role = role_of(project, kit);
  std::string server = endpoint(project.server_hosts.front(), project.port);
  std::string text = "# Startup kit of '" + kit + "' (" + std::string(provision::to_string(role)) +
                     ") in project '" + project.name +
                     "', written by 'ember provision'.\n# Paths are relative to this folder.\n"
                     "schema_version = 1\n\n";
  text += "[site]\nname = " + toml_string(kit) + "\nrole = " +
          toml_string(role == Role::server ? "server"
                      : role == Role::site ? "client"
                                           : "admin") +
          "\n\n";
  text += "[cell]\n";
  if (role == Role::server) {
    text += "listen = " + toml_string("0.0.0.0:" + std::to_string(project.port)) + "\n";
  } else {
    text += "server = " + toml_string(server) + "\nserver_name = " + toml_string(project.server_name) + "\n";
    if (role == Role::site) {
      text += "internal_listen = \"127.0.0.1:0\"\n";
    }
  }
  text += "ca = \"ca.crt\"\ncert = \"cert.crt\"\nkey = \"cert.key\"\n";
  if (role == Role::server) {
    text += "\n[project]\nname = " + toml_string(project.name) +
            "\nsites = " + toml_string_list(project.sites) +
            "\nadmins = " + toml_string_list(project.admins) + "\n";
  }
  return text;
}

Result<KitsWritten> write_kits(const ProjectConfig& project, const fs::path& out_given, bool force) {
  // "kits/" names the folder "kits": the temporary folder goes beside it, not inside.
  fs::path out = out_given.has_filename() ? out_given : out_given.parent_path();
  auto exists = check_out_dir(out, force);
  if (!exists) {
    return fail(std::move(exists.error()));
  }
  fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  std::string name = ".";  // piecewise, as above
  name += out.filename().string();
  name += ".tmp-XXXXXX";
  std::string temp = (parent / name).string();
  if (::mkdtemp(temp.data()) == nullptr) {
    return fail(Errc::io_error,
                out.string() + ": cannot create a temporary folder beside it: " + std::strerror(errno));
  }
  TreeGuard guard{fs::path(temp)};
  fs::path build = temp;

  auto ca = provision::make_ca(project.name + " root CA", project.valid_days);
  if (!ca) {
    return fail(std::move(ca.error()));
  }
  // Every leaf shares the CA's validity, so no certificate outlives the CA that signed it.
  auto ca_info = provision::describe(ca->cert_pem);
  if (!ca_info) {
    return fail(std::move(ca_info.error()));
  }
  auto ca_written = provision::make_dir(build / "ca", dir_mode);
  if (ca_written) {
    ca_written = provision::write_file_atomic(build / "ca" / "ca.crt", ca->cert_pem, public_mode);
  }
  if (ca_written) {
    ca_written = provision::write_file_atomic(build / "ca" / "ca.key", ca->key_pem, key_mode);
  }
  if (!ca_written) {
    return fail(std::move(ca_written.error()));
  }
  KitsWritten written;
  written.kits.push_back(project.server_name);
  written.kits.insert(written.kits.end(), project.sites.begin(), project.sites.end());
  written.kits.insert(written.kits.end(), project.admins.begin(), project.admins.end());
  for (const auto& kit : written.kits) {
    Role role = role_of(project, kit);
    auto sans = role == Role::server ? project.server_hosts : std::vector<std::string>{};
    auto leaf = provision::issue(*ca, kit, role, sans, ca_info->not_before, ca_info->not_after);
    if (!leaf) {
      return fail(leaf.error().code, "certificate of '" + kit + "': " + leaf.error().message);
    }
    if (auto made = write_kit(build / kit, project, kit, *ca, *leaf); !made) {
      return fail(std::move(made.error()));
    }
  }
  // Into place in one step: RENAME_NOREPLACE refuses a folder that appeared meanwhile; RENAME_EXCHANGE swaps
  // an earlier output for the new one, so the old is removed only once the new is in place.
  unsigned flags = *exists ? RENAME_EXCHANGE : RENAME_NOREPLACE;
  if (::renameat2(AT_FDCWD, build.c_str(), AT_FDCWD, out.c_str(), flags) != 0) {
    return fail(Errc::io_error,
                out.string() + ": cannot move the new kits into place: " + std::strerror(errno));
  }
  if (!*exists) {
    guard.release();  // the temporary folder is `out` now; after an exchange it holds the old output instead
  }
  written.dir = out;
  written.replaced = *exists;
  written.valid_until = provision::utc_date(ca_info->not_after);
  return written;
}

int provision(const fs::path& project_file, const fs::path& out, bool force, std::ostream& out_stream,
              std::ostream& err) {
  auto project = load_project(project_file);
  if (!project) {
    if (project.error().code == Errc::invalid_config) {
      err << project.error().message << "\n";
    } else {
      err << "ember provision: " << project.error().message << "\n";
    }
    return exit_code_for(project.error());
  }
  fs::path dir = out.empty() ? fs::path(project->name + "-kits") : out;
  auto written = write_kits(*project, dir, force);
  if (!written) {
    err << "ember provision: " << written.error().message << "\n";
    return exit_code_for(written.error());
  }
  out_stream << "ember provision: project '" << project->name << "': " << written->kits.size()
             << " startup kits in " << dir.string() << (written->replaced ? " (replaced)" : "")
             << ", certificates valid until " << written->valid_until << " (UTC)\n";
  auto line = [&](const std::string& folder, const std::string& what) {
    out_stream << "  " << std::left << std::setw(16) << (folder + "/") << " " << what << "\n";
  };
  line("ca", "root CA; ca.key signs every certificate and is in no kit: keep it offline");
  std::string server = endpoint(project->server_hosts.front(), project->port);
  line(project->server_name, "server, listens on port " + std::to_string(project->port) +
                                 ", certificate for " + base::join(project->server_hosts, ", "));
  for (const auto& site : project->sites) {
    line(site, "site, connects to " + server);
  }
  for (const auto& admin : project->admins) {
    line(admin, "admin, connects to " + server);
  }
  return exit_code::ok;
}

}  // namespace ember::kernel
