// Provisioning: the certificates (checked with OpenSSL's own verifier), the atomic owner-only files, the
// project file's errors, and the kits `ember provision` writes.

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <toml++/toml.h>

#include "cli.hpp"
#include "cli_run.hpp"
#include "config.hpp"
#include "exit_codes.hpp"
#include "expect_error.hpp"
#include "provision/certs.hpp"
#include "provision/files.hpp"
#include "provision/openssl.hpp"
#include "provision_cmd.hpp"
#include "support.hpp"

namespace ember::provision {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ::testing::HasSubstr;

// OpenSSL's verdict on `leaf` against the single root `ca`: X509_V_OK or the X509_V_ERR_* code.
int openssl_verify(const Credentials& ca, const Credentials& leaf, Clock::time_point at = Clock::now()) {
  auto root = read_cert(ca.cert_pem);
  auto cert = read_cert(leaf.cert_pem);
  EXPECT_TRUE(root && cert);
  X509StorePtr store(X509_STORE_new());
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  EXPECT_EQ(X509_STORE_add_cert(store.get(), root->get()), 1);
  EXPECT_EQ(X509_STORE_CTX_init(ctx.get(), store.get(), cert->get(), nullptr), 1);
  X509_STORE_CTX_set_time(ctx.get(), 0, Clock::to_time_t(at));
  int verdict = X509_verify_cert(ctx.get());
  int error = X509_STORE_CTX_get_error(ctx.get());
  ERR_clear_error();
  return verdict == 1 ? X509_V_OK : error;
}

class Certs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ca_ = new Credentials(make_ca("example root CA", 30).value());
    other_ca_ = new Credentials(make_ca("other root CA", 30).value());
  }
  static void TearDownTestSuite() {
    delete ca_;
    delete other_ca_;
  }
  static Credentials leaf(const Credentials& ca, const std::string& name, Role role,
                          std::vector<std::string> sans = {}) {
    auto now = Clock::now();
    auto issued = issue(ca, name, role, sans, now - 1h, now + 24h);
    EXPECT_TRUE(issued) << issued.error().message;
    return issued.value_or(Credentials{});
  }
  static inline Credentials* ca_ = nullptr;
  static inline Credentials* other_ca_ = nullptr;
};

