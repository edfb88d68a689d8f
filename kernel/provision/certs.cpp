#include "provision/certs.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <ctime>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#include "provision/openssl.hpp"

namespace ember::provision {

namespace {

// The CA's validity starts this far back, so a machine whose clock is a little behind accepts a fresh kit.
constexpr std::chrono::minutes clock_skew{5};

bool is_ip_address(const std::string& text) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, text.c_str(), buffer) == 1 || inet_pton(AF_INET6, text.c_str(), buffer) == 1;
}

Result<PkeyPtr> new_key() {
  PkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) {
    return fail(openssl_error("cannot generate an EC P-256 key"));
  }
  return key;
}

Result<void> add_name_entry(X509_NAME* name, const char* field, std::string_view value) {
  if (X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(value.data()),
                                 static_cast<int>(value.size()), -1, 0) != 1) {
    return fail(
        openssl_error("cannot set the subject's " + std::string(field) + " to '" + std::string(value) + "'",
                      Errc::invalid_argument));
  }
  return ok();
}

// An extension written in OpenSSL's configuration syntax; `issuer` is the signing certificate (the
// certificate itself for a self-signed one), which the key identifiers need.
Result<void> add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return fail(openssl_error("cannot add the extension " + std::string(OBJ_nid2sn(nid)) + " = " + value));
  }
  return ok();
}

// A positive serial of 128 random bits (RFC 5280 allows up to 20 octets).
Result<void> set_random_serial(X509* cert) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    return fail(openssl_error("cannot draw a random serial number"));
  }
  bytes[0] = static_cast<unsigned char>((bytes[0] & 0x7f) | 0x40);  // positive, and never shortened
  BignumPtr number(BN_bin2bn(bytes, sizeof bytes, nullptr));
  if (!number || BN_to_ASN1_INTEGER(number.get(), X509_get_serialNumber(cert)) == nullptr) {
    return fail(openssl_error("cannot set the serial number"));
  }
  return ok();
}

// A certificate with version, serial, validity, subject and public key set; extensions and signature to come.
Result<X509Ptr> new_cert(EVP_PKEY* key, Clock::time_point not_before, Clock::time_point not_after,
                         std::string_view common_name, std::optional<Role> role) {
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return fail(openssl_error("cannot create a certificate"));
  }
  if (auto serial = set_random_serial(cert.get()); !serial) {
    return fail(std::move(serial.error()));
  }
  if (ASN1_TIME_set(X509_getm_notBefore(cert.get()), Clock::to_time_t(not_before)) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(cert.get()), Clock::to_time_t(not_after)) == nullptr) {
    return fail(openssl_error("cannot set the validity"));
  }
  X509_NAME* subject = X509_get_subject_name(cert.get());
  if (role) {
    if (auto added = add_name_entry(subject, "OU", to_string(*role)); !added) {
      return fail(std::move(added.error()));
    }
  }
  if (auto added = add_name_entry(subject, "CN", common_name); !added) {
    return fail(std::move(added.error()));
  }
  if (X509_set_pubkey(cert.get(), key) != 1) {
    return fail(openssl_error("cannot set the public key"));
  }
  return cert;
}

Result<void> add_alt_names(X509* cert, const std::vector<std::string>& names) {
  GeneralNamesPtr list(sk_GENERAL_NAME_new_null());
  if (!list) {
    return fail(openssl_error("cannot allocate the subjectAltName"));
  }
  for (const auto& entry : names) {
    // "IP:..." / "DNS:..." / "email:...", as made by issue().
    auto colon = entry.find(':');
    std::string kind = entry.substr(0, colon);
    std::string value = entry.substr(colon + 1);
    GENERAL_NAME* name = GENERAL_NAME_new();
    if (name == nullptr || sk_GENERAL_NAME_push(list.get(), name) == 0) {
      GENERAL_NAME_free(name);
      return fail(openssl_error("cannot allocate a subjectAltName entry"));
    }
    if (kind == "IP") {
      ASN1_OCTET_STRING* address = a2i_IPADDRESS(value.c_str());
      if (address == nullptr) {
        return fail(openssl_error("not an IP address: '" + value + "'", Errc::invalid_argument));
      }
      GENERAL_NAME_set0_value(name, GEN_IPADD, address);
    } else {
      ASN1_IA5STRING* text = ASN1_IA5STRING_new();
      if (text == nullptr || ASN1_STRING_set(text, value.data(), static_cast<int>(value.size())) != 1) {
        ASN1_IA5STRING_free(text);
        return fail(openssl_error("cannot allocate a subjectAltName entry"));
      }
      GENERAL_NAME_set0_value(name, kind == "email" ? GEN_EMAIL : GEN_DNS, text);
    }
  }
  if (X509_add1_ext_i2d(cert, NID_subject_alt_name, list.get(), 0, X509V3_ADD_DEFAULT) != 1) {
    return fail(openssl_error("cannot add the subjectAltName"));
  }
  return ok();
}

