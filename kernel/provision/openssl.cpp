#include "provision/openssl.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>

namespace ember::provision {

namespace {

Result<BioPtr> memory_bio(std::string_view text) {
  BioPtr bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  if (!bio) {
    return fail(openssl_error("cannot allocate a memory BIO"));
  }
  return bio;
}

Result<std::string> bio_text(BIO* bio) {
  char* data = nullptr;
  long size = BIO_get_mem_data(bio, &data);
  if (size < 0 || (size > 0 && data == nullptr)) {
    return fail(openssl_error("cannot read a memory BIO"));
  }
  return std::string(data, static_cast<std::size_t>(size));
}

}  // namespace

Error openssl_error(std::string_view what, Errc code) {
  std::string text;
  while (unsigned long e = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(e, buffer, sizeof buffer);
    text += (text.empty() ? "" : "; ") + std::string(buffer);
  }
  return Error{code,
               std::string(what) + ": " + (text.empty() ? std::string("no OpenSSL error recorded") : text)};
}

Result<X509Ptr> read_cert(std::string_view pem) {
  auto bio = memory_bio(pem);
  if (!bio) {
    return fail(std::move(bio.error()));
  }
  X509Ptr cert(PEM_read_bio_X509(bio->get(), nullptr, nullptr, nullptr));
  if (!cert) {
    return fail(openssl_error("not a PEM certificate", Errc::malformed));
  }
  return cert;
}

Result<PkeyPtr> read_key(std::string_view pem) {
  auto bio = memory_bio(pem);
  if (!bio) {
    return fail(std::move(bio.error()));
  }
  // An empty passphrase callback: an encrypted key fails instead of prompting on the terminal.
  auto no_passphrase = [](char*, int, int, void*) { return 0; };
  PkeyPtr key(PEM_read_bio_PrivateKey(bio->get(), nullptr, no_passphrase, nullptr));
  if (!key) {
    return fail(openssl_error("not an unencrypted PEM private key", Errc::malformed));
  }
  return key;
}

Result<std::string> cert_pem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) {
    return fail(openssl_error("cannot write a certificate as PEM"));
  }
  return bio_text(bio.get());
}

Result<std::string> key_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return fail(openssl_error("cannot write a private key as PEM"));
  }
  return bio_text(bio.get());
}

}  // namespace ember::provision
