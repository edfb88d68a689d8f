// The cell network on loopback: routing by FQCN, broadcast, large messages through a relay, reconnects,
// admission, malformed and oversized input.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "cell/cell.hpp"
#include "cell_test_support.hpp"
#include "provision/certs.hpp"
#include "provision/files.hpp"
#include "support.hpp"
#include "transport.hpp"
#include "wire/crc32c.hpp"

namespace ember::cell {
namespace {

using namespace std::chrono_literals;
using test::CaptureLogger;
using test::fast_config;

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::string as_text(const std::vector<std::byte>& b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

Handler echo_handler(const std::string& name) {
  return [name](const Message& m) {
    Reply r;
    r.message.headers = {{"served-by", name}};
    r.message.payload = m.payload;
    return r;
  };
}

// A server, two sites with internal listeners, and a job under site-1: the tree most tests use.
struct Tree {
  std::shared_ptr<CaptureLogger> log = std::make_shared<CaptureLogger>();
  std::unique_ptr<Cell> server, site1, site2, job;

  explicit Tree(const std::string& job_token = "t0k3n") {
    auto s = Cell::start(fast_config("server", "127.0.0.1:0", ""), log);
    EXPECT_TRUE(s) << s.error().message;
    server = std::move(*s);
    auto a = Cell::start(fast_config("site-1", "127.0.0.1:0", server->listen_address()), log);
    EXPECT_TRUE(a) << a.error().message;
    site1 = std::move(*a);
    auto b = Cell::start(fast_config("site-2", "127.0.0.1:0", server->listen_address()), log);
    EXPECT_TRUE(b) << b.error().message;
    site2 = std::move(*b);
    site1->admit_job("J", "t0k3n");
    auto jc = fast_config("site-1.J", "", site1->listen_address());
    jc.token = job_token;
    auto j = Cell::start(jc, log);
    EXPECT_TRUE(j) << j.error().message;
    job = std::move(*j);
    for (auto* c : {server.get(), site1.get(), site2.get(), job.get()}) {
      c->handle("echo", echo_handler(c->fqcn()));
    }
  }
  bool linked() { return site1->wait_parent(5s) && site2->wait_parent(5s) && job->wait_parent(5s); }
};

TEST(Cell, FqcnRules) {
  EXPECT_TRUE(valid_fqcn("server"));
  EXPECT_TRUE(valid_fqcn("site-1.job_2.trainer"));
  EXPECT_FALSE(valid_fqcn(""));
  EXPECT_FALSE(valid_fqcn("site-1..x"));
  EXPECT_FALSE(valid_fqcn(".x"));
  EXPECT_FALSE(valid_fqcn("x."));
  EXPECT_FALSE(valid_fqcn("a b"));
  EXPECT_FALSE(valid_fqcn(std::string(256, 'a')));
  for (int i = 0; i <= static_cast<int>(Rc::cancelled); ++i) {
    EXPECT_EQ(rc_from_string(to_string(static_cast<Rc>(i))), static_cast<Rc>(i));
  }
}

TEST(Cell, RoutesByFqcnThroughServerAndSites) {
  Tree t;
  ASSERT_TRUE(t.linked()) << t.job->parent_error();
  std::string hello = "hello";
  // Down the tree, through server and site-1.
  auto r = t.server->request("site-1.J", "echo", {}, as_bytes(hello), 5s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(as_text(r.message.payload), "hello");
  EXPECT_EQ(*r.message.header("served-by"), "site-1.J");
  EXPECT_EQ(r.message.from, "site-1.J");
  // Sideways: site-2 to the job goes up to the server and down through site-1.
  r = t.site2->request("site-1.J", "echo", {{"k", "v"}}, as_bytes(hello), 5s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(*r.message.header("served-by"), "site-1.J");
  // Up: the job to site-2, and to the server.
  r = t.job->request("site-2", "echo", {}, as_bytes(hello), 5s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(*r.message.header("served-by"), "site-2");
  r = t.job->request("server", "echo", {}, {}, 5s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_TRUE(r.message.payload.empty());
  // To itself.
  r = t.job->request("site-1.J", "echo", {}, as_bytes(hello), 5s);
  ASSERT_TRUE(r.ok()) << r.reason;
  // Nobody by that name: unreachable, named.
  r = t.job->request("site-3", "echo", {}, {}, 5s);
  EXPECT_EQ(r.rc, Rc::unreachable);
  EXPECT_NE(r.reason.find("site-3"), std::string::npos) << r.reason;
  r = t.server->request("site-1.K", "echo", {}, {}, 5s);
  EXPECT_EQ(r.rc, Rc::unreachable) << r.reason;
  // A topic without a handler.
  r = t.server->request("site-2", "nope", {}, {}, 5s);
  EXPECT_EQ(r.rc, Rc::no_handler);
  EXPECT_NE(r.reason.find("nope"), std::string::npos) << r.reason;
  // Reserved headers are refused before sending.
  r = t.server->request("site-2", "echo", {{"cell.from", "site-1"}}, {}, 5s);
  EXPECT_EQ(r.rc, Rc::malformed);
}

TEST(Cell, NotifyAndHandlerErrors) {
  Tree t;
  ASSERT_TRUE(t.linked());
  std::mutex m;
  std::condition_variable cv;
  std::string got;
  t.job->handle("note", [&](const Message& msg) {
    std::lock_guard lock(m);
    got = msg.from + ":" + as_text(msg.payload);
    cv.notify_all();
    return Reply{};
  });
  std::string text = "fire";
  auto n = t.site2->notify("site-1.J", "note", {}, as_bytes(text), 5s);
  ASSERT_TRUE(n.ok()) << n.reason;
  {
    std::unique_lock lock(m);
    ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return !got.empty(); }));
  }
  EXPECT_EQ(got, "site-2:fire");
  t.job->handle("throws", [](const Message&) -> Reply { throw std::runtime_error("boom"); });
  auto r = t.server->request("site-1.J", "throws", {}, {}, 5s);
  EXPECT_EQ(r.rc, Rc::handler_error);
  EXPECT_NE(r.reason.find("boom"), std::string::npos) << r.reason;
  t.job->handle("refuses", [](const Message&) { return Reply::error(Rc::handler_error, "not today"); });
  r = t.server->request("site-1.J", "refuses", {}, {}, 5s);
  EXPECT_EQ(r.rc, Rc::handler_error);
  EXPECT_EQ(r.reason, "not today");
}

TEST(Cell, RequestTimesOutAndStopsCutWaits) {
  Tree t;
  ASSERT_TRUE(t.linked());
  std::atomic<bool> release{false};
  t.job->handle("slow", [&](const Message&) {
    for (int i = 0; i < 300 && !release; ++i) {
      std::this_thread::sleep_for(10ms);
    }
    return Reply{};
  });
  auto begin = std::chrono::steady_clock::now();
  auto r = t.server->request("site-1.J", "slow", {}, {}, 200ms);
  EXPECT_EQ(r.rc, Rc::timeout);
  EXPECT_NE(r.reason.find("site-1.J"), std::string::npos) << r.reason;
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 2s);
  // A stop token ends the wait with cancelled.
  std::stop_source source;
  std::thread stopper([&] {
    std::this_thread::sleep_for(100ms);
    source.request_stop();
  });
  r = t.server->request("site-1.J", "slow", {}, {}, 30s, source.get_token());
  stopper.join();
  EXPECT_EQ(r.rc, Rc::cancelled);
  // Stopping the cell ends a pending request with shutting_down.
  std::thread closer([&] {
    std::this_thread::sleep_for(100ms);
    t.site2->stop();
  });
  r = t.site2->request("site-1.J", "slow", {}, {}, 30s);
  closer.join();
  EXPECT_EQ(r.rc, Rc::shutting_down) << r.reason;
  release = true;
}

TEST(Cell, BroadcastToFiftySitesGivesAResultPerTarget) {
  auto log = std::make_shared<CaptureLogger>();
  auto s = Cell::start(fast_config("server", "127.0.0.1:0", ""), log);
  ASSERT_TRUE(s) << s.error().message;
  auto& server = *s;
  std::vector<std::unique_ptr<Cell>> sites;
  std::vector<std::string> names;
  for (int i = 1; i <= 50; ++i) {
    auto config = fast_config("site-" + std::to_string(i), "", server->listen_address());
    config.handler_threads = 1;
    auto c = Cell::start(config, log);
    ASSERT_TRUE(c) << c.error().message;
    (*c)->handle("ping", echo_handler((*c)->fqcn()));
    names.push_back((*c)->fqcn());
    sites.push_back(std::move(*c));
  }
  for (auto& c : sites) {
    ASSERT_TRUE(c->wait_parent(10s)) << c->fqcn() << ": " << c->parent_error();
  }
  EXPECT_EQ(server->children().size(), 50u);
  names.push_back("site-51");  // not there
  std::string body = "round 1";
  auto results = server->broadcast(names, "ping", {}, as_bytes(body), 10s);
  ASSERT_EQ(results.size(), 51u);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(results[i].target, names[i]);
    ASSERT_TRUE(results[i].reply.ok()) << names[i] << ": " << results[i].reply.reason;
    EXPECT_EQ(*results[i].reply.message.header("served-by"), names[i]);
    EXPECT_EQ(as_text(results[i].reply.message.payload), body);
  }
  EXPECT_EQ(results[50].reply.rc, Rc::unreachable);
  sites.clear();
}

TEST(Cell, OneGibibyteFromServerToAJobThroughItsSite) {
  Tree t;
  ASSERT_TRUE(t.linked());
  constexpr std::size_t size = std::size_t{1} << 30;
  std::vector<std::byte> big(size);
  std::uint64_t x = 0x9E3779B97F4A7C15ull;
  for (std::size_t i = 0; i < size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(big.data() + i, &x, 8);
  }
  auto expected = wire::crc32c(0, big);
  t.job->handle("model", [](const Message& m) {
    Reply r;
    r.message.headers = {{"size", std::to_string(m.payload.size())},
                         {"crc", std::to_string(wire::crc32c(0, m.payload))}};
    return r;
  });
  auto r = t.server->request("site-1.J", "model", {}, big, 120s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(*r.message.header("size"), std::to_string(size));
  EXPECT_EQ(*r.message.header("crc"), std::to_string(expected));
}

TEST(Cell, SitesReconnectAfterTheServerRestartsAndTheInterruptedRequestFails) {
  auto log = std::make_shared<CaptureLogger>();
  auto first = Cell::start(fast_config("server", "127.0.0.1:0", ""), log);
  ASSERT_TRUE(first) << first.error().message;
  auto address = (*first)->listen_address();
  std::atomic<bool> arrived{false};
  (*first)->handle("upload", [&](const Message&) {
    arrived = true;
    std::this_thread::sleep_for(3s);
    return Reply{};
  });
  auto config = fast_config("site-1", "", address);
  config.backoff_initial = 50ms;
  config.backoff_max = 400ms;
  auto site = Cell::start(config, log);
  ASSERT_TRUE(site) << site.error().message;
  ASSERT_TRUE((*site)->wait_parent(5s));
  std::vector<std::byte> payload(64u << 20, std::byte{7});
  Reply interrupted;
  std::thread sender([&] { interrupted = (*site)->request("server", "upload", {}, payload, 30s); });
  for (int i = 0; i < 500 && !arrived; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  (*first)->stop();
  first->reset();
  sender.join();
  EXPECT_TRUE(interrupted.rc == Rc::unreachable || interrupted.rc == Rc::shutting_down)
      << to_string(interrupted.rc) << ": " << interrupted.reason;
  auto second = Cell::start(fast_config("server", address, ""), log);
  ASSERT_TRUE(second) << second.error().message;
  (*second)->handle("echo", echo_handler("server"));
  auto restarted = std::chrono::steady_clock::now();
  ASSERT_TRUE((*site)->wait_parent(5s)) << (*site)->parent_error();
  // Within the back-off bound (400 ms, jitter only shortens it) plus a connection's own time.
  EXPECT_LT(std::chrono::steady_clock::now() - restarted, 2s);
  auto r = (*site)->request("server", "echo", {}, {}, 5s);
  EXPECT_TRUE(r.ok()) << r.reason;
}

TEST(Cell, AdmissionRefusesWrongTokensNamesAndJobs) {
  Tree t("wrong");
  ASSERT_TRUE(t.site1->wait_parent(5s));
  EXPECT_FALSE(t.job->wait_parent(1s));
  EXPECT_NE(t.job->parent_error().find("wrong token for job 'J'"), std::string::npos)
      << t.job->parent_error();
  EXPECT_TRUE(t.log->contains("refused 'site-1.J'"));
  // A job the site does not run.
  auto other = fast_config("site-1.K", "", t.site1->listen_address());
  other.token = "t0k3n";
  auto k = Cell::start(other, t.log);
  ASSERT_TRUE(k);
  EXPECT_FALSE((*k)->wait_parent(1s));
  EXPECT_NE((*k)->parent_error().find("no job 'K'"), std::string::npos) << (*k)->parent_error();
  // A name that is not under the site.
  auto stranger = fast_config("site-2.J", "", t.site1->listen_address());
  stranger.token = "t0k3n";
  auto s = Cell::start(stranger, t.log);
  ASSERT_TRUE(s);
  EXPECT_FALSE((*s)->wait_parent(1s));
  EXPECT_NE((*s)->parent_error().find("may not join"), std::string::npos) << (*s)->parent_error();
  // A revoked job can no longer join.
  t.site1->admit_job("L", "abc");
  t.site1->revoke_job("L");
  auto revoked = fast_config("site-1.L", "", t.site1->listen_address());
  revoked.token = "abc";
  auto l = Cell::start(revoked, t.log);
  ASSERT_TRUE(l);
  EXPECT_FALSE((*l)->wait_parent(1s));
}

TEST(Cell, ServerAdmitsOnlyTheProjectsSites) {
  auto log = std::make_shared<CaptureLogger>();
  auto s = Cell::start(fast_config("server", "127.0.0.1:0", ""), log);
  ASSERT_TRUE(s);
  (*s)->set_allowed_children({"site-1"});
  auto ok = Cell::start(fast_config("site-1", "", (*s)->listen_address()), log);
  auto no = Cell::start(fast_config("site-9", "", (*s)->listen_address()), log);
  ASSERT_TRUE(ok && no);
  EXPECT_TRUE((*ok)->wait_parent(5s));
  EXPECT_FALSE((*no)->wait_parent(1s));
  EXPECT_NE((*no)->parent_error().find("not a site of this project"), std::string::npos)
      << (*no)->parent_error();
  // Its requests fail as unauthenticated, with the parent's reason.
  auto r = (*no)->request("server", "echo", {}, {}, 1s);
  EXPECT_EQ(r.rc, Rc::unauthenticated) << r.reason;
  EXPECT_NE(r.reason.find("not a site of this project"), std::string::npos) << r.reason;
}

TEST(Cell, TooBigMessagesAreTypedErrors) {
  Tree t;
  ASSERT_TRUE(t.linked());
  // The sender's own limit.
  auto config = fast_config("site-3", "", t.server->listen_address());
  config.max_message_bytes = 1024;
  auto small = Cell::start(config, t.log);
  ASSERT_TRUE(small);
  ASSERT_TRUE((*small)->wait_parent(5s));
  (*small)->handle("echo", echo_handler("site-3"));
  std::vector<std::byte> two_k(2048);
  auto r = (*small)->request("server", "echo", {}, two_k, 5s);
  EXPECT_EQ(r.rc, Rc::too_big);
  // The receiver's limit: the sender learns it from the reply.
  r = t.server->request("site-3", "echo", {}, two_k, 5s);
  EXPECT_EQ(r.rc, Rc::too_big) << r.reason;
  EXPECT_NE(r.reason.find("1024"), std::string::npos) << r.reason;
  // And the link goes on.
  r = t.server->request("site-3", "echo", {}, {}, 5s);
  EXPECT_TRUE(r.ok()) << r.reason;
}

TEST(Cell, MalformedFramesAreRefusedAndTheLinkGoesOnOrClosesCleanly) {
  auto log = std::make_shared<CaptureLogger>();
  auto s = Cell::start(fast_config("server", "127.0.0.1:0", ""), log);
  ASSERT_TRUE(s);
  (*s)->handle("echo", echo_handler("server"));
  TransportSettings settings;
  settings.max_packet = (4u << 20) + 4096;
  auto stream = dial((*s)->listen_address(), "", settings);
  ASSERT_TRUE(stream);
  auto hello = test::frame(wire::Op::cell_hello, 1, 0, {{"cell.from", "site-7"}, {"cell.version", "1"}}, "");
  ASSERT_TRUE((*stream)->write(hello));
  std::string answer;
  ASSERT_TRUE((*stream)->read(answer));
  auto welcome = wire::decode_frame({reinterpret_cast<const std::byte*>(answer.data()), answer.size()});
  ASSERT_TRUE(welcome);
  EXPECT_EQ(welcome->header.op, wire::Op::cell_welcome);
  // A corrupted frame: refused, logged with the peer, and the link goes on.
  auto request =
      test::frame(wire::Op::cell_request, 2, 0,
                  {{"cell.from", "site-7"}, {"cell.to", "server"}, {"cell.ttl_ms", "5000"}}, "echo", "x");
  auto corrupt = request;
  corrupt[corrupt.size() - 6] ^= 0x5A;
  ASSERT_TRUE((*stream)->write(corrupt));
  std::string junk = "not a frame at all";
  ASSERT_TRUE((*stream)->write(junk));
  ASSERT_TRUE((*stream)->write(request));
  ASSERT_TRUE((*stream)->read(answer));
  auto reply = wire::decode_frame({reinterpret_cast<const std::byte*>(answer.data()), answer.size()});
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->header.op, wire::Op::cell_reply);
  EXPECT_EQ(reply->header.req_id, 2u);
  EXPECT_TRUE(log->contains("malformed frame from 'site-7'"));
  // A child that claims to speak for another cell is not believed.
  auto spoof = test::frame(wire::Op::cell_request, 3, 0,
                           {{"cell.from", "site-8"}, {"cell.to", "server"}, {"cell.ttl_ms", "5000"}}, "echo");
  ASSERT_TRUE((*stream)->write(spoof));
  // Eight malformed frames in a row: the link is closed, cleanly.
  for (int i = 0; i < 8; ++i) {
    (*stream)->write(junk);
  }
  bool closed = false;
  for (int i = 0; i < 10 && !closed; ++i) {
    closed = !(*stream)->read(answer);
  }
  EXPECT_TRUE(closed);
  EXPECT_TRUE(log->contains("claiming to be from 'site-8'"));
  // An oversized packet (beyond the packet cap) ends that stream only; the server goes on.
  auto stream2 = dial((*s)->listen_address(), "", settings);
  ASSERT_TRUE(stream2);
  auto hello2 = test::frame(wire::Op::cell_hello, 1, 0, {{"cell.from", "site-9"}, {"cell.version", "1"}}, "");
  ASSERT_TRUE((*stream2)->write(hello2));
  ASSERT_TRUE((*stream2)->read(answer));
  TransportSettings big = settings;
  big.max_packet = 64u << 20;
  auto stream3 = dial((*s)->listen_address(), "", big);
  ASSERT_TRUE(stream3);
  auto hello3 =
      test::frame(wire::Op::cell_hello, 1, 0, {{"cell.from", "site-10"}, {"cell.version", "1"}}, "");
  ASSERT_TRUE((*stream3)->write(hello3));
  ASSERT_TRUE((*stream3)->read(answer));
  std::string huge(8u << 20, 'x');
  (*stream3)->write(huge);
  EXPECT_FALSE((*stream3)->read(answer));
  auto again = test::frame(wire::Op::cell_request, 4, 0,
                           {{"cell.from", "site-9"}, {"cell.to", "server"}, {"cell.ttl_ms", "5000"}}, "echo");
  ASSERT_TRUE((*stream2)->write(again));
  ASSERT_TRUE((*stream2)->read(answer));
}

TEST(Cell, ClearTextNeedsToBeAskedForAndIsWarnedAbout) {
  auto log = std::make_shared<CaptureLogger>();
  auto config = fast_config("server", "127.0.0.1:0", "");
  config.insecure = false;
  auto refused = Cell::start(config, log);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("insecure"), std::string::npos);
  config.insecure = true;
  auto started = Cell::start(config, log);
  ASSERT_TRUE(started);
  EXPECT_TRUE(log->contains("clear text"));
}

// --- mutual TLS ---

// A project's kits written the way `ember provision` writes them, plus a second CA and bad certificates.
struct Kits {
  ember::test::TempDir dir;
  provision::Credentials ca, other_ca;