TEST_F(Certs, CaIsASelfSignedCriticalCaWithKeyIds) {
  auto cert = read_cert(ca_->cert_pem);
  ASSERT_TRUE(cert);
  X509* c = cert->get();
  EXPECT_EQ(X509_check_issued(c, c), X509_V_OK);
  int critical = -1;
  BASIC_CONSTRAINTS* bc =
      static_cast<BASIC_CONSTRAINTS*>(X509_get_ext_d2i(c, NID_basic_constraints, &critical, nullptr));
  ASSERT_NE(bc, nullptr);
  EXPECT_TRUE(bc->ca);
  EXPECT_EQ(critical, 1);
  BASIC_CONSTRAINTS_free(bc);
  EXPECT_EQ(X509_get_key_usage(c), static_cast<std::uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_NE(X509_get0_subject_key_id(c), nullptr);
  auto info = describe(ca_->cert_pem);
  ASSERT_TRUE(info);
  EXPECT_TRUE(info->is_ca);
  EXPECT_EQ(info->common_name, "example root CA");
  EXPECT_EQ(info->issuer, "example root CA");
  EXPECT_FALSE(info->role);
  EXPECT_GT(info->not_after - info->not_before, std::chrono::hours(24 * 30));
}

TEST_F(Certs, LeafChainVerifiesAgainstItsCa) {
  auto site = leaf(*ca_, "site-1", Role::site);
  EXPECT_EQ(openssl_verify(*ca_, site), X509_V_OK);
  EXPECT_TRUE(verify(ca_->cert_pem, site.cert_pem));
  auto key = read_key(site.key_pem);
  auto cert = read_cert(site.cert_pem);
  ASSERT_TRUE(key && cert);
  EXPECT_EQ(X509_check_private_key(cert->get(), key->get()), 1);
}

TEST_F(Certs, LeafOfAnotherCaDoesNotVerify) {
  auto stranger = leaf(*other_ca_, "site-1", Role::site);
  EXPECT_EQ(openssl_verify(*ca_, stranger), X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
  auto verdict = verify(ca_->cert_pem, stranger.cert_pem);
  ASSERT_FALSE(verdict);
  EXPECT_EQ(verdict.error().code, Errc::rejected);
  EXPECT_THAT(verdict.error().message,
              HasSubstr("certificate of 'site-1' (site) is not signed by CA 'example root CA' (its issuer is "
                        "'other root CA')"));
}

TEST_F(Certs, ExpiredLeafFailsWithCertHasExpired) {
  auto now = Clock::now();
  auto expired = issue(*ca_, "site-1", Role::site, {}, now - 48h, now - 24h);
  ASSERT_TRUE(expired) << expired.error().message;
  EXPECT_EQ(openssl_verify(*ca_, *expired), X509_V_ERR_CERT_HAS_EXPIRED);
  std::string expected = "certificate of 'site-1' (site) expired on " + utc_date(now - 24h);
  auto verdict = verify(ca_->cert_pem, expired->cert_pem);
  ASSERT_FALSE(verdict);
  EXPECT_EQ(verdict.error().message, expected);
  auto info = describe(expired->cert_pem);
  ASSERT_TRUE(info);
  auto validity = check_validity(*info);
  ASSERT_FALSE(validity);
  EXPECT_EQ(validity.error().message, expected);
  // ... and a certificate whose time has not come yet.
  auto early = issue(*ca_, "site-1", Role::site, {}, now + 24h, now + 48h);
  ASSERT_TRUE(early);
  EXPECT_EQ(openssl_verify(*ca_, *early), X509_V_ERR_CERT_NOT_YET_VALID);
  EXPECT_THAT(verify(ca_->cert_pem, early->cert_pem).error().message, HasSubstr("is not valid before"));
}

TEST_F(Certs, LeafCarriesNameRoleSansAndUsages) {
  auto server = leaf(*ca_, "server", Role::server, {"localhost", "127.0.0.1", "::1", "localhost"});
  auto info = describe(server.cert_pem);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->common_name, "server");
  EXPECT_EQ(info->role, Role::server);
  EXPECT_EQ(info->issuer, "example root CA");
  EXPECT_FALSE(info->is_ca);
  EXPECT_EQ(info->sans, (std::vector<std::string>{"DNS:localhost", "IP:127.0.0.1", "IP:::1", "DNS:server"}));

  auto cert = read_cert(server.cert_pem);
  ASSERT_TRUE(cert);
  X509* c = cert->get();
  EXPECT_EQ(X509_get_key_usage(c), static_cast<std::uint32_t>(KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT));
  const std::uint32_t both = XKU_SSL_SERVER | XKU_SSL_CLIENT;
  EXPECT_EQ(X509_get_extended_key_usage(c) & both, both);
  EXPECT_EQ(X509_get_signature_nid(c), NID_ecdsa_with_SHA256);
  EXPECT_TRUE(EVP_PKEY_is_a(X509_get0_pubkey(c), "EC"));
  EXPECT_EQ(EVP_PKEY_get_bits(X509_get0_pubkey(c)), 256);
  EXPECT_EQ(X509_check_host(c, "server", 0, 0, nullptr), 1);  // what gRPC's name check does
  EXPECT_EQ(X509_check_ip_asc(c, "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_purpose(c, X509_PURPOSE_SSL_SERVER, 0), 1);
  EXPECT_EQ(X509_check_purpose(c, X509_PURPOSE_SSL_CLIENT, 0), 1);
  // A 128-bit random serial, positive; two leaves never share one.
  BignumPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(c), nullptr));
  EXPECT_EQ(BN_num_bits(serial.get()), 127);
  EXPECT_FALSE(BN_is_negative(serial.get()));
  EXPECT_NE(describe(leaf(*ca_, "server", Role::server).cert_pem)->serial, info->serial);
}

TEST_F(Certs, EachRoleIsRecordedAndAnAdminWithAtGetsAnEmailName) {
  auto site = describe(leaf(*ca_, "site-1", Role::site).cert_pem);
  auto admin = describe(leaf(*ca_, "admin@example.org", Role::admin).cert_pem);
  ASSERT_TRUE(site && admin);
  EXPECT_EQ(site->role, Role::site);
  EXPECT_EQ(site->sans, std::vector<std::string>{"DNS:site-1"});
  EXPECT_EQ(admin->role, Role::admin);
  EXPECT_EQ(admin->sans, std::vector<std::string>{"email:admin@example.org"});
  EXPECT_EQ(parse_role("admin"), Role::admin);
  EXPECT_FALSE(parse_role("client"));
}

TEST_F(Certs, BadInputsAreTypedErrors) {
  auto now = Clock::now();
  test::expect_error(make_ca("x", 0), Errc::invalid_argument, "at least one day");
  test::expect_error(issue(*ca_, "s", Role::site, {"bad host"}, now, now + 1h), Errc::invalid_argument,
                     "'bad host' is not a host name or an IP address");
  test::expect_error(issue(*ca_, "s", Role::site, {}, now, now), Errc::invalid_argument, "notAfter");
  test::expect_error(issue(Credentials{"junk", ca_->cert_pem}, "s", Role::site, {}, now, now + 1h),
                     Errc::malformed, "the CA: not an unencrypted PEM private key");
  test::expect_error(
      issue(Credentials{other_ca_->key_pem, ca_->cert_pem}, "s", Role::site, {}, now, now + 1h),
      Errc::invalid_argument, "the CA's key does not match its certificate");
  auto site = leaf(*ca_, "site-1", Role::site);
  test::expect_error(issue(site, "s", Role::site, {}, now, now + 1h), Errc::invalid_argument,
                     "the CA: 'site-1' is not a CA certificate");
  test::expect_error(make_ca("", 1), Errc::invalid_argument, "needs a common name");
  test::expect_error(describe("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                     Errc::malformed, "not a PEM certificate");
  EXPECT_EQ(ERR_peek_error(), 0u) << "an OpenSSL error was left in the queue";
}

// Runs a body with `mask` as the umask, to show modes are exact whatever the caller's umask.
template <class F>
void with_umask(mode_t mask, F&& body) {
  mode_t old = ::umask(mask);
  body();
  ::umask(old);
}

mode_t mode_of(const fs::path& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

TEST(ProvisionFiles, ModesAreExactWhateverTheUmaskAndWritesLeaveNoTemporaryFile) {
  test::TempDir dir;
  with_umask(0, [&] {
    ASSERT_TRUE(write_file_atomic(dir.path() / "k.key", "secret", 0600));
    ASSERT_TRUE(make_dir(dir.path() / "kit", 0700));
  });
  with_umask(0777, [&] { ASSERT_TRUE(write_file_atomic(dir.path() / "c.crt", "public", 0644)); });
  EXPECT_EQ(mode_of(dir.path() / "k.key"), 0600u);
  EXPECT_EQ(mode_of(dir.path() / "kit"), 0700u);
  EXPECT_EQ(mode_of(dir.path() / "c.crt"), 0644u);
  ASSERT_TRUE(write_file_atomic(dir.path() / "k.key", "replaced", 0600));
  std::ifstream in(dir.path() / "k.key");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "replaced");
  std::size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) {
    ++entries;
  }
  EXPECT_EQ(entries, 3u);
  test::expect_error(make_dir(dir.path() / "kit"), Errc::io_error, "cannot create folder");
  test::expect_error(write_file_atomic(dir.path() / "none" / "x", "", 0600), Errc::io_error, "none/x");
}

}  // namespace
}  // namespace ember::provision