// The subjectAltName entries of a leaf: the given hosts, then the certificate's own name; no duplicates.
Result<std::vector<std::string>> alt_names(std::string_view common_name,
                                           const std::vector<std::string>& sans) {
  std::vector<std::string> out;
  auto add = [&out](std::string entry) {
    if (std::find(out.begin(), out.end(), entry) == out.end()) {
      out.push_back(std::move(entry));
    }
  };
  for (const auto& san : sans) {
    bool printable =
        !san.empty() && std::all_of(san.begin(), san.end(), [](char c) { return c > ' ' && c < 127; });
    if (!printable) {
      return fail(Errc::invalid_argument,
                  "subjectAltName entry '" + san +
                      "' is not a host name or an IP address (printable ASCII, no spaces)");
    }
    add((is_ip_address(san) ? "IP:" : "DNS:") + san);
  }
  std::string name(common_name);
  add((name.find('@') != std::string::npos ? "email:" : "DNS:") + name);
  return out;
}

Result<void> sign(X509* cert, EVP_PKEY* key) {
  if (X509_sign(cert, key, EVP_sha256()) <= 0) {
    return fail(openssl_error("cannot sign the certificate"));
  }
  return ok();
}

std::string name_field(const X509_NAME* name, int nid) {
  int index = X509_NAME_get_index_by_NID(name, nid, -1);
  if (index < 0) {
    return {};
  }
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  unsigned char* utf8 = nullptr;
  int length = ASN1_STRING_to_UTF8(&utf8, data);
  if (length < 0) {
    ERR_clear_error();
    return {};
  }
  std::string out(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(length));
  OPENSSL_free(utf8);
  return out;
}

std::string one_line(const X509_NAME* name) {
  char buffer[512];
  return X509_NAME_oneline(name, buffer, sizeof buffer) != nullptr ? std::string(buffer) : std::string();
}

Result<Clock::time_point> time_of(const ASN1_TIME* time) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(time, &tm) != 1) {
    return fail(openssl_error("cannot read a certificate time", Errc::malformed));
  }
  return Clock::from_time_t(timegm(&tm));
}

std::vector<std::string> read_alt_names(X509* cert) {
  std::vector<std::string> out;
  GeneralNamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) {
    return out;
  }
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    int type = 0;
    const auto* value = static_cast<const ASN1_STRING*>(GENERAL_NAME_get0_value(name, &type));
    const auto* data = reinterpret_cast<const char*>(ASN1_STRING_get0_data(value));
    int length = ASN1_STRING_length(value);
    if (type == GEN_DNS || type == GEN_EMAIL) {
      out.push_back((type == GEN_DNS ? "DNS:" : "email:") +
                    std::string(data, static_cast<std::size_t>(length)));
    } else if (type == GEN_IPADD && (length == 4 || length == 16)) {
      char text[INET6_ADDRSTRLEN];
      if (inet_ntop(length == 4 ? AF_INET : AF_INET6, data, text, sizeof text) != nullptr) {
        out.push_back("IP:" + std::string(text));
      }
    }
  }
  return out;
}

Result<CertInfo> info_of(X509* cert) {
  CertInfo info;
  const X509_NAME* subject = X509_get_subject_name(cert);
  info.common_name = name_field(subject, NID_commonName);
  info.role = parse_role(name_field(subject, NID_organizationalUnitName));
  const X509_NAME* issuer = X509_get_issuer_name(cert);
  info.issuer = name_field(issuer, NID_commonName);
  if (info.issuer.empty()) {
    info.issuer = one_line(issuer);
  }
  info.sans = read_alt_names(cert);
  auto not_before = time_of(X509_get0_notBefore(cert));
  auto not_after = time_of(X509_get0_notAfter(cert));
  if (!not_before || !not_after) {
    return fail(not_before ? std::move(not_after.error()) : std::move(not_before.error()));
  }
  info.not_before = *not_before;
  info.not_after = *not_after;
  BignumPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (char* hex = serial ? BN_bn2hex(serial.get()) : nullptr) {
    info.serial = hex;
    OPENSSL_free(hex);
  }
  info.is_ca = (X509_get_extension_flags(cert) & EXFLAG_CA) != 0;
  ERR_clear_error();  // absent extensions leave entries in the queue
  return info;
}

