// The cell network's receiving side on loopback: payloads streamed into sinks as they arrive
// (Cell::handle_stream), and handlers run on a link's reader thread (Dispatch::inline_reader).

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "cell/cell.hpp"
#include "cell_test_support.hpp"
#include "wire/crc32c.hpp"

namespace ember::cell {
namespace {

using namespace std::chrono_literals;
using test::CaptureLogger;
using test::fast_config;

// The server, site-1 and the job site-1.J under it, with small packets so that a message is many frames.
struct Tree {
  std::shared_ptr<CaptureLogger> log = std::make_shared<CaptureLogger>();
  std::unique_ptr<Cell> server, site, job;

  Tree() {
    server = start(fast_config("server", "127.0.0.1:0", ""));
    site = start(fast_config("site-1", "127.0.0.1:0", server->listen_address()));
    site->admit_job("J", "t0k3n");
    auto jc = fast_config("site-1.J", "", site->listen_address());
    jc.token = "t0k3n";
    job = start(jc);
  }
  std::unique_ptr<Cell> start(Config config) {
    config.packet_bytes = 64 * 1024;
    auto c = Cell::start(std::move(config), log);
    EXPECT_TRUE(c) << c.error().message;
    return c ? std::move(*c) : nullptr;
  }
  bool linked() { return site->wait_parent(5s) && job->wait_parent(5s); }
};

std::vector<std::byte> pattern(std::size_t size) {
  std::vector<std::byte> out(size);
  for (std::size_t i = 0; i < size; ++i) {
    out[i] = static_cast<std::byte>((i * 131 + i / 7) & 0xff);
  }
  return out;
}

// What a test sink saw, shared with the test.
struct Seen {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::string> events;  // "open <topic> <size> <header k>", "finish <bytes>", "cancel <why>"
  std::uint64_t bytes = 0;
  std::uint32_t crc = 0;
  int writes = 0;
  std::thread::id writer;

  void add(std::string event) {
    std::lock_guard lock(mutex);
    events.push_back(std::move(event));
    changed.notify_all();
  }
  bool wait_for_event(const std::string& prefix) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, 10s, [&] {
      for (const auto& e : events) {
        if (e.rfind(prefix, 0) == 0) {
          return true;
        }
      }
      return false;
    });
  }
};

// Checks and counts what it is given; fails its write number `fail_at` (1-based, 0: never); sleeps `pause`
// in each write after the first.
class TestSink final : public MessageSink {
 public:
  TestSink(Seen& seen, int fail_at, std::chrono::milliseconds pause)
      : seen_(seen), fail_at_(fail_at), pause_(pause) {}
  Result<void> write(std::span<const std::byte> bytes) override {
    std::lock_guard lock(seen_.mutex);
    seen_.writer = std::this_thread::get_id();
    if (++seen_.writes == fail_at_) {
      return fail(Errc::io_error, "disk full at write " + std::to_string(fail_at_));
    }
    seen_.crc = wire::crc32c(seen_.crc, bytes);
    seen_.bytes += bytes.size();
    if (seen_.writes > 1 && pause_.count() > 0) {
      std::this_thread::sleep_for(pause_);
    }
    return ok();
  }
  Reply finish(Message& message) override {
    Reply reply;
    {
      std::lock_guard lock(seen_.mutex);
      reply.message.headers = {{"bytes", std::to_string(seen_.bytes)},
                               {"crc", std::to_string(seen_.crc)},
                               {"payload-left", std::to_string(message.payload.size())}};
    }
    seen_.add("finish " + std::to_string(seen_.bytes));
    return reply;
  }
  void cancel(const std::string& why) noexcept override { seen_.add("cancel " + why); }

 private:
  Seen& seen_;
  int fail_at_;
  std::chrono::milliseconds pause_;
};