namespace ember::kernel {
namespace {

namespace fs = std::filesystem;
using provision::Role;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* example_project = R"(# a project
[project]
name = "example"
valid_days = 30

[server]
hosts = ["fl.example.org", "10.0.0.1"]
port = 9443

[[sites]]
name = "site-1"

[[sites]]
name = "site-2"

[[admins]]
name = "ops@example.org"
)";

std::string read(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

using test::cli;
using test::CliRun;

TEST(ProjectFile, DefaultsFillWhatIsLeftOut) {
  auto project = parse_project("[project]\nname = \"p.1\"\n", "project.toml");
  ASSERT_TRUE(project) << project.error().message;
  EXPECT_EQ(project->name, "p.1");
  EXPECT_EQ(project->valid_days, 365);
  EXPECT_EQ(project->server_name, "server");
  EXPECT_EQ(project->server_hosts, (std::vector<std::string>{"localhost", "127.0.0.1"}));
  EXPECT_EQ(project->port, 8002);
  EXPECT_TRUE(project->sites.empty());
  EXPECT_TRUE(project->admins.empty());

  auto full = parse_project(example_project, "project.toml");
  ASSERT_TRUE(full) << full.error().message;
  EXPECT_EQ(full->sites, (std::vector<std::string>{"site-1", "site-2"}));
  EXPECT_EQ(full->admins, std::vector<std::string>{"ops@example.org"});
  EXPECT_EQ(full->port, 9443);
}

struct BadProject {
  const char* what;
  const char* text;
  const char* expected;  // "file:line:column: key: ..." begins this way
};

class BadProjectFile : public ::testing::TestWithParam<BadProject> {};

TEST_P(BadProjectFile, NamesTheFileLineAndKey) {
  auto project = parse_project(GetParam().text, "p.toml");
  ASSERT_FALSE(project) << GetParam().what;
  EXPECT_EQ(project.error().code, Errc::invalid_config);
  EXPECT_THAT(project.error().message, HasSubstr(GetParam().expected));
}

INSTANTIATE_TEST_SUITE_P(
    Provision, BadProjectFile,
    ::testing::Values(
        BadProject{"no project table", "[[sites]]\nname = \"a\"\n", "p.toml:1:1: project: missing [project]"},
        BadProject{"missing name", "[project]\nvalid_days = 3\n", "p.toml:1:1: project.name: missing"},
        BadProject{"bad project name", "[project]\nname = \"ex ample\"\n",
                   "p.toml:2:8: project.name: invalid project name 'ex ample'"},
        BadProject{"valid_days 0", "[project]\nname = \"p\"\nvalid_days = 0\n",
                   "p.toml:3:14: project.valid_days: 0 is out of range (want 1 to 3650)"},
        BadProject{"valid_days 3651", "[project]\nname = \"p\"\nvalid_days = 3651\n",
                   "p.toml:3:14: project.valid_days: 3651 is out of range"},
        BadProject{"valid_days text", "[project]\nname = \"p\"\nvalid_days = \"1y\"\n",
                   "p.toml:3:14: project.valid_days: expected an integer"},
        BadProject{"duplicate site",
                   "[project]\nname = \"p\"\n[[sites]]\nname = \"s\"\n[[sites]]\nname = \"s\"\n",
                   "p.toml:6:8: sites[1].name: duplicate name 's' (already sites[0].name (line 4)"},
        BadProject{"site named as the server in another case",
                   "[project]\nname = \"p\"\n[[sites]]\nname = \"Server\"\n",
                   "p.toml:4:8: sites[0].name: duplicate name 'Server' (already the server's name"},
        BadProject{"admin named as a site",
                   "[project]\nname = \"p\"\n[[sites]]\nname = \"a\"\n[[admins]]\nname = \"a\"\n",
                   "p.toml:6:8: admins[0].name: duplicate name 'a'"},
        BadProject{"site named ca", "[project]\nname = \"p\"\n[[sites]]\nname = \"ca\"\n",
                   "sites[0].name: duplicate name 'ca' (already the CA's folder"},
        BadProject{"bad characters", "[project]\nname = \"p\"\n[[sites]]\nname = \"site/1\"\n",
                   "p.toml:4:8: sites[0].name: invalid name 'site/1' (want [A-Za-z0-9_-]{1,64})"},
        BadProject{"dotted site", "[project]\nname = \"p\"\n[[sites]]\nname = \"site.1\"\n",
                   "p.toml:4:8: sites[0].name: site name 'site.1' has a dot"},
        BadProject{"admin named ..", "[project]\nname = \"p\"\n[[admins]]\nname = \"..\"\n",
                   "p.toml:4:8: admins[0].name: invalid name '..'"},
        BadProject{"site without name", "[project]\nname = \"p\"\n[[sites]]\n", "sites[0].name: missing"},
        BadProject{"unknown key", "[project]\nname = \"p\"\nowner = \"me\"\n",
                   "p.toml:3:1: project.owner: unknown key (expected one of: name, valid_days)"},
        BadProject{"unknown site key", "[project]\nname = \"p\"\n[[sites]]\nname = \"s\"\nhost = \"h\"\n",
                   "p.toml:5:1: sites[0].host: unknown key"},
        BadProject{"sites not an array", "[project]\nname = \"p\"\n[sites]\nname = \"s\"\n",
                   "p.toml:3:1: sites: expected an array of tables"},
        BadProject{"bad host", "[project]\nname = \"p\"\n[server]\nhosts = [\"ok\", \"no way\"]\n",
                   "p.toml:4:16: server.hosts[1]: 'no way' is neither an IP address nor a DNS name"},
        BadProject{"empty hosts", "[project]\nname = \"p\"\n[server]\nhosts = []\n",
                   "p.toml:4:9: server.hosts: expected a non-empty array"},
        BadProject{"port out of range", "[project]\nname = \"p\"\n[server]\nport = 70000\n",
                   "p.toml:4:8: server.port: 70000 is out of range (want 1 to 65535)"},
        BadProject{"dotted server", "[project]\nname = \"p\"\n[server]\nname = \"a.b\"\n",
                   "p.toml:4:8: server.name: invalid server name 'a.b'"},
        BadProject{"bad schema version", "schema_version = 2\n[project]\nname = \"p\"\n",
                   "p.toml:1:18: schema_version: unsupported schema version"},
        BadProject{"not TOML", "[project\n", ": invalid TOML: "}),
    [](const auto& param_info) {
      std::string name = param_info.param.what;
      for (char& c : name) {
        c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      }
      return name;
    });

TEST(ProjectFile, ReportsEveryProblemAtOnce) {
  auto project = parse_project("[project]\nvalid_days = 0\n[[sites]]\nname = \"a.b\"\n", "p.toml");
  ASSERT_FALSE(project);
  EXPECT_THAT(project.error().message, HasSubstr("project.name"));
  EXPECT_THAT(project.error().message, HasSubstr("project.valid_days"));
  EXPECT_THAT(project.error().message, HasSubstr("sites[0].name"));
}

class Kits : public ::testing::Test {
 protected:
  void SetUp() override {
    auto parsed = parse_project(example_project, "project.toml");
    ASSERT_TRUE(parsed) << parsed.error().message;
    project_ = *parsed;
  }
  test::TempDir dir_;
  ProjectConfig project_;
};

TEST_F(Kits, LayoutPermissionsAndChains) {
  fs::path out = dir_.path() / "kits";
  auto written = write_kits(project_, out, false);
  ASSERT_TRUE(written) << written.error().message;
  EXPECT_EQ(written->kits, (std::vector<std::string>{"server", "site-1", "site-2", "ops@example.org"}));
  EXPECT_EQ(provision::mode_of(out), 0700u);
  EXPECT_EQ(provision::mode_of(out / "ca"), 0700u);
  EXPECT_EQ(provision::mode_of(out / "ca" / "ca.key"), 0600u);
  EXPECT_EQ(provision::mode_of(out / "ca" / "ca.crt"), 0644u);
  std::string ca_pem = read(out / "ca" / "ca.crt");
  ASSERT_TRUE(provision::read_key(read(out / "ca" / "ca.key")));
  std::map<std::string, Role> roles{{"server", Role::server},
                                    {"site-1", Role::site},
                                    {"site-2", Role::site},
                                    {"ops@example.org", Role::admin}};
  for (const auto& [kit, role] : roles) {
    SCOPED_TRACE(kit);
    fs::path k = out / kit;
    EXPECT_EQ(provision::mode_of(k), 0700u);
    EXPECT_EQ(provision::mode_of(k / "cert.key"), 0600u);
    EXPECT_FALSE(fs::exists(k / "ca.key")) << "the root key is in no kit";
    EXPECT_EQ(read(k / "ca.crt"), ca_pem);
    std::string cert = read(k / "cert.crt");
    EXPECT_TRUE(provision::verify(ca_pem, cert));
    auto info = provision::describe(cert);
    ASSERT_TRUE(info);
    EXPECT_EQ(info->common_name, kit);
    EXPECT_EQ(info->role, role);
    auto key = provision::read_key(read(k / "cert.key"));
    auto x509 = provision::read_cert(cert);
    ASSERT_TRUE(key && x509);
    EXPECT_EQ(X509_check_private_key(x509->get(), key->get()), 1);
  }
  auto server = provision::describe(read(out / "server" / "cert.crt"));
  EXPECT_EQ(server->sans, (std::vector<std::string>{"DNS:fl.example.org", "IP:10.0.0.1", "DNS:server"}));
  // Nothing but the output is left beside it.
  std::vector<std::string> beside;
  for (const auto& e : fs::directory_iterator(dir_.path())) {
    beside.push_back(e.path().filename().string());
  }
  EXPECT_EQ(beside, std::vector<std::string>{"kits"});
}

TEST_F(Kits, KitTomlParsesAndSaysWhereToConnect) {
  fs::path out = dir_.path() / "kits";
  ASSERT_TRUE(write_kits(project_, out, false));
  auto server = toml::parse_file((out / "server" / "kit.toml").string());
  EXPECT_EQ(server["schema_version"].value<int64_t>(), 1);
  EXPECT_EQ(server["site"]["name"].value<std::string>(), "server");
  EXPECT_EQ(server["site"]["role"].value<std::string>(), "server");
  EXPECT_EQ(server["cell"]["listen"].value<std::string>(), "0.0.0.0:9443");
  EXPECT_EQ(server["cell"]["ca"].value<std::string>(), "ca.crt");
  EXPECT_EQ(server["cell"]["cert"].value<std::string>(), "cert.crt");
  EXPECT_EQ(server["cell"]["key"].value<std::string>(), "cert.key");
  EXPECT_EQ(server["project"]["name"].value<std::string>(), "example");
  ASSERT_NE(server["project"]["sites"].as_array(), nullptr);
  EXPECT_EQ(server["project"]["sites"].as_array()->size(), 2u);
  EXPECT_EQ(server["project"]["sites"][1].value<std::string>(), "site-2");
  EXPECT_EQ(server["project"]["admins"][0].value<std::string>(), "ops@example.org");

  auto site = toml::parse_file((out / "site-1" / "kit.toml").string());
  EXPECT_EQ(site["site"]["name"].value<std::string>(), "site-1");
  EXPECT_EQ(site["site"]["role"].value<std::string>(), "client");
  EXPECT_EQ(site["cell"]["server"].value<std::string>(), "fl.example.org:9443");
  EXPECT_EQ(site["cell"]["server_name"].value<std::string>(), "server");
  EXPECT_EQ(site["cell"]["internal_listen"].value<std::string>(), "127.0.0.1:0");
  EXPECT_EQ(site["cell"]["key"].value<std::string>(), "cert.key");
  EXPECT_FALSE(site["project"]);

  auto admin = toml::parse_file((out / "ops@example.org" / "kit.toml").string());
  EXPECT_EQ(admin["site"]["role"].value<std::string>(), "admin");
  EXPECT_EQ(admin["cell"]["server"].value<std::string>(), "fl.example.org:9443");
  EXPECT_FALSE(admin["cell"]["internal_listen"]);

  // An IPv6 first host is bracketed in host:port.
  project_.server_hosts = {"::1"};
  auto v6 = toml::parse(kit_toml(project_, "site-1"));
  EXPECT_EQ(v6["cell"]["server"].value<std::string>(), "[::1]:9443");
}

// Every kit.toml is a site file the kernel reads: its [cell] settings resolve against the kit's folder.
TEST_F(Kits, EveryKitIsASiteFileTheKernelReads) {
  fs::path out = dir_.path() / "kits";
  ASSERT_TRUE(write_kits(project_, out, false));
  auto server = kernel::load_site(out / "server" / "kit.toml");
  ASSERT_TRUE(server) << server.error().message;
  EXPECT_EQ(server->name, "server");
  EXPECT_EQ(server->role, "server");
  ASSERT_TRUE(server->cell);
  EXPECT_EQ(server->cell->listen, "0.0.0.0:9443");
  EXPECT_EQ(server->cell->ca, out / "server" / "ca.crt");
  EXPECT_EQ(server->cell->key, out / "server" / "cert.key");
  EXPECT_FALSE(server->cell->insecure);
  ASSERT_TRUE(server->project);
  EXPECT_EQ(server->project->sites, (std::vector<std::string>{"site-1", "site-2"}));
  EXPECT_EQ(server->project->admins, (std::vector<std::string>{"ops@example.org"}));
  auto site = kernel::load_site(out / "site-1" / "kit.toml");
  ASSERT_TRUE(site) << site.error().message;
  EXPECT_EQ(site->role, "client");
  EXPECT_EQ(site->cell->server, "fl.example.org:9443");
  EXPECT_EQ(site->cell->server_name, "server");
  EXPECT_EQ(site->cell->internal_listen, "127.0.0.1:0");
  EXPECT_EQ(site->cell->cert, out / "site-1" / "cert.crt");
  auto admin = kernel::load_site(out / "ops@example.org" / "kit.toml");
  ASSERT_TRUE(admin) << admin.error().message;
  EXPECT_EQ(admin->name, "ops@example.org");
  EXPECT_EQ(admin->role, "admin");
}

TEST(SiteCellTable, BadValuesAreNamedAndClearTextIsExplicit) {
  test::TempDir dir;
  auto bad =
      dir.write("site.toml",
                "schema_version = 1\n[site]\nname = \"s\"\nrole = \"boss\"\n[cell]\nserver = \"nohost\"\n"
                "packet_bytes = 12\nkeepalive = \"0s\"\nca = \"ca.crt\"\nbogus = 1\n");
  auto loaded = kernel::load_site(bad);
  ASSERT_FALSE(loaded);
  const auto& m = loaded.error().message;
  EXPECT_THAT(m, ::testing::HasSubstr("site.role: expected \"server\", \"client\" or \"admin\""));
  EXPECT_THAT(m, ::testing::HasSubstr("cell.server: expected HOST:PORT"));
  EXPECT_THAT(m, ::testing::HasSubstr("cell.packet_bytes: expected an integer from 65536"));
  EXPECT_THAT(m, ::testing::HasSubstr("cell.keepalive: must be longer than zero"));
  EXPECT_THAT(m, ::testing::HasSubstr("cell.ca: ca, cert and key are given together"));
  EXPECT_THAT(m, ::testing::HasSubstr("cell.bogus"));
  auto bare = dir.write("bare.toml", "schema_version = 1\n[site]\nname = \"s\"\n[cell]\nserver = \"h:1\"\n");
  auto refused = kernel::load_site(bare);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, ::testing::HasSubstr("insecure = true"));
  auto clear =
      dir.write("clear.toml",
                "schema_version = 1\n[site]\nname = \"s\"\n[cell]\nserver = \"h:1\"\ninsecure = true\n"
                "keepalive = \"2s\"\n");
  auto ok = kernel::load_site(clear);
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_TRUE(ok->cell->insecure);
  EXPECT_EQ(ok->cell->keepalive, std::chrono::seconds(2));
}

TEST_F(Kits, AnExistingFolderIsReplacedOnlyWithForceAndOnlyIfItIsAnEarlierOutput) {
  fs::path out = dir_.path() / "kits";
  ASSERT_TRUE(write_kits(project_, out, false));
  std::string first_ca = read(out / "ca" / "ca.crt");
  test::expect_error(write_kits(project_, out, false), Errc::io_error, "already exists; give --force");
  EXPECT_EQ(read(out / "ca" / "ca.crt"), first_ca);

  auto replaced = write_kits(project_, out, true);
  ASSERT_TRUE(replaced) << replaced.error().message;
  EXPECT_TRUE(replaced->replaced);
  EXPECT_NE(read(out / "ca" / "ca.crt"), first_ca);
  EXPECT_TRUE(provision::verify(read(out / "ca" / "ca.crt"), read(out / "site-1" / "cert.crt")));
  std::size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_.path())) {
    ++entries;
  }
  EXPECT_EQ(entries, 1u) << "the old output is removed";

  fs::path other = dir_.path() / "home";
  fs::create_directory(other);
  dir_.write("home/notes.txt", "keep me");
  test::expect_error(write_kits(project_, other, true), Errc::io_error, "not an output of 'ember provision'");
  EXPECT_EQ(read(other / "notes.txt"), "keep me");
  dir_.write("file", "x");
  test::expect_error(write_kits(project_, dir_.path() / "file", true), Errc::io_error, "is not a folder");
  fs::create_directory(dir_.path() / "empty");
  EXPECT_TRUE(write_kits(project_, dir_.path() / "empty", true));
  auto slash = write_kits(project_, (dir_.path() / "slash").string() + "/", false);
  ASSERT_TRUE(slash) << slash.error().message;
  EXPECT_TRUE(fs::exists(dir_.path() / "slash" / "ca" / "ca.crt"));
}