  Kits() {
    ca = *provision::make_ca("test CA", 30);
    other_ca = *provision::make_ca("other CA", 30);
    write("server", ca,
          *provision::issue(ca, "server", provision::Role::server, {"localhost", "127.0.0.1"}, soon(-1),
                            soon(30)));
    for (const char* site : {"site-1", "site-2"}) {
      write(site, ca, *provision::issue(ca, site, provision::Role::site, {}, soon(-1), soon(30)));
    }
    write("foreign", other_ca,
          *provision::issue(other_ca, "site-1", provision::Role::site, {}, soon(-1), soon(30)));
    write("expired", ca, *provision::issue(ca, "site-1", provision::Role::site, {}, soon(-30), soon(-1)));
  }
  static provision::Clock::time_point soon(int days) {
    return provision::Clock::now() + std::chrono::hours(24) * days;
  }
  void write(const std::string& name, const provision::Credentials& issuer,
             const provision::Credentials& own) {
    auto folder = dir.path() / name;
    EXPECT_TRUE(provision::make_dir(folder, 0700));
    EXPECT_TRUE(provision::write_file_atomic(folder / "ca.crt", issuer.cert_pem, 0644));
    EXPECT_TRUE(provision::write_file_atomic(folder / "cert.crt", own.cert_pem, 0644));
    EXPECT_TRUE(provision::write_file_atomic(folder / "cert.key", own.key_pem, 0600));
  }
  TlsFiles files(const std::string& name) const {
    auto folder = dir.path() / name;
    return TlsFiles{folder / "ca.crt", folder / "cert.crt", folder / "cert.key"};
  }
  Config config(const std::string& fqcn, const std::string& kit, const std::string& listen,
                const std::string& parent, const std::string& parent_name) const {
    auto c = fast_config(fqcn, listen, parent);
    c.insecure = false;
    c.tls = files(kit);
    c.parent_name = parent_name;
    return c;
  }
};

TEST(CellTls, RoutesOverMutualTlsAndChecksEveryName) {
  Kits kits;
  auto log = std::make_shared<CaptureLogger>();
  auto server = Cell::start(kits.config("server", "server", "127.0.0.1:0", "", ""), log);
  ASSERT_TRUE(server) << server.error().message;
  (*server)->set_allowed_children({"site-1", "site-2"});
  auto site =
      Cell::start(kits.config("site-1", "site-1", "127.0.0.1:0", (*server)->listen_address(), "server"), log);
  ASSERT_TRUE(site) << site.error().message;
  ASSERT_TRUE((*site)->wait_parent(5s)) << (*site)->parent_error();
  (*site)->admit_job("J", "secret");
  // A job presents its site's certificate and the job's token.
  auto jc = kits.config("site-1.J", "site-1", "", (*site)->listen_address(), "site-1");
  jc.token = "secret";
  auto job = Cell::start(jc, log);
  ASSERT_TRUE(job) << job.error().message;
  ASSERT_TRUE((*job)->wait_parent(5s)) << (*job)->parent_error();
  (*job)->handle("echo", echo_handler("site-1.J"));
  std::string text = "over TLS";
  auto r = (*server)->request("site-1.J", "echo", {}, as_bytes(text), 5s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(as_text(r.message.payload), text);
  // site-2's kit used to claim site-1's name: refused by the server, and told why.
  auto liar = kits.config("site-1", "site-2", "", (*server)->listen_address(), "server");
  liar.check_own_certificate = false;
  auto l = Cell::start(liar, log);
  ASSERT_TRUE(l) << l.error().message;
  EXPECT_FALSE((*l)->wait_parent(1s));
  EXPECT_NE((*l)->parent_error().find("its certificate is for 'site-2', not 'site-1'"), std::string::npos)
      << (*l)->parent_error();
  EXPECT_TRUE(log->contains("refused 'site-1' from"));
  // Its own check says it first, when not turned off.
  auto checked = Cell::start(kits.config("site-1", "site-2", "", (*server)->listen_address(), "server"), log);
  ASSERT_FALSE(checked);
  EXPECT_NE(checked.error().message.find("is for 'site-2', but this cell is 'site-1'"), std::string::npos)
      << checked.error().message;
  // A process of the site with site-2's certificate may not join site-1's listener.
  auto intruder = kits.config("site-1.J", "site-2", "", (*site)->listen_address(), "site-1");
  intruder.token = "secret";
  intruder.check_own_certificate = false;
  auto i = Cell::start(intruder, log);
  ASSERT_TRUE(i);
  EXPECT_FALSE((*i)->wait_parent(1s));
  EXPECT_NE((*i)->parent_error().find("certificate is for 'site-2'"), std::string::npos)
      << (*i)->parent_error();
  // Expecting another name in the server's certificate: the handshake fails on the site's side.
  auto wrong_server =
      Cell::start(kits.config("site-2", "site-2", "", (*server)->listen_address(), "not-the-server"), log);
  ASSERT_TRUE(wrong_server);
  EXPECT_FALSE((*wrong_server)->wait_parent(1s));
  EXPECT_FALSE((*wrong_server)->parent_error().empty());
}

TEST(CellTls, ACertificateOfAnotherCaOrAnExpiredOneIsRefusedWithTheReason) {
  Kits kits;
  auto log = std::make_shared<CaptureLogger>();
  auto server = Cell::start(kits.config("server", "server", "127.0.0.1:0", "", ""), log);
  ASSERT_TRUE(server) << server.error().message;
  // The site's own check names the cause before any connection.
  auto foreign = kits.config("site-1", "foreign", "", (*server)->listen_address(), "server");
  foreign.tls->ca = kits.files("site-1").ca;  // the project's CA, a certificate of another
  auto f = Cell::start(foreign, log);
  ASSERT_FALSE(f);
  EXPECT_NE(f.error().message.find("was not issued by the CA"), std::string::npos) << f.error().message;
  auto e = Cell::start(kits.config("site-1", "expired", "", (*server)->listen_address(), "server"), log);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("expired on"), std::string::npos) << e.error().message;
  // Past its own check, the server refuses it at the hello, and both sides say why.
  foreign.check_own_certificate = false;
  auto f2 = Cell::start(foreign, log);
  ASSERT_TRUE(f2) << f2.error().message;
  EXPECT_FALSE((*f2)->wait_parent(1500ms));
  EXPECT_NE(
      (*f2)->parent_error().find("refused by 'server': its certificate (for 'site-1') was not issued by "
                                 "this project's CA (its issuer: /CN=other CA)"),
      std::string::npos)
      << (*f2)->parent_error();
  EXPECT_TRUE(log->contains("cell 'server': refused 'site-1' from"));
  EXPECT_TRUE(log->contains("was not issued by this project's CA"));
  auto expired = kits.config("site-1", "expired", "", (*server)->listen_address(), "server");
  expired.check_own_certificate = false;
  auto e2 = Cell::start(expired, log);
  ASSERT_TRUE(e2) << e2.error().message;
  EXPECT_FALSE((*e2)->wait_parent(1500ms));
  EXPECT_NE((*e2)->parent_error().find("refused by 'server': its certificate (for 'site-1') expired on"),
            std::string::npos)
      << (*e2)->parent_error();
  // A site of another project (its CA file too) fails the handshake on its side: the server's certificate
  // is not one it trusts.
  auto stranger = kits.config("site-1", "foreign", "", (*server)->listen_address(), "server");
  auto s3 = Cell::start(stranger, log);
  ASSERT_TRUE(s3) << s3.error().message;
  EXPECT_FALSE((*s3)->wait_parent(1500ms));
  EXPECT_NE((*s3)->parent_error().find("handshake"), std::string::npos) << (*s3)->parent_error();
  EXPECT_TRUE((*server)->children().empty());
}

TEST(CellTls, AKeyReadableByOthersIsRefused) {
  Kits kits;
  auto files = kits.files("site-1");
  std::filesystem::permissions(files.key, std::filesystem::perms::group_read,
                               std::filesystem::perm_options::add);
  auto log = std::make_shared<CaptureLogger>();
  auto c = Cell::start(kits.config("site-1", "site-1", "", "127.0.0.1:1", "server"), log);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("readable by others"), std::string::npos) << c.error().message;
}

}  // namespace
}  // namespace ember::cell
