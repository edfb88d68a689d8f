#pragma once
// OpenSSL objects owned by unique_ptr, and PEM text in and out. Every failure becomes an ember Error carrying
// OpenSSL's own error text, so no OpenSSL error queue entry is lost or left behind.

#include <memory>
#include <string>
#include <string_view>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ember/result.hpp>

namespace ember::provision {

/// Calls an OpenSSL free function; the deleter of every owning pointer below.
template <auto Free>
struct OpensslDeleter {
  template <class T>
  void operator()(T* object) const noexcept {
    Free(object);
  }
};

/// An owned certificate.
using X509Ptr = std::unique_ptr<X509, OpensslDeleter<X509_free>>;
/// An owned key (private, or public only).
using PkeyPtr = std::unique_ptr<EVP_PKEY, OpensslDeleter<EVP_PKEY_free>>;
/// An owned BIO (memory buffers here).
using BioPtr = std::unique_ptr<BIO, OpensslDeleter<BIO_free_all>>;
/// An owned big number.
using BignumPtr = std::unique_ptr<BIGNUM, OpensslDeleter<BN_free>>;
/// An owned distinguished name.
using X509NamePtr = std::unique_ptr<X509_NAME, OpensslDeleter<X509_NAME_free>>;
/// An owned certificate extension.
using X509ExtensionPtr = std::unique_ptr<X509_EXTENSION, OpensslDeleter<X509_EXTENSION_free>>;
/// An owned list of general names (a subjectAltName).
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, OpensslDeleter<GENERAL_NAMES_free>>;
/// An owned trust store.
using X509StorePtr = std::unique_ptr<X509_STORE, OpensslDeleter<X509_STORE_free>>;
/// An owned verification context.
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, OpensslDeleter<X509_STORE_CTX_free>>;

/// An Error of `code` saying "`what`: <OpenSSL's queued errors>"; empties OpenSSL's error queue.
Error openssl_error(std::string_view what, Errc code = Errc::internal);

/// The first certificate in PEM text (Errc::malformed if there is none or it does not parse).
Result<X509Ptr> read_cert(std::string_view pem);

/// An unencrypted private key in PEM text, PKCS#8 or traditional (Errc::malformed if it does not parse).
Result<PkeyPtr> read_key(std::string_view pem);

/// A certificate as PEM text.
Result<std::string> cert_pem(X509* cert);

/// A private key as unencrypted PKCS#8 PEM text ("BEGIN PRIVATE KEY").
Result<std::string> key_pem(EVP_PKEY* key);

}  // namespace ember::provision