TEST_F(Kits, AFailureLeavesNothingBehind) {
  // A host that parse_project would refuse: the server's certificate fails after the CA and folders exist.
  project_.server_hosts = {"bad host"};
  test::expect_error(write_kits(project_, dir_.path() / "kits", false), Errc::invalid_argument,
                     "certificate of 'server': subjectAltName entry 'bad host'");
  EXPECT_TRUE(fs::is_empty(dir_.path())) << "no output and no temporary folder";
  test::expect_error(write_kits(project_, dir_.path() / "no" / "kits", false), Errc::io_error,
                     "cannot create a temporary folder");
}

TEST(ProvisionCli, WritesKitsAndPrintsASummary) {
  test::TempDir dir;
  auto file = dir.write("project.toml", example_project);
  auto run = cli({"provision", file.string(), "--out", (dir.path() / "out").string()});
  ASSERT_EQ(run.code, exit_code::ok) << run.err;
  EXPECT_THAT(run.out, HasSubstr("project 'example': 4 startup kits in " + (dir.path() / "out").string()));
  EXPECT_THAT(run.out, HasSubstr("site-1/"));
  EXPECT_THAT(run.out, HasSubstr("connects to fl.example.org:9443"));
  EXPECT_THAT(run.out, HasSubstr("keep it offline"));
  EXPECT_TRUE(fs::exists(dir.path() / "out" / "site-2" / "kit.toml"));

  auto again = cli({"provision", file.string(), "--out", (dir.path() / "out").string()});
  EXPECT_EQ(again.code, exit_code::io_error);
  EXPECT_THAT(again.err, HasSubstr("already exists; give --force"));
  auto forced = cli({"provision", file.string(), "--out", (dir.path() / "out").string(), "--force"});
  EXPECT_EQ(forced.code, exit_code::ok) << forced.err;
  EXPECT_THAT(forced.out, HasSubstr("(replaced)"));
}