// "certificate of 'site-1' (site)", or "CA certificate 'example CA'".
std::string who(const CertInfo& info) {
  if (info.is_ca) {
    return "CA certificate '" + info.common_name + "'";
  }
  return "certificate of '" + info.common_name + "'" +
         (info.role ? " (" + std::string(to_string(*info.role)) + ")" : std::string());
}

std::string validity_problem(const CertInfo& info, Clock::time_point now) {
  if (now > info.not_after) {
    return who(info) + " expired on " + utc_date(info.not_after);
  }
  if (now < info.not_before) {
    return who(info) + " is not valid before " + utc_date(info.not_before);
  }
  return {};
}

}  // namespace

std::string_view to_string(Role role) noexcept {
  switch (role) {
    case Role::server:
      return "server";
    case Role::site:
      return "site";
    case Role::admin:
      return "admin";
  }
  return "unknown";
}

std::optional<Role> parse_role(std::string_view text) noexcept {
  for (Role role : {Role::server, Role::site, Role::admin}) {
    if (text == to_string(role)) {
      return role;
    }
  }
  return std::nullopt;
}

namespace {

// Signs `cert` with `signer` and returns it with its own `key`, both as PEM: the last step of make_ca (self-
// signed) and of issue (signed by the CA).
Result<Credentials> signed_credentials(X509* cert, EVP_PKEY* signer, EVP_PKEY* key) {
  if (auto signed_ = sign(cert, signer); !signed_) {
    return fail(std::move(signed_.error()));
  }
  auto key_text = key_pem(key);
  auto cert_text = cert_pem(cert);
  if (!key_text || !cert_text) {
    return fail(key_text ? std::move(cert_text.error()) : std::move(key_text.error()));
  }
  return Credentials{std::move(*key_text), std::move(*cert_text)};
}

}  // namespace

Result<Credentials> make_ca(std::string_view common_name, int valid_days) {
  if (common_name.empty()) {
    return fail(Errc::invalid_argument, "a CA needs a common name");
  }
  if (valid_days < 1) {
    return fail(Errc::invalid_argument,
                "a CA must be valid for at least one day (asked: " + std::to_string(valid_days) + ")");
  }
  auto key = new_key();
  if (!key) {
    return fail(std::move(key.error()));
  }
  auto now = Clock::now();
  auto cert =
      new_cert(key->get(), now - clock_skew, now + std::chrono::days(valid_days), common_name, std::nullopt);
  if (!cert) {
    return fail(std::move(cert.error()));
  }
  X509* c = cert->get();
  if (X509_set_issuer_name(c, X509_get_subject_name(c)) != 1) {
    return fail(openssl_error("cannot set the issuer"));
  }
  for (auto [nid, value] : {std::pair{NID_basic_constraints, "critical,CA:TRUE"},
                            std::pair{NID_key_usage, "critical,keyCertSign,cRLSign"},
                            std::pair{NID_subject_key_identifier, "hash"},
                            std::pair{NID_authority_key_identifier, "keyid:always"}}) {
    if (auto added = add_extension(c, c, nid, value); !added) {
      return fail(std::move(added.error()));
    }
  }
  return signed_credentials(c, key->get(), key->get());
}