SinkFactory test_sinks(Seen& seen, int fail_at = 0, std::chrono::milliseconds pause = 0ms) {
  return [&seen, fail_at, pause](const Message& head,
                                 std::uint64_t size) -> Result<std::unique_ptr<MessageSink>> {
    const auto* k = head.header("k");
    seen.add("open " + head.topic + " " + std::to_string(size) + " " + (k != nullptr ? *k : "-") + " " +
             (head.header("cell.ttl_ms") != nullptr ? "cell-headers" : "clean") + " " + head.from);
    if (head.header("refuse") != nullptr) {
      return fail(Errc::invalid_option, "no room for " + std::to_string(size) + " bytes");
    }
    return std::unique_ptr<MessageSink>(new TestSink(seen, fail_at, pause));
  };
}

TEST(CellStream, ASinkTakesEveryChunkInOrderOverOneAndTwoHops) {
  Tree t;
  ASSERT_TRUE(t.linked());
  for (auto dispatch : {Dispatch::workers, Dispatch::inline_reader}) {
    for (auto* target : {t.site.get(), t.job.get()}) {
      Seen seen;
      target->handle_stream("model", test_sinks(seen), dispatch);
      auto payload = pattern((1u << 20) + 5);  // 17 frames of 64 KiB
      auto r = t.server->request(target->fqcn(), "model", {{"k", "v"}}, payload, 20s);
      ASSERT_TRUE(r.ok()) << target->fqcn() << ": " << r.reason;
      EXPECT_EQ(*r.message.header("bytes"), std::to_string(payload.size()));
      EXPECT_EQ(*r.message.header("crc"), std::to_string(wire::crc32c(0, payload)));
      EXPECT_EQ(*r.message.header("payload-left"), "0");
      std::lock_guard lock(seen.mutex);
      EXPECT_GT(seen.writes, 1);  // streamed, not gathered first
      ASSERT_EQ(seen.events.size(), 2u);
      EXPECT_EQ(seen.events[0], "open model " + std::to_string(payload.size()) + " v clean server");
      EXPECT_EQ(seen.events[1], "finish " + std::to_string(payload.size()));
    }
  }
  // Empty payloads, notifies, and a message a cell sends itself reach a sink too.
  Seen seen;
  t.site->handle_stream("model", test_sinks(seen));
  auto r = t.server->request("site-1", "model", {}, {}, 5s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(*r.message.header("bytes"), "0");
  auto small = pattern(100);
  ASSERT_TRUE(t.server->notify("site-1", "model", {}, small, 5s).ok());
  ASSERT_TRUE(seen.wait_for_event("finish 100"));
  Seen self;
  t.site->handle_stream("model", test_sinks(self));
  r = t.site->request("site-1", "model", {}, small, 5s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(*r.message.header("crc"), std::to_string(wire::crc32c(0, small)));
}

TEST(CellStream, AFailingOrRefusingSinkIsAHandlerErrorAndTheLinkGoesOn) {
  Tree t;
  ASSERT_TRUE(t.linked());
  Seen failing;
  t.job->handle_stream("model", test_sinks(failing, 3));
  auto payload = pattern(1u << 20);
  auto r = t.server->request("site-1.J", "model", {}, payload, 20s);
  EXPECT_EQ(r.rc, Rc::handler_error);
  EXPECT_NE(r.reason.find("disk full at write 3"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("site-1.J"), std::string::npos) << r.reason;
  {
    std::lock_guard lock(failing.mutex);
    EXPECT_EQ(failing.writes, 3);          // nothing after the failed write
    EXPECT_EQ(failing.events.size(), 1u);  // opened; neither finished nor cancelled
  }
  r = t.server->request("site-1.J", "model", {{"refuse", "1"}}, payload, 20s);
  EXPECT_EQ(r.rc, Rc::handler_error);
  EXPECT_NE(r.reason.find("no room for 1048576 bytes"), std::string::npos) << r.reason;
  // The rest of the refused and failed messages was dropped; the link carries on.
  Seen fine;
  t.job->handle_stream("model", test_sinks(fine));
  r = t.server->request("site-1.J", "model", {}, payload, 20s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(*r.message.header("bytes"), std::to_string(payload.size()));
}

TEST(CellStream, ASinkIsCancelledWhenItsLinkIsLost) {
  Tree t;
  ASSERT_TRUE(t.linked());
  Seen seen;
  t.site->handle_stream("model", test_sinks(seen, 0, 5ms));  // slow: the message is still coming
  auto payload = pattern(16u << 20);
  std::thread sender([&] { (void)t.server->request("site-1", "model", {}, payload, 30s); });
  ASSERT_TRUE(seen.wait_for_event("open"));
  t.server->stop();
  sender.join();
  ASSERT_TRUE(seen.wait_for_event("cancel"));
  std::lock_guard lock(seen.mutex);
  ASSERT_EQ(seen.events.size(), 2u);
  EXPECT_NE(seen.events[1].find("the link to 'server' broke"), std::string::npos) << seen.events[1];
  EXPECT_LT(seen.bytes, payload.size());
}

TEST(CellDispatch, AnInlineHandlerAnswersFromTheReaderAndMayNotWaitOnTheNetwork) {
  Tree t;
  ASSERT_TRUE(t.linked());
  std::atomic<int> calls{0};
  Rc nested = Rc::ok;
  std::string nested_reason;
  t.job->handle(
      "echo",
      [&](Message& m) {
        calls++;
        // A request from the reader thread could wait for an answer only this thread would read.
        auto inner = t.job->request("server", "echo", {}, {}, 5s);
        nested = inner.rc;
        nested_reason = inner.reason;
        Reply r;
        r.message.payload = std::move(m.payload);
        return r;
      },
      Dispatch::inline_reader);
  t.server->handle("echo", [](Message& m) {
    Reply r;
    r.message.payload = std::move(m.payload);
    return r;
  });
  auto payload = pattern(16);
  for (int i = 0; i < 100; ++i) {
    auto r = t.server->request("site-1.J", "echo", {}, payload, 5s);
    ASSERT_TRUE(r.ok()) << r.reason;
    ASSERT_EQ(r.message.payload, payload);
  }
  EXPECT_EQ(calls, 100);
  EXPECT_EQ(nested, Rc::handler_error);
  EXPECT_NE(nested_reason.find("inline"), std::string::npos) << nested_reason;
  // A multi-frame message to an inline handler, and a notify.
  auto big = pattern(300000);
  auto r = t.server->request("site-1.J", "echo", {}, big, 10s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(r.message.payload, big);
  ASSERT_TRUE(t.server->notify("site-1.J", "echo", {}, payload, 5s).ok());
  // From a worker thread, the same request goes through.
  t.job->handle("ask", [&](Message&) { return t.job->request("server", "echo", {}, payload, 5s); });
  r = t.server->request("site-1.J", "ask", {}, {}, 10s);
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(r.message.payload, payload);
}

TEST(CellDispatch, StopStillWorksWhileAnInlineHandlerRuns) {
  Tree t;
  ASSERT_TRUE(t.linked());
  std::atomic<bool> entered{false};
  t.site->handle(
      "nap",
      [&](Message&) {
        entered = true;
        std::this_thread::sleep_for(200ms);
        return Reply{};
      },
      Dispatch::inline_reader);
  Reply result;
  std::thread caller([&] { result = t.server->request("site-1", "nap", {}, {}, 30s); });
  while (!entered) {
    std::this_thread::sleep_for(1ms);
  }
  t.site->stop();  // returns once the handler has; the request in flight fails with a code
  caller.join();
  EXPECT_FALSE(result.ok());
  EXPECT_TRUE(result.rc == Rc::unreachable || result.rc == Rc::shutting_down) << result.reason;
  // A handler that blocks on the reader breaks the inline contract: the log says so, naming it.
  EXPECT_TRUE(t.log->contains("the inline handler of 'nap' held the reader of the link to 'server'"));
  // A stopped cell's inline topics answer nothing more, and its peers see it gone.
  auto r = t.server->request("site-1", "nap", {}, {}, 2s);
  EXPECT_EQ(r.rc, Rc::unreachable) << r.reason;
}

}  // namespace
}  // namespace ember::cell
