// Reads a cell's CA, certificate and key, and checks them before any connection is tried, so a kit that
// cannot work is refused with its cause instead of as an anonymous handshake failure on the other side.

#include "tls_files.hpp"

#include <sys/stat.h>

#include <ctime>
#include <fstream>
#include <memory>
#include <sstream>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

namespace ember::cell {
namespace {

struct BioFree {
  void operator()(BIO* p) const noexcept { BIO_free(p); }
};
struct X509Free {
  void operator()(X509* p) const noexcept { X509_free(p); }
};
struct StoreFree {
  void operator()(X509_STORE* p) const noexcept { X509_STORE_free(p); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* p) const noexcept { X509_STORE_CTX_free(p); }
};
struct KeyFree {
  void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
};

Result<std::string> read_file(const std::filesystem::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return fail(Errc::io_error, std::string(what) + " " + path.string() + ": cannot be read");
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return fail(Errc::io_error, std::string(what) + " " + path.string() + ": read failed");
  }
  return text.str();
}

std::unique_ptr<X509, X509Free> parse_cert(const std::string& pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) {
    return nullptr;
  }
  return std::unique_ptr<X509, X509Free>(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

std::string asn1_time_text(const ASN1_TIME* time) {
  std::tm tm{};
  if (time == nullptr || ASN1_TIME_to_tm(time, &tm) != 1) {
    return "an unreadable date";
  }
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return text;
}

}  // namespace

std::string certificate_name(const std::string& pem) {
  auto cert = parse_cert(pem);
  if (!cert) {
    return {};
  }
  X509_NAME* subject = X509_get_subject_name(cert.get());
  int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index < 0) {
    return {};
  }
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
  const unsigned char* bytes = ASN1_STRING_get0_data(data);
  return std::string(reinterpret_cast<const char*>(bytes),
                     static_cast<std::size_t>(ASN1_STRING_length(data)));
}

Result<std::string> verify_peer(const std::string& ca_pem, const std::string& cert_pem) {
  if (cert_pem.empty()) {
    return fail(Errc::rejected, "it presented no certificate");
  }
  auto ca = parse_cert(ca_pem);
  auto cert = parse_cert(cert_pem);
  if (!ca || !cert) {
    ERR_clear_error();
    return fail(Errc::rejected, "its certificate is not a readable X.509 certificate");
  }
  auto name = certificate_name(cert_pem);
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  if (!store || !ctx || X509_STORE_add_cert(store.get(), ca.get()) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1) {
    ERR_clear_error();
    return fail(Errc::internal, "cannot set up certificate verification");
  }
  X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
  if (X509_verify_cert(ctx.get()) == 1) {
    return name;
  }
  int error = X509_STORE_CTX_get_error(ctx.get());
  ERR_clear_error();
  std::string who = "its certificate (for '" + name + "')";
  switch (error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return fail(Errc::rejected, who + " expired on " + asn1_time_text(X509_get0_notAfter(cert.get())));
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return fail(Errc::rejected, who + " is not valid before " +
                                      asn1_time_text(X509_get0_notBefore(cert.get())) +
                                      " (check the clocks)");
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: {
      char issuer[256] = {0};
      X509_NAME_oneline(X509_get_issuer_name(cert.get()), issuer, sizeof issuer - 1);
      return fail(Errc::rejected, who + " was not issued by this project's CA (its issuer: " + issuer + ")");
    }
    default:
      return fail(Errc::rejected, who + " does not verify: " + X509_verify_cert_error_string(error));
  }
}

Result<TlsPem> load_tls(const TlsFiles& files, std::string_view own_name, bool check) {
  TlsPem pem;
  auto ca = read_file(files.ca, "CA certificate");
  if (!ca) {
    return fail(std::move(ca.error()));
  }
  auto cert = read_file(files.cert, "certificate");
  if (!cert) {
    return fail(std::move(cert.error()));
  }
  struct stat st {};
  if (::stat(files.key.c_str(), &st) != 0) {
    return fail(Errc::io_error, "private key " + files.key.string() + ": cannot be read");
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return fail(Errc::invalid_config, "private key " + files.key.string() + " is readable by others (mode " +
                                          mode + "); make it 0600");
  }
  auto key = read_file(files.key, "private key");
  if (!key) {
    return fail(std::move(key.error()));
  }
  auto ca_cert = parse_cert(*ca);
  if (!ca_cert) {
    return fail(Errc::invalid_config, "CA certificate " + files.ca.string() + ": not a PEM certificate");
  }
  auto own = parse_cert(*cert);
  if (!own) {
    return fail(Errc::invalid_config, "certificate " + files.cert.string() + ": not a PEM certificate");
  }
  std::unique_ptr<BIO, BioFree> key_bio(BIO_new_mem_buf(key->data(), static_cast<int>(key->size())));
  std::unique_ptr<EVP_PKEY, KeyFree> pkey(
      key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr) : nullptr);
  ERR_clear_error();
  if (!pkey) {
    return fail(Errc::invalid_config, "private key " + files.key.string() + ": not a PEM private key");
  }
  if (X509_check_private_key(own.get(), pkey.get()) != 1) {
    ERR_clear_error();
    return fail(Errc::invalid_config, "private key " + files.key.string() +
                                          " does not belong to certificate " + files.cert.string());
  }
  if (!check) {
    pem.ca = std::move(*ca);
    pem.cert = std::move(*cert);
    pem.key = std::move(*key);
    return pem;
  }
  std::unique_ptr<EVP_PKEY, KeyFree> ca_key(X509_get_pubkey(ca_cert.get()));
  if (!ca_key || X509_verify(own.get(), ca_key.get()) != 1) {
    ERR_clear_error();
    return fail(Errc::invalid_config, "certificate " + files.cert.string() + " was not issued by the CA in " +
                                          files.ca.string() + " (a kit of another project?)");
  }
  if (X509_cmp_current_time(X509_get0_notAfter(own.get())) < 0) {
    return fail(Errc::invalid_config, "certificate " + files.cert.string() + " expired on " +
                                          asn1_time_text(X509_get0_notAfter(own.get())) +
                                          "; provision a new kit");
  }
  if (X509_cmp_current_time(X509_get0_notBefore(own.get())) > 0) {
    return fail(Errc::invalid_config, "certificate " + files.cert.string() + " is not valid before " +
                                          asn1_time_text(X509_get0_notBefore(own.get())) +
                                          " (check this host's clock)");
  }
  if (X509_cmp_current_time(X509_get0_notAfter(ca_cert.get())) < 0) {
    return fail(Errc::invalid_config, "CA certificate " + files.ca.string() + " expired on " +
                                          asn1_time_text(X509_get0_notAfter(ca_cert.get())));
  }
  auto name = certificate_name(*cert);
  if (!own_name.empty() && name != own_name) {
    return fail(Errc::invalid_config, "certificate " + files.cert.string() + " is for '" + name +
                                          "', but this cell is '" + std::string(own_name) + "'");
  }
  pem.ca = std::move(*ca);
  pem.cert = std::move(*cert);
  pem.key = std::move(*key);
  return pem;
}

}  // namespace ember::cell