Result<Credentials> issue(const Credentials& ca, std::string_view common_name, Role role,
                          const std::vector<std::string>& sans, Clock::time_point not_before,
                          Clock::time_point not_after) {
  if (common_name.empty()) {
    return fail(Errc::invalid_argument, "a certificate needs a common name");
  }
  if (not_after <= not_before) {
    return fail(Errc::invalid_argument,
                "certificate of '" + std::string(common_name) + "': notAfter must be later than notBefore");
  }
  auto names = alt_names(common_name, sans);
  if (!names) {
    return fail(std::move(names.error()));
  }
  auto ca_cert = read_cert(ca.cert_pem);
  auto ca_key = read_key(ca.key_pem);
  if (!ca_cert || !ca_key) {
    Error error = ca_cert ? std::move(ca_key.error()) : std::move(ca_cert.error());
    error.message = "the CA: " + error.message;
    return fail(std::move(error));
  }
  if (X509_check_ca(ca_cert->get()) != 1) {
    return fail(Errc::invalid_argument,
                "the CA: '" + name_field(X509_get_subject_name(ca_cert->get()), NID_commonName) +
                    "' is not a CA certificate (no basicConstraints CA:TRUE)");
  }
  if (X509_check_private_key(ca_cert->get(), ca_key->get()) != 1) {
    return fail(openssl_error("the CA's key does not match its certificate", Errc::invalid_argument));
  }
  auto key = new_key();
  if (!key) {
    return fail(std::move(key.error()));
  }
  auto cert = new_cert(key->get(), not_before, not_after, common_name, role);
  if (!cert) {
    return fail(std::move(cert.error()));
  }
  X509* c = cert->get();
  if (X509_set_issuer_name(c, X509_get_subject_name(ca_cert->get())) != 1) {
    return fail(openssl_error("cannot set the issuer"));
  }
  for (auto [nid, value] :
       {std::pair{NID_basic_constraints, "critical,CA:FALSE"},
        std::pair{NID_key_usage, "critical,digitalSignature,keyEncipherment"},
        std::pair{NID_ext_key_usage, "serverAuth,clientAuth"}, std::pair{NID_subject_key_identifier, "hash"},
        std::pair{NID_authority_key_identifier, "keyid:always"}}) {
    if (auto added = add_extension(c, ca_cert->get(), nid, value); !added) {
      return fail(std::move(added.error()));
    }
  }
  if (auto added = add_alt_names(c, *names); !added) {
    return fail(std::move(added.error()));
  }
  return signed_credentials(c, ca_key->get(), key->get());
}

Result<CertInfo> describe(std::string_view cert_text) {
  auto cert = read_cert(cert_text);
  if (!cert) {
    return fail(std::move(cert.error()));
  }
  return info_of(cert->get());
}

std::string utc_date(Clock::time_point time) {
  std::time_t t = Clock::to_time_t(time);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d", &tm);
  return text;
}

Result<void> check_validity(const CertInfo& cert, Clock::time_point now) {
  if (auto problem = validity_problem(cert, now); !problem.empty()) {
    return fail(Errc::rejected, problem);
  }
  return ok();
}

Result<void> verify(std::string_view ca_text, std::string_view cert_text,
                    std::optional<Clock::time_point> at) {
  auto ca = read_cert(ca_text);
  if (!ca) {
    return fail(Errc::malformed, "the CA: " + ca.error().message);
  }
  auto cert = read_cert(cert_text);
  if (!cert) {
    return fail(std::move(cert.error()));
  }
  X509StorePtr store(X509_STORE_new());
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!store || !ctx || X509_STORE_add_cert(store.get(), ca->get()) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert->get(), nullptr) != 1) {
    return fail(openssl_error("cannot set up certificate verification"));
  }
  Clock::time_point now = at.value_or(Clock::now());
  X509_STORE_CTX_set_time(ctx.get(), 0, Clock::to_time_t(now));
  if (X509_verify_cert(ctx.get()) == 1) {
    return ok();
  }
  int code = X509_STORE_CTX_get_error(ctx.get());
  std::string reason = X509_verify_cert_error_string(code);
  ERR_clear_error();
  auto leaf = info_of(cert->get());
  auto root = info_of(ca->get());
  if (!leaf || !root) {
    return fail(Errc::rejected, "certificate does not verify: " + reason);
  }
  if (code == X509_V_ERR_CERT_HAS_EXPIRED || code == X509_V_ERR_CERT_NOT_YET_VALID) {
    // Name the certificate that is out of date: the leaf's or the CA's.
    X509* failing = X509_STORE_CTX_get_current_cert(ctx.get());
    auto info = failing != nullptr ? info_of(failing) : leaf;
    if (info) {
      if (auto problem = validity_problem(*info, now); !problem.empty()) {
        return fail(Errc::rejected, problem);
      }
    }
  }
  if (leaf->issuer != root->common_name) {
    return fail(Errc::rejected, who(*leaf) + " is not signed by CA '" + root->common_name +
                                    "' (its issuer is '" + leaf->issuer + "'): " + reason);
  }
  return fail(Errc::rejected,
              who(*leaf) + " does not verify against CA '" + root->common_name + "': " + reason);
}

}  // namespace ember::provision
