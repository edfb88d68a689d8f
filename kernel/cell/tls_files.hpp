#pragma once
// A cell's TLS files, read and checked (OpenSSL) before the transport sees them.

#include <string>
#include <string_view>

#include <ember/result.hpp>

#include "cell/cell.hpp"
#include "transport.hpp"

namespace ember::cell {

/// Reads the CA, certificate and key of `files` and checks them: the key is 0600 (not readable by others)
/// and belongs to the certificate, the CA signed it, it is valid now, and its common name is `own_name`
/// (unless empty). Errors name the file and the cause. Without `check`, only the key's mode and the PEM
/// forms are checked.
Result<TlsPem> load_tls(const TlsFiles& files, std::string_view own_name, bool check = true);

/// Verifies a peer's certificate against the project's CA (chain, signature, validity, TLS client use) and
/// returns its common name; the error says why not ("its certificate expired on 2026-01-02 10:00:00 UTC").
Result<std::string> verify_peer(const std::string& ca_pem, const std::string& cert_pem);

/// The common name of a PEM certificate, or empty.
std::string certificate_name(const std::string& pem);

}  // namespace ember::cell
