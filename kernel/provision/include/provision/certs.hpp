#pragma once
// The certificates of a project: a root CA, and leaf certificates it signs for the server, the sites and the
// admins. Keys are EC P-256, signatures SHA-256; everything crosses this API as PEM text, which is what
// gRPC's TLS credentials take. No TOML and no gRPC here: `ember provision` and the cell network both use
// this.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ember/result.hpp>

namespace ember::provision {

/// What a certificate lets its holder be; recorded as the subject's OU, so a server tells an admin from a
/// site.
enum class Role { server, site, admin };

/// "server", "site" or "admin".
std::string_view to_string(Role role) noexcept;

/// The role named by `text` ("server", "site", "admin"), or nothing.
std::optional<Role> parse_role(std::string_view text) noexcept;

/// A private key and its certificate, both PEM.
struct Credentials {
  std::string key_pem;   ///< unencrypted PKCS#8: keep it 0600
  std::string cert_pem;  ///< the certificate
};

using Clock = std::chrono::system_clock;

/// A new root CA: a fresh key and a self-signed certificate (CN = `common_name`, basicConstraints CA:TRUE
/// critical, keyUsage keyCertSign and cRLSign, a subject key id), valid from a few minutes ago (clock skew
/// between machines) for `valid_days` days. Each call makes an independent CA (test-only use: a second CA
/// whose certificates a project must refuse).
Result<Credentials> make_ca(std::string_view common_name, int valid_days);

/// A new key and a leaf certificate signed by `ca`: subject CN = `common_name` and OU = `role`; a random
/// 128-bit serial; basicConstraints CA:FALSE; keyUsage digitalSignature and keyEncipherment; extendedKeyUsage
/// serverAuth and clientAuth (a site is a TLS client of the server and a TLS server for its jobs). The
/// subjectAltName holds each of `sans` (an IPv4 or IPv6 address as IP, anything else as DNS) and the name
/// itself: DNS:<common_name>, or email:<common_name> for a name with '@' (an admin's). The validity is taken
/// as given (test-only use: a certificate that has already expired, or is not valid yet).
Result<Credentials> issue(const Credentials& ca, std::string_view common_name, Role role,
                          const std::vector<std::string>& sans, Clock::time_point not_before,
                          Clock::time_point not_after);

/// What a certificate says about its holder, for checks and error messages.
struct CertInfo {
  std::string common_name;        ///< subject CN
  std::optional<Role> role;       ///< from the subject OU; nothing when absent or unknown
  std::string issuer;             ///< the issuer's CN (its whole one-line name if it has no CN)
  std::vector<std::string> sans;  ///< "DNS:name", "IP:127.0.0.1", "email:a@b"
  Clock::time_point not_before;   ///< start of validity
  Clock::time_point not_after;    ///< end of validity
  std::string serial;             ///< hex
  bool is_ca = false;             ///< basicConstraints CA:TRUE
};

/// Reads the fields of a PEM certificate (Errc::malformed if it does not parse).
Result<CertInfo> describe(std::string_view cert_pem);

/// A time as a UTC date, "2026-01-02".
std::string utc_date(Clock::time_point time);

/// Whether `cert` is valid at `now`; otherwise Errc::rejected with "certificate of 'site-1' expired on
/// 2026-01-02" or "... is not valid before 2026-01-02".
Result<void> check_validity(const CertInfo& cert, Clock::time_point now = Clock::now());

/// Verifies `cert_pem` against the single trusted root `ca_pem` (the chain, signatures and validity at
/// `at`, default now). Errc::rejected names the certificate and says why: "certificate of 'site-1' (site)
/// expired on 2026-01-02", "certificate of 'site-1' (site) is not signed by CA 'example CA' (issuer 'other
/// CA'): unable to get local issuer certificate".
Result<void> verify(std::string_view ca_pem, std::string_view cert_pem,
                    std::optional<Clock::time_point> at = std::nullopt);

}  // namespace ember::provision