TEST(ProvisionCli, DefaultOutputIsProjectNameKitsInTheCurrentFolder) {
  test::TempDir dir;
  auto file = dir.write("project.toml", "[project]\nname = \"demo\"\n[[sites]]\nname = \"a\"\n");
  auto cwd = fs::current_path();
  fs::current_path(dir.path());
  auto run = cli({"provision", "project.toml"});
  fs::current_path(cwd);
  ASSERT_EQ(run.code, exit_code::ok) << run.err;
  EXPECT_TRUE(fs::exists(dir.path() / "demo-kits" / "a" / "cert.crt"));
  EXPECT_EQ(provision::mode_of(dir.path() / "demo-kits"), 0700u);
}

TEST(ProvisionCli, ExitCodesForABadOrMissingProjectFile) {
  test::TempDir dir;
  auto file = dir.write("bad.toml", "[project]\nname = \"p\"\n[[sites]]\nname = \"site.1\"\n");
  auto bad = cli({"provision", file.string(), "--out", (dir.path() / "out").string()});
  EXPECT_EQ(bad.code, exit_code::invalid_config);
  EXPECT_THAT(bad.err, HasSubstr(file.string() + ":4:8: sites[0].name: site name 'site.1' has a dot"));
  EXPECT_FALSE(fs::exists(dir.path() / "out"));

  auto missing = cli({"provision", (dir.path() / "nope.toml").string()});
  EXPECT_EQ(missing.code, exit_code::io_error);
  EXPECT_THAT(missing.err, HasSubstr("nope.toml: no such file"));

  auto usage = cli({"provision"});
  EXPECT_EQ(usage.code, exit_code::usage);
  auto help = cli({"provision", "--help"});
  EXPECT_EQ(help.code, exit_code::ok);
  EXPECT_THAT(help.out, HasSubstr("--force"));
}

}  // namespace
}  // namespace ember::kernel
