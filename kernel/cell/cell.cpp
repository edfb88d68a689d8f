// The cell network's core: links, routing by FQCN, chunking, relaying with bounded queues, requests and
// replies, admission. The gRPC side is behind transport.hpp.

#include "cell/cell.hpp"

#include <sys/random.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "cell/codec.hpp"
#include "tls_files.hpp"
#include "transport.hpp"
#include "wire/frame.hpp"

namespace ember::cell {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using wire::Op;

namespace {

// Routing headers on a message's first frame; an application's own headers may not use the prefix.
constexpr std::string_view h_rc = "cell.rc";
constexpr std::string_view h_reason = "cell.reason";
constexpr std::string_view h_ttl = "cell.ttl_ms";
constexpr std::string_view h_token = "cell.token";
constexpr std::string_view h_version = "cell.version";
constexpr std::string_view cell_version = "1";

// A single-frame message up to this size goes on the control lane: ahead of queued bulk packets.
constexpr std::size_t control_bytes = 64 * 1024;
// Messages one link may have in progress (partly received) at once.
constexpr std::size_t max_partials = 64;
// An inline handler that holds its link's reader longer than this is logged (it should not block).
constexpr auto slow_inline = std::chrono::milliseconds(100);
// Malformed frames in a row after which a link is closed.
constexpr int max_malformed_in_row = 8;

std::uint64_t random_id() {
  static thread_local std::mt19937_64 engine = [] {
    std::uint64_t seed = 0;
    if (::getrandom(&seed, sizeof seed, 0) != static_cast<ssize_t>(sizeof seed)) {
      seed = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()) ^
             std::hash<std::thread::id>{}(std::this_thread::get_id());
    }
    return std::mt19937_64(seed);
  }();
  std::uint64_t id = 0;
  while (id == 0) {
    id = engine();
  }
  return id;
}

bool is_under(std::string_view name, std::string_view ancestor) {
  return name.size() > ancestor.size() + 1 && name.substr(0, ancestor.size()) == ancestor &&
         name[ancestor.size()] == '.';
}

bool is_self_or_under(std::string_view name, std::string_view ancestor) {
  return name == ancestor || is_under(name, ancestor);
}

std::string ms_text(milliseconds ms) {
  return std::to_string(ms.count()) + " ms";
}

// Encodes one frame into a packet string: head, payload and trailer copied once, checksummed once.
Result<void> encode_packet(std::string& out, const wire::FrameHeader& header, std::string_view topic,
                           const wire::Headers& headers, std::span<const std::byte> payload,
                           const wire::Limits& limits) {
  wire::GatherFrame frame;
  std::span<const std::byte> parts[] = {payload};
  if (auto encoded = wire::encode_frame_around(frame, header, topic, headers, parts, limits); !encoded) {
    return encoded;
  }
  // Appended, not resized and overwritten: a pooled buffer keeps its capacity, and resize() would zero
  // every byte of it first (4 MiB per packet).
  out.clear();
  out.reserve(frame.head.size() + payload.size() + frame.trailer.size());
  out.append(reinterpret_cast<const char*>(frame.head.data()), frame.head.size());
  out.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  out.append(reinterpret_cast<const char*>(frame.trailer.data()), frame.trailer.size());
  return ok();
}

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// Set while a link's reader thread runs application code (an inline handler, a sink): request() and
// broadcast() refuse there, as their reply may have to come in on this very thread.
thread_local bool in_inline = false;

struct InlineScope {
  InlineScope() : was_(in_inline) { in_inline = true; }
  ~InlineScope() { in_inline = was_; }
  InlineScope(const InlineScope&) = delete;
  InlineScope& operator=(const InlineScope&) = delete;

 private:
  bool was_;
};

// Packet buffers reused between senders, readers and writers: a 4 MiB buffer allocated afresh for every
// packet costs a page fault per page each time, which dominated a large transfer's profile.
class PacketPool {
 public:
  explicit PacketPool(std::size_t keep) : keep_(keep) {}
  std::string take() {
    std::lock_guard lock(mutex_);
    if (free_.empty()) {
      return {};
    }
    std::string s = std::move(free_.back());
    free_.pop_back();
    return s;
  }
  void give(std::string&& s) {
    if (s.capacity() < 64 * 1024) {
      return;  // small ones are cheap to make
    }
    std::lock_guard lock(mutex_);
    if (free_.size() < keep_) {
      free_.push_back(std::move(s));
    }
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> free_;
  std::size_t keep_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------

// What a topic is routed to: a handler or a sink factory, and the thread that runs it.
struct Topic {
  Handler handler;
  SinkFactory sink;
  Dispatch dispatch = Dispatch::workers;
};

// A message being streamed into its sink. The mutex orders the reader's write() before a cancel() from the
// housekeeper or a closing link.
struct Inbound {
  std::mutex mutex;
  std::unique_ptr<MessageSink> sink;  // null once cancelled or finished
  std::shared_ptr<const Topic> topic;
  std::uint64_t total = 0;
  Op op = Op::cell_notify;
  std::string from;  // the sender, who hears of a failed sink
  std::string topic_name;

  void cancel(const std::string& why) noexcept {
    std::lock_guard lock(mutex);
    if (sink) {
      sink->cancel(why);
      sink.reset();
    }
  }
};

// One link to a peer: the outbound queues and their writer thread, the peer's partial messages, and the
// messages being relayed from it.
struct Link {
  std::string peer;  // FQCN
  std::string address;
  bool parent = false;
  Stream* stream = nullptr;  // valid until close(); owned by the thread that reads it

  std::mutex mutex;
  std::condition_variable_any changed;  // room in the queues, writing done, closed: senders, drain()
  std::condition_variable_any queued;   // a packet for the writer, or closed: the writer only, so a sender
                                        // that wrote its own packet does not wake it for nothing
  std::deque<std::string> control;
  std::deque<std::string> bulk;
  std::uint64_t bulk_bytes = 0;
  bool closed = false;
  bool writing = false;  // the writer holds a packet it took from the queues
  std::string close_reason;
  std::thread writer;
  std::atomic<std::int64_t> last_contact_ms{0};
  std::atomic<std::int64_t> last_write_ms{0};

  // Reader-thread state, guarded by `mutex` as well (housekeeping prunes it).
  Assembler assembler;

  explicit Link(std::uint64_t max_message) : assembler(max_message, max_partials) {}
  struct Forward {
    std::weak_ptr<Link> to;
    std::uint32_t next_chunk = 0;
    bool dropped = false;
    Clock::time_point touched;
  };
  std::unordered_map<std::uint64_t, Forward> forwards;
  std::unordered_map<std::uint64_t, std::shared_ptr<Inbound>> inbound;  // messages streamed to sinks
  int malformed_in_row = 0;
};

struct Pending {
  std::mutex mutex;
  std::condition_variable_any done_cv;
  std::optional<Reply> reply;
  std::atomic<bool> ready{false};  // reply is set: a caller spinning before it sleeps needs no lock
  std::weak_ptr<Link> via;
  std::string target;
};

struct RelayEntry {
  std::string origin;
  std::weak_ptr<Link> to;
  Clock::time_point expiry;
};

class CellImpl {
 public:
  CellImpl(Config config, std::shared_ptr<Logger> logger, LinkObserver observer)
      : config_(std::move(config)), logger_(std::move(logger)), observer_(std::move(observer)) {
    // A whole message's size is checked by the cell (too_big, answered), not by the frame decoder.
    limits_.max_chunk = config_.packet_bytes;
  }

  ~CellImpl() { stop(); }

  Result<void> start() {
    if (!valid_fqcn(config_.fqcn)) {
      return fail(Errc::invalid_config, "cell name '" + config_.fqcn +
                                            "' is not a valid FQCN (dot-separated parts of letters, digits, "
                                            "'_', '-', '@')");
    }
    if (config_.packet_bytes < 64 * 1024 || config_.packet_bytes > (1u << 30)) {
      return fail(Errc::invalid_config, "cell packet_bytes must be between 65536 and 1073741824, is " +
                                            std::to_string(config_.packet_bytes));
    }
    if (config_.listen.empty() && config_.parent.empty()) {
      return fail(Errc::invalid_config,
                  "cell '" + config_.fqcn + "' has neither a listen address nor a parent");
    }
    settings_.max_packet = config_.packet_bytes + 4096;  // the protobuf wrapper's few bytes
    settings_.keepalive = config_.keepalive;
    settings_.keepalive_timeout = config_.keepalive_timeout;
    if (config_.tls) {
      // A job's or trainer's cell presents its site's certificate: the name checked is the first part.
      auto site = !config_.certificate_name.empty() ? config_.certificate_name
                                                    : config_.fqcn.substr(0, config_.fqcn.find('.'));
      auto pem = load_tls(*config_.tls, site, config_.check_own_certificate);
      if (!pem) {
        return fail(Errc::invalid_config, "cell '" + config_.fqcn + "': " + pem.error().message);
      }
      settings_.tls = std::move(*pem);
    } else if (config_.insecure) {
      logger_->warn("cell '" + config_.fqcn +
                    "': clear text (insecure = true): traffic and identities on its links are not protected");
    } else {
      return fail(Errc::invalid_config,
                  "cell '" + config_.fqcn + "': no TLS files (ca, cert, key) and insecure is not set");
    }
    for (int i = 0; i < std::max(1, config_.handler_threads); ++i) {
      workers_.emplace_back([this] { work(); });
    }
    if (!config_.listen.empty()) {
      auto listener = listen(
          config_.listen, settings_, [this](Stream& stream) { accept(stream); }, logger_);
      if (!listener) {
        stop();
        return fail(listener.error().code, "cell '" + config_.fqcn + "': " + listener.error().message);
      }
      listener_ = std::move(*listener);
      logger_->info("cell '" + config_.fqcn + "' listening on " + listener_->address() +
                    (settings_.tls ? " (mutual TLS)" : " (clear text)"));
    } else {
      route_grpc_log(logger_);
    }
    if (!config_.parent.empty()) {
      connector_ = std::thread([this] { connect_loop(); });
    }
    housekeeper_ = std::thread([this] { housekeep(); });
    return ok();
  }

  const std::string& fqcn() const noexcept { return config_.fqcn; }
  std::string listen_address() const { return listener_ ? listener_->address() : std::string(); }

  // --- admission ---

  void set_admission(Admission admission) {
    std::lock_guard lock(mutex_);
    admission_ = std::move(admission);
  }
  void set_allowed_children(std::vector<std::string> names) {
    std::lock_guard lock(mutex_);
    allowed_ = std::set<std::string>(names.begin(), names.end());
  }
  void admit_job(const std::string& job_id, const std::string& token) {
    std::lock_guard lock(mutex_);
    job_tokens_[job_id] = token;
  }
  void revoke_job(const std::string& job_id) {
    std::lock_guard lock(mutex_);
    job_tokens_.erase(job_id);
  }

  std::optional<std::string> default_admission(const PeerClaim& claim) {
    std::lock_guard lock(mutex_);
    bool root = config_.parent.empty();
    if (root && !is_under(claim.fqcn, config_.fqcn) && claim.fqcn.find('.') == std::string::npos) {
      // A site joining the server: its certificate must name it, and the project must list it.
      if (!allowed_.empty() && allowed_.count(claim.fqcn) == 0) {
        return "'" + claim.fqcn + "' is not a site of this project";
      }
      if (settings_.tls && claim.cert_name != claim.fqcn) {
        return "its certificate is for '" + claim.cert_name + "', not '" + claim.fqcn + "'";
      }
      return std::nullopt;
    }
    if (!is_under(claim.fqcn, config_.fqcn)) {
      return "'" + claim.fqcn + "' may not join '" + config_.fqcn + "' (only names under it may)";
    }
    if (settings_.tls) {
      auto own_site = config_.fqcn.substr(0, config_.fqcn.find('.'));
      if (claim.cert_name != own_site) {
        return "its certificate is for '" + claim.cert_name + "'; only processes of '" + own_site +
               "' may join here";
      }
    }
    auto rest = std::string_view(claim.fqcn).substr(config_.fqcn.size() + 1);
    auto job_id = std::string(rest.substr(0, rest.find('.')));
    auto it = job_tokens_.find(job_id);
    if (it == job_tokens_.end()) {
      return "no job '" + job_id + "' runs on '" + config_.fqcn + "'";
    }
    if (claim.token.size() != it->second.size() ||
        !std::equal(claim.token.begin(), claim.token.end(), it->second.begin())) {
      return "wrong token for job '" + job_id + "'";
    }
    return std::nullopt;
  }

  // --- handlers ---

  void handle(const std::string& topic, Handler handler, Dispatch dispatch) {
    auto entry = std::make_shared<Topic>();
    entry->handler = std::move(handler);
    entry->dispatch = dispatch;
    std::lock_guard lock(mutex_);
    handlers_[topic] = std::move(entry);
  }

  void handle_stream(const std::string& topic, SinkFactory factory, Dispatch dispatch) {
    auto entry = std::make_shared<Topic>();
    entry->sink = std::move(factory);
    entry->dispatch = dispatch;
    std::lock_guard lock(mutex_);
    handlers_[topic] = std::move(entry);
  }

  std::shared_ptr<const Topic> topic_of(std::string_view topic) {
    std::lock_guard lock(mutex_);
    auto it = handlers_.find(topic);
    return it != handlers_.end() ? it->second : nullptr;
  }

  // --- sending ---

  Reply request(const std::string& to, const std::string& topic, const wire::Headers& headers,
                std::span<const std::byte> payload, milliseconds timeout, std::stop_token stop) {
    if (in_inline) {
      return inline_refusal("request()");
    }
    auto deadline = Clock::now() + timeout;
    auto pending = std::make_shared<Pending>();
    pending->target = to;
    std::uint64_t id = random_id();
    {
      std::lock_guard lock(mutex_);
      if (stopping_) {
        return Reply::error(Rc::shutting_down, "cell '" + config_.fqcn + "' is stopping");
      }
      pending_[id] = pending;
    }
    wire::Headers all = headers;
    all.emplace_back(std::string(h_ttl), std::to_string(std::max<long>(1, timeout.count())));
    auto sent =
        send(Op::cell_request, id, 0, config_.fqcn, to, topic, all, payload, deadline, stop, &pending->via);
    if (!sent.ok()) {
      forget(id);
      return sent;
    }
    if (payload.size() <= control_bytes) {
      spin_until_ready(*pending, deadline);  // a large request takes long enough to sleep through
    }
    std::unique_lock lock(pending->mutex);
    bool done = pending->done_cv.wait_until(lock, stop, deadline, [&] { return pending->reply.has_value(); });
    if (done) {
      Reply reply = std::move(*pending->reply);
      lock.unlock();
      forget(id);
      return reply;
    }
    lock.unlock();
    forget(id);
    if (stop.stop_requested()) {
      return Reply::error(Rc::cancelled, "request to '" + to + "' cancelled");
    }
    return Reply::error(Rc::timeout,
                        "no reply from '" + to + "' to '" + topic + "' within " + ms_text(timeout));
  }

  Reply notify(const std::string& to, const std::string& topic, const wire::Headers& headers,
               std::span<const std::byte> payload, milliseconds timeout, std::stop_token stop, Lane lane) {
    return send(Op::cell_notify, random_id(), 0, config_.fqcn, to, topic, headers, payload,
                Clock::now() + timeout, stop, nullptr, lane);
  }

  std::vector<TargetReply> broadcast(const std::vector<std::string>& targets, const std::string& topic,
                                     const wire::Headers& headers, std::span<const std::byte> payload,
                                     milliseconds timeout, std::stop_token stop) {
    if (in_inline) {
      std::vector<TargetReply> results;
      for (const auto& target : targets) {
        results.push_back(TargetReply{target, inline_refusal("broadcast()")});
      }
      return results;
    }
    // One thread per target, at most 16 at a time, so a slow link does not hold back the others' sends.
    std::vector<TargetReply> results(targets.size());
    auto deadline = Clock::now() + timeout;
    std::atomic<std::size_t> next{0};
    auto run = [&] {
      for (std::size_t i = next++; i < targets.size(); i = next++) {
        auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
        results[i].target = targets[i];
        results[i].reply = left.count() <= 0
                               ? Reply::error(Rc::timeout, "no time left for '" + targets[i] + "'")
                               : request(targets[i], topic, headers, payload, left, stop);
      }
    };
    std::vector<std::thread> threads;
    std::size_t n = std::min<std::size_t>(16, targets.size());
    for (std::size_t i = 1; i < n; ++i) {
      threads.emplace_back(run);
    }
    run();
    for (auto& t : threads) {
      t.join();
    }
    return results;
  }

  bool wait_parent(milliseconds timeout, std::stop_token stop) {
    std::unique_lock lock(mutex_);
    return parent_cv_.wait_for(lock, stop, timeout, [&] { return parent_ != nullptr || stopping_; }) &&
           parent_ != nullptr;
  }

  std::string parent_error() const {
    std::lock_guard lock(mutex_);
    return parent_ ? std::string() : parent_error_;
  }

  std::vector<PeerInfo> children() const {
    std::lock_guard lock(mutex_);
    std::vector<PeerInfo> out;
    for (const auto& [name, info] : seen_children_) {
      out.push_back(info);
      auto it = children_.find(name);
      if (it != children_.end()) {
        out.back().connected = true;
        out.back().last_contact = wall_time(it->second->last_contact_ms.load());
      }
    }
    return out;
  }

  bool drain(milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    std::vector<std::shared_ptr<Link>> links;
    {
      std::lock_guard lock(mutex_);
      for (auto& [name, link] : children_) {
        links.push_back(link);
      }
      if (parent_) {
        links.push_back(parent_);
      }
    }
    for (auto& link : links) {
      std::unique_lock lock(link->mutex);
      if (!link->changed.wait_until(lock, deadline, [&] {
            return link->closed || (link->control.empty() && link->bulk.empty() && !link->writing);
          })) {
        return false;
      }
    }
    return true;
  }

  void stop() noexcept {
    std::vector<std::shared_ptr<Link>> links;
    {
      std::lock_guard lock(mutex_);
      if (stopped_) {
        return;
      }
      stopped_ = true;
      stopping_ = true;
      for (auto& [name, link] : children_) {
        links.push_back(link);
      }
      if (parent_) {
        links.push_back(parent_);
      }
      if (dialing_) {
        dialing_->cancel();
      }
      for (auto& [id, pending] : pending_) {
        complete(*pending, Reply::error(Rc::shutting_down, "cell '" + config_.fqcn + "' is stopping"));
      }
    }
    parent_cv_.notify_all();
    wake_.notify_all();
    {
      std::lock_guard lock(work_mutex_);  // no waiter misses the flag between its check and its wait
    }
    work_cv_.notify_all();
    work_space_cv_.notify_all();
    for (auto& link : links) {
      close_link(*link, "the cell is stopping");
    }
    if (listener_) {
      listener_->shutdown(milliseconds(500));
    }
    if (connector_.joinable()) {
      connector_.join();
    }
    if (housekeeper_.joinable()) {
      housekeeper_.join();
    }
    for (auto& w : workers_) {
      if (w.joinable()) {
        w.join();
      }
    }
    std::deque<Work> left;
    {
      std::lock_guard lock(work_mutex_);
      left.swap(work_);
      work_bytes_ = 0;
    }
    for (auto& item : left) {
      if (item.sink) {
        item.sink->cancel("cell '" + config_.fqcn + "' is stopping");
      }
    }
  }

 private:
  static std::int64_t now_ms() {
    return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  static std::chrono::system_clock::time_point wall_time(std::int64_t ms) {
    return std::chrono::system_clock::time_point(milliseconds(ms));
  }

  void event(LinkEvent::Kind kind, const std::string& peer, const std::string& detail) {
    if (observer_) {
      try {
        observer_(LinkEvent{kind, peer, detail});
      } catch (...) {
        logger_->warn("cell '" + config_.fqcn + "': a link observer threw; ignored");
      }
    }
  }

  static void complete(Pending& pending, Reply reply) {
    {
      std::lock_guard lock(pending.mutex);
      if (pending.reply) {
        return;
      }
      pending.reply = std::move(reply);
      pending.ready.store(true, std::memory_order_release);
    }
    pending.done_cv.notify_all();
  }

  // A small request's reply often comes back within a hundred microseconds: its caller watches for it that
  // long before it sleeps, sparing the wake-up (a futex call, and a context switch that takes as long as
  // the round trip itself on a virtual machine): a 16-byte round trip took 1.45x a raw gRPC ping-pong
  // with this, 2.1x without. Bounded by spin_bound and the deadline, and by spinners_: at most one caller
  // per two cores spins at a time, so spinning never starves the threads that bring the replies.
  void spin_until_ready(const Pending& pending, Clock::time_point deadline) {
    constexpr auto spin_bound = std::chrono::microseconds(200);
    if (spinners_.fetch_add(1, std::memory_order_relaxed) >= max_spinners_) {
      spinners_.fetch_sub(1, std::memory_order_relaxed);
      return;
    }
    auto until = std::min(deadline, Clock::now() + spin_bound);
    for (int i = 0;; ++i) {
      if (pending.ready.load(std::memory_order_acquire)) {
        break;
      }
      if ((i & 63) == 63 && Clock::now() >= until) {
        break;
      }
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    spinners_.fetch_sub(1, std::memory_order_relaxed);
  }

  Reply inline_refusal(std::string_view call) const {
    return Reply::error(Rc::handler_error, "cell '" + config_.fqcn + "': " + std::string(call) +
                                               " from an inline handler or a sink would wait on the "
                                               "thread that reads its answer; register the topic with "
                                               "Dispatch::workers");
  }

  void forget(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    pending_.erase(id);
  }

  // The link a message to `to` leaves on, or null with the reason.
  std::shared_ptr<Link> route(const std::string& to, std::string& why) {
    std::lock_guard lock(mutex_);
    std::shared_ptr<Link> best;
    for (const auto& [name, link] : children_) {
      if (is_self_or_under(to, name) && (!best || name.size() > best->peer.size())) {
        best = link;
      }
    }
    if (best) {
      return best;
    }
    if (config_.parent.empty() || is_under(to, config_.fqcn)) {
      why = "'" + to + "' is not connected to '" + config_.fqcn + "'";
      return nullptr;
    }
    if (!parent_) {
      why = "'" + config_.fqcn + "' has no link to its parent" +
            (parent_error_.empty() ? std::string() : " (" + parent_error_ + ")");
      return nullptr;
    }
    return parent_;
  }

  // Queues one packet on `link`: bulk packets wait for room (at most until `deadline`), control ones go
  // first.
  Reply enqueue(Link& link, std::string&& packet, bool control, Clock::time_point deadline,
                std::stop_token stop) {
    std::unique_lock lock(link.mutex);
    if (!control) {
      bool room = link.changed.wait_until(lock, stop, deadline, [&] {
        return link.closed || stopping_.load() || link.bulk_bytes < config_.queue_bytes;
      });
      if (!room) {
        if (stop.stop_requested()) {
          return Reply::error(Rc::cancelled, "sending to '" + link.peer + "' cancelled");
        }
        return Reply::error(Rc::timeout, "no room on the link to '" + link.peer + "' in time");
      }
    }
    if (link.closed) {
      return Reply::error(Rc::unreachable,
                          "the link to '" + link.peer + "' closed (" + link.close_reason + ")");
    }
    if (stopping_) {
      return Reply::error(Rc::shutting_down, "cell '" + config_.fqcn + "' is stopping");
    }
    if (control && !link.writing && link.control.empty() && link.bulk.empty() && link.stream != nullptr) {
      // A small packet, nothing queued and nobody writing: this thread writes it itself, sparing a hand-off
      // to the writer thread (which waits meanwhile), the larger part of a small request's round trip. Bulk
      // packets stay with the writer: a relay's reader that wrote them itself let the transport buffer more
      // of a large message (a site relaying 1 GiB peaked 30-60 MiB higher).
      link.writing = true;
      Stream* stream = link.stream;
      lock.unlock();
      bool written = stream->write(packet);
      pool_.give(std::move(packet));
      lock.lock();
      link.writing = false;
      bool more = !link.control.empty() || !link.bulk.empty();
      lock.unlock();
      if (more) {
        link.queued.notify_one();
      }
      link.changed.notify_all();
      if (!written) {
        close_link(link, "write failed");
        return Reply::error(Rc::unreachable, "the link to '" + link.peer + "' broke while writing");
      }
      link.last_write_ms = now_ms();
      return Reply{};
    }
    if (control) {
      link.control.push_back(std::move(packet));
    } else {
      link.bulk_bytes += packet.size();
      link.bulk.push_back(std::move(packet));
    }
    lock.unlock();
    link.queued.notify_one();
    return Reply{};
  }

  // Sends a message: routes it, splits it into frames under the packet cap, queues them in order.
  Reply send(Op op, std::uint64_t msg_id, std::uint64_t req_id, const std::string& from,
             const std::string& to, const std::string& topic, const wire::Headers& headers,
             std::span<const std::byte> payload, Clock::time_point deadline, std::stop_token stop,
             std::weak_ptr<Link>* via, Lane lane = Lane::automatic) {
    if (stopping_) {
      return Reply::error(Rc::shutting_down, "cell '" + config_.fqcn + "' is stopping");
    }
    if (!valid_fqcn(to)) {
      return Reply::error(Rc::unreachable, "'" + to + "' is not a valid FQCN");
    }
    for (const auto& [key, value] : headers) {
      if (key.rfind("cell.", 0) == 0 && key != h_ttl && key != h_rc && key != h_reason) {
        return Reply::error(Rc::malformed, "header '" + key + "' uses the reserved prefix 'cell.'");
      }
    }
    if (payload.size() > config_.max_message_bytes) {
      return Reply::error(Rc::too_big, "a message of " + std::to_string(payload.size()) +
                                           " bytes exceeds max_message_bytes (" +
                                           std::to_string(config_.max_message_bytes) + ")");
    }
    wire::Headers all;
    all.reserve(headers.size() + 2);
    all.emplace_back(std::string(header_from), from);
    all.emplace_back(std::string(header_to), to);
    all.insert(all.end(), headers.begin(), headers.end());
    if (to == config_.fqcn) {
      Message message{from, to, topic, headers, {payload.begin(), payload.end()}};
      deliver(op, msg_id, req_id, std::move(message));
      return Reply{};
    }
    std::string why;
    auto link = route(to, why);
    if (!link) {
      // The way up is closed to this cell (refused at the hello): its requests are unauthenticated.
      bool refused = false;
      {
        std::lock_guard lock(mutex_);
        refused = parent_refused_ && !parent_ && !config_.parent.empty() && !is_under(to, config_.fqcn);
      }
      return Reply::error(refused ? Rc::unauthenticated : Rc::unreachable, why);
    }
    if (via != nullptr) {
      *via = link;
    }
    std::size_t head = wire::encoded_size(topic, wire::encoded_headers_size(all), 0);
    if (head + 1 > config_.packet_bytes) {
      return Reply::error(Rc::too_big, "topic and headers do not fit one packet");
    }
    std::size_t chunk = config_.packet_bytes - head;
    std::uint64_t total = payload.size();
    std::uint32_t chunks = total == 0 ? 1 : static_cast<std::uint32_t>((total + chunk - 1) / chunk);
    for (std::uint32_t i = 0; i < chunks; ++i) {
      wire::FrameHeader fh;
      fh.type = req_id != 0 ? wire::MessageType::reply : wire::MessageType::request;
      fh.op = op;
      fh.msg_id = msg_id;
      fh.req_id = req_id;
      fh.total_len = total;
      fh.chunk_index = i;
      // The control lane: a small single-packet message, unless the sender asked for order. The flag
      // travels in the frame so that relays keep the sender's choice.
      bool control = lane == Lane::automatic && chunks == 1 && head + total <= control_bytes;
      fh.flags = static_cast<std::uint8_t>((i == 0 ? wire::flags::first : 0) |
                                           (i + 1 == chunks ? wire::flags::last : 0) |
                                           (control ? wire::flags::control : 0));
      std::size_t begin = static_cast<std::size_t>(i) * chunk;
      auto part = payload.subspan(std::min<std::size_t>(begin, total),
                                  std::min<std::size_t>(chunk, total - std::min<std::size_t>(begin, total)));
      std::string packet = pool_.take();
      static const wire::Headers none;
      auto encoded = encode_packet(packet, fh, i == 0 ? std::string_view(topic) : std::string_view(),
                                   i == 0 ? all : none, part, limits_);
      if (!encoded) {
        return Reply::error(Rc::malformed, "message to '" + to + "': " + encoded.error().message);
      }
      auto queued = enqueue(*link, std::move(packet), control, deadline, stop);
      if (!queued.ok()) {
        return queued;
      }
    }
    return Reply{};
  }

  // Sends a reply to `origin` for request `req_id`.
  void reply_to(const std::string& origin, std::uint64_t req_id, const Reply& reply,
                Clock::time_point deadline) {
    wire::Headers headers = reply.message.headers;
    headers.emplace_back(std::string(h_rc), std::string(to_string(reply.rc)));
    if (!reply.ok()) {
      headers.emplace_back(std::string(h_reason), reply.reason);
    }
    auto sent = send(Op::cell_reply, random_id(), req_id, config_.fqcn, origin, reply.message.topic, headers,
                     reply.message.payload, deadline, {}, nullptr);
    if (!sent.ok()) {
      logger_->debug("cell '" + config_.fqcn + "': reply to '" + origin + "' not sent: " + sent.reason);
    }
  }

  // --- receiving ---

  // A complete message addressed to this cell (from a link, or sent by this cell to itself): a reply
  // completes its request; anything else goes to the handler threads (with its sink when it was streamed,
  // `streamed` bytes long).
  void deliver(Op op, std::uint64_t msg_id, std::uint64_t req_id, Message message,
               std::shared_ptr<const Topic> topic = nullptr, std::unique_ptr<MessageSink> sink = nullptr,
               std::uint64_t streamed = 0) {
    if (op == Op::cell_reply) {
      std::shared_ptr<Pending> pending;
      {
        std::lock_guard lock(mutex_);
        auto it = pending_.find(req_id);
        if (it != pending_.end()) {
          pending = it->second;
        }
      }
      if (!pending) {
        logger_->debug("cell '" + config_.fqcn + "': late or unknown reply from '" + message.from +
                       "' dropped");
        return;
      }
      Reply reply;
      const auto* rc = message.header(h_rc);
      auto parsed = rc != nullptr ? rc_from_string(*rc) : std::nullopt;
      reply.rc = parsed.value_or(Rc::malformed);
      if (const auto* reason = message.header(h_reason)) {
        reply.reason = *reason;
      } else if (!parsed) {
        reply.reason = "a reply from '" + message.from + "' without a valid cell.rc";
      }
      std::erase_if(message.headers, [](const auto& h) { return h.first.rfind("cell.", 0) == 0; });
      reply.message = std::move(message);
      complete(*pending, std::move(reply));
      return;
    }
    // Bounded: a reader waits (at most stall_timeout) while handlers are behind, so a peer that sends
    // faster than this cell handles is held back by the transport's flow control, not by memory. A streamed
    // message counts with the bytes its sink holds.
    std::size_t size = message.payload.size() + streamed + 256;
    {
      std::unique_lock lock(work_mutex_);
      bool room = work_space_cv_.wait_for(lock, config_.stall_timeout, [&] {
        return stopping_.load() || work_bytes_ == 0 || work_bytes_ + size <= work_limit();
      });
      if (stopping_) {
        lock.unlock();
        if (sink) {
          sink->cancel("cell '" + config_.fqcn + "' is stopping");
        }
        return;
      }
      if (!room) {
        lock.unlock();
        if (sink) {
          sink->cancel("the handlers of '" + config_.fqcn + "' were busy for " +
                       ms_text(config_.stall_timeout));
        }
        logger_->warn("cell '" + config_.fqcn + "': handlers did not take a message from '" + message.from +
                      "' within " + ms_text(config_.stall_timeout) + "; dropped");
        if (op == Op::cell_request) {
          reply_to(message.from, msg_id,
                   Reply::error(Rc::timeout,
                                "'" + config_.fqcn + "' is too busy to handle '" + message.topic + "'"),
                   Clock::now() + config_.stall_timeout);
        }
        return;
      }
      work_bytes_ += size;
      work_.push_back(Work{op, msg_id, std::move(message), size, std::move(topic), std::move(sink)});
    }
    work_cv_.notify_one();
  }

  std::uint64_t work_limit() const {
    return std::max<std::uint64_t>(4 * config_.queue_bytes, 64u << 20);
  }

  struct Work {
    Op op;
    std::uint64_t msg_id;
    Message message;
    std::size_t size = 0;
    std::shared_ptr<const Topic> topic;  // null: looked up by the message's topic
    std::unique_ptr<MessageSink> sink;   // set: the payload was streamed into it
  };

  void work() {
    for (;;) {
      Work item;
      {
        std::unique_lock lock(work_mutex_);
        work_cv_.wait(lock, [&] { return !work_.empty() || stopping_.load(); });
        if (stopping_) {
          return;
        }
        item = std::move(work_.front());
        work_.pop_front();
        work_bytes_ -= item.size;
      }
      work_space_cv_.notify_all();
      serve(item);
    }
  }

  // Runs an application call, turning an exception into rc handler_error.
  template <class Call>
  Reply guarded(const std::string& topic, Call&& call) {
    try {
      return call();
    } catch (const std::exception& e) {
      return Reply::error(Rc::handler_error,
                          "'" + config_.fqcn + "': handler for '" + topic + "' threw: " + e.what());
    } catch (...) {
      return Reply::error(Rc::handler_error, "'" + config_.fqcn + "': handler for '" + topic + "' threw");
    }
  }

  // A whole message given to a sink topic (one this cell sent itself): streamed in one write.
  Reply through_sink(const Topic& topic, Message& message) {
    auto made = topic.sink(message, message.payload.size());
    if (!made || !*made) {
      return Reply::error(Rc::handler_error, "'" + config_.fqcn + "': no sink for '" + message.topic + "'" +
                                                 (made ? std::string() : ": " + made.error().message));
    }
    auto sink = std::move(*made);
    if (auto written = sink->write(message.payload); !written) {
      return Reply::error(Rc::handler_error, "'" + config_.fqcn + "': " + written.error().message);
    }
    message.payload = {};
    return sink->finish(message);
  }

  // Runs a message's handler, or its sink's finish(), and answers a request. On a handler thread, or on a
  // link's reader for an inline topic.
  void serve(Work& item) {
    milliseconds ttl = config_.stall_timeout;
    if (const auto* t = item.message.header(h_ttl)) {
      try {
        ttl = milliseconds(std::clamp<long long>(std::stoll(*t), 1, 24LL * 3600 * 1000));
      } catch (...) {
      }
    }
    auto deadline = Clock::now() + ttl;
    std::erase_if(item.message.headers, [](const auto& h) { return h.first.rfind("cell.", 0) == 0; });
    auto topic = item.topic ? item.topic : topic_of(item.message.topic);
    Reply reply;
    if (item.sink) {
      reply = guarded(item.message.topic, [&] { return item.sink->finish(item.message); });
      item.sink.reset();
    } else if (!topic) {
      reply = Reply::error(Rc::no_handler,
                           "'" + config_.fqcn + "' has no handler for topic '" + item.message.topic + "'");
    } else if (topic->sink) {
      reply = guarded(item.message.topic, [&] { return through_sink(*topic, item.message); });
    } else {
      reply = guarded(item.message.topic, [&] { return topic->handler(item.message); });
    }
    if (item.op == Op::cell_request) {
      if (reply.message.topic.empty()) {
        reply.message.topic = item.message.topic;
      }
      reply_to(item.message.from, item.msg_id, reply, deadline);
    }
  }

  void malformed(Link& link, const std::string& what) {
    logger_->warn("cell '" + config_.fqcn + "': malformed frame from '" + link.peer + "' (" + link.address +
                  "): " + what);
    bool close = false;
    {
      std::lock_guard lock(link.mutex);
      close = ++link.malformed_in_row >= max_malformed_in_row;
    }
    if (close) {
      close_link(link, std::to_string(max_malformed_in_row) + " malformed frames in a row");
    }
  }

  // One frame from `link` (its reader thread). The frame string may be moved on (relayed as is).
  void on_frame(const std::shared_ptr<Link>& link, std::string& bytes) {
    link->last_contact_ms = now_ms();
    auto decoded = decode_packet(bytes_of(bytes), limits_);
    if (!decoded) {
      malformed(*link, decoded.error().message);
      return;
    }
    const auto& packet = *decoded;
    const auto& frame = packet.frame;
    const auto& fh = frame.header;
    {
      std::lock_guard lock(link->mutex);
      link->malformed_in_row = 0;
    }
    if (fh.op == Op::heartbeat) {
      return;
    }
    if (!packet.first()) {
      on_chunk(link, bytes, packet);
      return;
    }
    const std::string& from = *packet.from;
    const std::string& to = *packet.to;
    if (!link->parent && !is_self_or_under(from, link->peer)) {
      // A child speaks only for itself and the cells below it.
      logger_->warn("cell '" + config_.fqcn + "': '" + link->peer + "' sent a message claiming to be from '" +
                    from + "'; dropped");
      return;
    }
    auto now = Clock::now();
    if (to == config_.fqcn) {
      assemble(link, packet, now);
      return;
    }
    // Relay.
    std::string why;
    auto next = route(to, why);
    if (next == link) {
      next = nullptr;
      why = "'" + config_.fqcn + "' has no route to '" + to + "' but back where it came from";
    }
    if (!next) {
      if (fh.op == Op::cell_request) {
        reply_to(from, fh.msg_id, Reply::error(Rc::unreachable, why), now + config_.stall_timeout);
      }
      std::lock_guard lock(link->mutex);
      if ((fh.flags & wire::flags::last) == 0) {
        link->forwards[fh.msg_id] = Link::Forward{{}, 1, true, now};
      }
      return;
    }
    if (fh.op == Op::cell_request) {
      milliseconds ttl = config_.stall_timeout;
      if (const auto* t = frame.header_value(h_ttl)) {
        try {
          ttl = milliseconds(std::clamp<long long>(std::stoll(*t), 1, 24LL * 3600 * 1000));
        } catch (...) {
        }
      }
      std::lock_guard lock(mutex_);
      relays_[fh.msg_id] = RelayEntry{from, next, now + ttl};
    } else if (fh.op == Op::cell_reply) {
      std::lock_guard lock(mutex_);
      relays_.erase(fh.req_id);
    }
    bool last = (fh.flags & wire::flags::last) != 0;
    bool control = last && (fh.flags & wire::flags::control) != 0 && bytes.size() <= control_bytes;
    std::uint64_t msg_id = fh.msg_id;
    if (!last) {
      std::lock_guard lock(link->mutex);
      link->forwards[msg_id] = Link::Forward{next, 1, false, now};
    }
    auto queued = enqueue(*next, std::move(bytes), control, now + config_.stall_timeout, {});
    if (!queued.ok()) {
      relay_failed(link, msg_id, from, fh.op, queued.reason);
    }
  }

  void relay_failed(const std::shared_ptr<Link>& link, std::uint64_t msg_id, const std::string& origin, Op op,
                    const std::string& reason) {
    logger_->warn("cell '" + config_.fqcn + "': relaying a message from '" + origin + "' failed: " + reason);
    {
      std::lock_guard lock(link->mutex);
      auto it = link->forwards.find(msg_id);
      if (it != link->forwards.end()) {
        it->second.dropped = true;
      }
    }
    if (op == Op::cell_request) {
      {
        std::lock_guard lock(mutex_);
        relays_.erase(msg_id);
      }
      reply_to(origin, msg_id, Reply::error(Rc::unreachable, "'" + config_.fqcn + "': " + reason),
               Clock::now() + config_.stall_timeout);
    }
  }

  // A frame after the first of a multi-frame message: appended here, or relayed after its first frame.
  void on_chunk(const std::shared_ptr<Link>& link, std::string& bytes, const Packet& packet) {
    const auto& fh = packet.frame.header;
    std::unique_lock lock(link->mutex);
    if (link->assembler.has(fh.msg_id)) {
      lock.unlock();
      assemble(link, packet, Clock::now());
      return;
    }
    auto it = link->forwards.find(fh.msg_id);
    if (it == link->forwards.end()) {
      lock.unlock();
      logger_->debug("cell '" + config_.fqcn + "': chunk " + std::to_string(fh.chunk_index) +
                     " of unknown msg_id " + std::to_string(fh.msg_id) + " from '" + link->peer +
                     "' dropped");
      return;
    }
    auto& forward = it->second;
    bool last = (fh.flags & wire::flags::last) != 0;
    if (forward.dropped || fh.chunk_index != forward.next_chunk) {
      bool out_of_order = !forward.dropped;
      if (last) {
        link->forwards.erase(it);
      } else {
        forward.dropped = true;
      }
      lock.unlock();
      if (out_of_order) {
        malformed(*link, "msg_id " + std::to_string(fh.msg_id) + ": chunk " + std::to_string(fh.chunk_index) +
                             " out of order");
      }
      return;
    }
    forward.next_chunk++;
    forward.touched = Clock::now();
    auto next = forward.to.lock();
    if (last) {
      link->forwards.erase(it);
    }
    lock.unlock();
    if (!next) {
      return;
    }
    auto queued = enqueue(*next, std::move(bytes), false, Clock::now() + config_.stall_timeout, {});
    if (!queued.ok()) {
      relay_failed(link, fh.msg_id, "a peer", Op::cell_notify, queued.reason);
    }
  }

  // A frame of a message addressed to this cell: assembled and delivered once complete, or streamed into
  // its topic's sink as it comes.
  void assemble(const std::shared_ptr<Link>& link, const Packet& packet, Clock::time_point now) {
    const auto& fh = packet.frame.header;
    std::shared_ptr<const Topic> topic;
    if (packet.first() && fh.op != Op::cell_reply) {
      topic = topic_of(packet.frame.topic);
    }
    std::unique_lock lock(link->mutex);
    auto outcome = link->assembler.add(packet, now, topic && topic->sink);
    if (!outcome) {
      auto in = take_inbound(*link, fh.msg_id);
      lock.unlock();
      if (in) {
        in->cancel(outcome.error().message);
      }
      malformed(*link, outcome.error().message);
      return;
    }
    if (*outcome == Assembler::Outcome::too_big) {
      lock.unlock();
      if (fh.op == Op::cell_request) {
        reply_to(*packet.from, fh.msg_id,
                 Reply::error(Rc::too_big, "'" + config_.fqcn + "' accepts messages up to " +
                                               std::to_string(config_.max_message_bytes) +
                                               " bytes, this has " + std::to_string(fh.total_len)),
                 now + config_.stall_timeout);
      }
      return;
    }
    if (*outcome == Assembler::Outcome::dropped) {
      return;
    }
    bool done = *outcome == Assembler::Outcome::done;
    std::optional<Assembled> whole;
    if (done) {
      whole = link->assembler.take();
    }
    bool opening = topic && topic->sink;
    std::shared_ptr<Inbound> in;
    if (!opening && !packet.first()) {
      in = done ? take_inbound(*link, fh.msg_id) : find_inbound(*link, fh.msg_id);
    }
    lock.unlock();
    // A sink runs without the link's lock: the link's writer (and a reply on this link) go on meanwhile.
    if (opening) {
      in = open_sink(link, packet, topic);
      if (!done) {
        lock.lock();
        if (in) {
          link->inbound[fh.msg_id] = in;
        } else {
          link->assembler.discard(fh.msg_id);
        }
        lock.unlock();
      }
      if (!in) {
        return;
      }
    }
    if (in) {
      std::string why;
      if (!stream_into(*in, packet, why)) {
        if (!done) {
          lock.lock();
          link->assembler.discard(fh.msg_id);
          link->inbound.erase(fh.msg_id);
          lock.unlock();
        }
        if (!why.empty() && in->op == Op::cell_request) {
          reply_to(
              in->from, fh.msg_id,
              Reply::error(Rc::handler_error, "'" + config_.fqcn + "': '" + in->topic_name + "': " + why),
              Clock::now() + config_.stall_timeout);
        }
        return;
      }
    }
    if (!done) {
      return;
    }
    std::unique_ptr<MessageSink> sink;
    if (in) {
      std::lock_guard guard(in->mutex);
      sink = std::move(in->sink);
      topic = in->topic;
      if (!sink) {
        return;  // cancelled meanwhile
      }
    } else if (whole->op != Op::cell_reply && !topic) {
      topic = topic_of(whole->message.topic);
    }
    if (topic && topic->dispatch == Dispatch::inline_reader && whole->op != Op::cell_reply) {
      Work item{whole->op, whole->msg_id, std::move(whole->message), 0, std::move(topic), std::move(sink)};
      std::string name = item.message.topic;  // the handler may move the message's fields out
      auto began = Clock::now();
      {
        InlineScope scope;
        serve(item);
      }
      if (auto held = Clock::now() - began; held > slow_inline) {
        // The contract (cell.hpp, Dispatch::inline_reader) is broken: said, so that it is found.
        logger_->warn("cell '" + config_.fqcn + "': the inline handler of '" + name +
                      "' held the reader of the link to '" + link->peer + "' for " +
                      ms_text(std::chrono::duration_cast<milliseconds>(held)) +
                      "; a handler that blocks belongs on Dispatch::workers");
      }
      return;
    }
    deliver(whole->op, whole->msg_id, whole->req_id, std::move(whole->message), std::move(topic),
            std::move(sink), in ? in->total : 0);
  }

  static std::shared_ptr<Inbound> find_inbound(Link& link, std::uint64_t msg_id) {
    auto it = link.inbound.find(msg_id);
    return it != link.inbound.end() ? it->second : nullptr;
  }
  static std::shared_ptr<Inbound> take_inbound(Link& link, std::uint64_t msg_id) {
    auto it = link.inbound.find(msg_id);
    if (it == link.inbound.end()) {
      return nullptr;
    }
    auto in = std::move(it->second);
    link.inbound.erase(it);
    return in;
  }

  // Opens the sink of a streamed message from its first frame; null (and a request answered) if the
  // factory refused it.
  std::shared_ptr<Inbound> open_sink(const std::shared_ptr<Link>& link, const Packet& packet,
                                     const std::shared_ptr<const Topic>& topic) {
    const auto& fh = packet.frame.header;
    Message head;
    head.from = *packet.from;
    head.to = *packet.to;
    head.topic = std::string(packet.frame.topic);
    head.headers.reserve(packet.frame.headers.size());
    for (const auto& h : packet.frame.headers) {
      if (h.first.rfind("cell.", 0) != 0) {
        head.headers.push_back(h);
      }
    }
    std::string why;
    auto in = std::make_shared<Inbound>();
    in->topic = topic;
    in->total = fh.total_len;
    in->op = fh.op;
    in->from = head.from;
    in->topic_name = head.topic;
    try {
      InlineScope scope;
      auto made = topic->sink(head, fh.total_len);
      if (made && *made) {
        in->sink = std::move(*made);
        return in;
      }
      why = made ? std::string("no sink") : made.error().message;
    } catch (const std::exception& e) {
      why = std::string("its sink factory threw: ") + e.what();
    } catch (...) {
      why = "its sink factory threw";
    }
    logger_->debug("cell '" + config_.fqcn + "': '" + head.topic + "' from '" + link->peer +
                   "' refused: " + why);
    if (fh.op == Op::cell_request) {
      reply_to(head.from, fh.msg_id,
               Reply::error(Rc::handler_error, "'" + config_.fqcn + "': '" + head.topic + "': " + why),
               Clock::now() + config_.stall_timeout);
    }
    return nullptr;
  }

  // Writes a frame's payload into its message's sink; false if the sink failed (`why` says how) or was
  // cancelled meanwhile (`why` empty).
  static bool stream_into(Inbound& in, const Packet& packet, std::string& why) {
    std::lock_guard guard(in.mutex);
    if (!in.sink) {
      return false;
    }
    try {
      InlineScope scope;
      auto written = in.sink->write(packet.frame.payload);
      if (written) {
        return true;
      }
      why = written.error().message;
    } catch (const std::exception& e) {
      why = std::string("its sink threw: ") + e.what();
    } catch (...) {
      why = "its sink threw";
    }
    if (why.empty()) {
      why = "its sink failed";
    }
    in.sink.reset();  // after a failed write, neither finish() nor cancel()
    return false;
  }

  // --- links ---

  void start_writer(const std::shared_ptr<Link>& link) {
    link->last_contact_ms = now_ms();
    link->last_write_ms = now_ms();
    link->writer = std::thread([this, link] {
      for (;;) {
        std::string packet;
        {
          std::unique_lock lock(link->mutex);
          link->queued.wait(lock, [&] {
            return link->closed || (!link->writing && (!link->control.empty() || !link->bulk.empty()));
          });
          if (link->closed) {
            return;
          }
          link->writing = true;
          if (!link->control.empty()) {
            packet = std::move(link->control.front());
            link->control.pop_front();
          } else {
            packet = std::move(link->bulk.front());
            link->bulk.pop_front();
            link->bulk_bytes -= packet.size();
          }
        }
        link->changed.notify_all();
        bool written = link->stream->write(packet);
        pool_.give(std::move(packet));
        {
          std::lock_guard lock(link->mutex);
          link->writing = false;
        }
        link->changed.notify_all();
        if (!written) {
          close_link(*link, "write failed");
          return;
        }
        link->last_write_ms = now_ms();
      }
    });
  }

  // Closes a link: its stream is cancelled, its queues dropped, waiters woken. The writer is joined by the
  // reader thread (finish_link).
  void close_link(Link& link, const std::string& reason) noexcept {
    {
      std::lock_guard lock(link.mutex);
      if (link.closed) {
        return;
      }
      link.closed = true;
      link.close_reason = reason;
      link.control.clear();
      link.bulk.clear();
      link.bulk_bytes = 0;
      if (link.stream != nullptr) {
        link.stream->cancel();
      }
    }
    link.changed.notify_all();
    link.queued.notify_all();
  }

  // After the reader of `link` saw the end: closes it, fails what depended on it, and unregisters it.
  void finish_link(const std::shared_ptr<Link>& link, const std::string& reason) {
    close_link(*link, reason);
    if (link->writer.joinable()) {
      link->writer.join();
    }
    std::vector<std::shared_ptr<Inbound>> cut;
    {
      // A sender writing on its own thread (enqueue) is inside the stream until its write returns, which
      // the cancel above makes prompt: the stream outlives it.
      std::unique_lock lock(link->mutex);
      link->changed.wait(lock, [&] { return !link->writing; });
      link->stream = nullptr;
      link->assembler.clear();
      link->forwards.clear();
      for (auto& [id, in] : link->inbound) {
        cut.push_back(std::move(in));
      }
      link->inbound.clear();
    }
    for (auto& in : cut) {
      in->cancel("the link to '" + link->peer + "' broke: " + reason);
    }
    std::vector<std::shared_ptr<Pending>> broken;
    std::vector<std::pair<std::uint64_t, std::string>> relayed;
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, pending] : pending_) {
        if (pending->via.lock() == link) {
          broken.push_back(pending);
        }
      }
      for (auto it = relays_.begin(); it != relays_.end();) {
        if (it->second.to.lock() == link) {
          relayed.emplace_back(it->first, it->second.origin);
          it = relays_.erase(it);
        } else {
          ++it;
        }
      }
      if (link->parent) {
        if (parent_ == link) {
          parent_.reset();
          parent_error_ = "link to '" + link->peer + "' lost: " + reason;
        }
      } else {
        auto it = children_.find(link->peer);
        if (it != children_.end() && it->second == link) {
          children_.erase(it);
          seen_children_[link->peer].last_contact = wall_time(link->last_contact_ms.load());
        }
      }
    }
    for (auto& pending : broken) {
      complete(*pending, Reply::error(Rc::unreachable, "the link to '" + link->peer + "' on the way to '" +
                                                           pending->target + "' broke: " + reason));
    }
    for (auto& [id, origin] : relayed) {
      reply_to(origin, id,
               Reply::error(Rc::unreachable,
                            "'" + config_.fqcn + "': the link to '" + link->peer + "' broke: " + reason),
               Clock::now() + config_.stall_timeout);
    }
  }

  void read_loop(const std::shared_ptr<Link>& link, Stream& stream) {
    std::string packet;
    for (;;) {
      if (packet.capacity() < 64 * 1024) {
        packet = pool_.take();  // protobuf parses into the capacity it finds
      }
      if (!stream.read(packet)) {
        break;
      }
      on_frame(link, packet);  // may move the packet on (relayed as is)
    }
    pool_.give(std::move(packet));
  }

  // --- accepting children (a gRPC thread per stream) ---

  std::string read_first(Stream& stream, std::string& packet, milliseconds bound, bool& got) {
    // A watchdog cancels the stream if nothing arrives within the bound.
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    std::thread watchdog([&] {
      std::unique_lock lock(m);
      if (!cv.wait_for(lock, bound, [&] { return done || stopping_.load(); }) || stopping_) {
        stream.cancel();
      }
    });
    got = stream.read(packet);
    {
      std::lock_guard lock(m);
      done = true;
    }
    cv.notify_all();
    watchdog.join();
    return got ? std::string() : stream.end_reason();
  }

  void accept(Stream& stream) {
    if (stopping_) {
      return;
    }
    std::string packet;
    bool got = false;
    auto error = read_first(stream, packet, config_.connect_timeout, got);
    if (!got) {
      logger_->info("cell '" + config_.fqcn + "': a connection from " + stream.peer() +
                    " sent no hello within " + ms_text(config_.connect_timeout) + ": " + error);
      return;
    }
    auto decoded = wire::decode_frame(bytes_of(packet), limits_);
    if (!decoded || decoded->header.op != Op::cell_hello) {
      logger_->warn("cell '" + config_.fqcn + "': a connection from " + stream.peer() +
                    " did not start with CELL_HELLO" + (decoded ? "" : ": " + decoded.error().message));
      return;
    }
    PeerClaim claim;
    const auto* from = decoded->header_value(header_from);
    claim.fqcn = from != nullptr ? *from : std::string();
    if (const auto* token = decoded->header_value(h_token)) {
      claim.token = *token;
    }
    claim.address = stream.peer();
    std::optional<std::string> refusal;
    if (settings_.tls) {
      auto verified = verify_peer(settings_.tls->ca, stream.peer_cert_pem());
      if (verified) {
        claim.cert_name = *verified;
      } else {
        refusal = verified.error().message;
      }
    }
    if (refusal) {
      // said below
    } else if (!valid_fqcn(claim.fqcn)) {
      refusal = "'" + claim.fqcn + "' is not a valid FQCN";
    } else if (const auto* version = decoded->header_value(h_version);
               version == nullptr || *version != cell_version) {
      refusal = "it speaks cell protocol version " + (version != nullptr ? *version : std::string("(none)")) +
                ", this cell speaks " + std::string(cell_version);
    } else {
      Admission admission;
      {
        std::lock_guard lock(mutex_);
        admission = admission_;
      }
      refusal = admission ? admission(claim) : default_admission(claim);
    }
    if (refusal) {
      logger_->warn("cell '" + config_.fqcn + "': refused '" + claim.fqcn + "' from " + claim.address + ": " +
                    *refusal);
      event(LinkEvent::Kind::refused, claim.fqcn, *refusal);
      std::string out;
      wire::FrameHeader fh;
      fh.op = Op::cell_refused;
      fh.msg_id = random_id();
      if (encode_packet(out, fh, {},
                        {{std::string(header_from), config_.fqcn}, {std::string(h_reason), *refusal}}, {},
                        limits_)) {
        stream.write(out);
      }
      return;
    }
    auto link = std::make_shared<Link>(config_.max_message_bytes);
    link->peer = claim.fqcn;
    link->address = claim.address;
    link->stream = &stream;
    std::shared_ptr<Link> replaced;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) {
        return;
      }
      auto it = children_.find(claim.fqcn);
      if (it != children_.end()) {
        replaced = it->second;
      }
      children_[claim.fqcn] = link;
      auto& seen = seen_children_[claim.fqcn];
      seen.fqcn = claim.fqcn;
      seen.address = claim.address;
    }
    if (replaced) {
      logger_->info("cell '" + config_.fqcn + "': '" + claim.fqcn + "' connected again from " +
                    claim.address + "; its earlier link is closed");
      close_link(*replaced, "replaced by a new link");
    }
    std::string welcome;
    wire::FrameHeader fh;
    fh.op = Op::cell_welcome;
    fh.msg_id = random_id();
    if (!encode_packet(
            welcome, fh, {},
            {{std::string(header_from), config_.fqcn}, {std::string(h_version), std::string(cell_version)}},
            {}, limits_) ||
        !stream.write(welcome)) {
      finish_link(link, "the welcome could not be sent");
      return;
    }
    logger_->info("cell '" + config_.fqcn + "': '" + claim.fqcn + "' joined from " + claim.address);
    event(LinkEvent::Kind::child_joined, claim.fqcn, claim.address);
    start_writer(link);
    read_loop(link, stream);
    auto reason = stream.end_reason();
    finish_link(link, reason);
    logger_->info("cell '" + config_.fqcn + "': '" + claim.fqcn + "' left: " + link->close_reason);
    event(LinkEvent::Kind::child_left, claim.fqcn, link->close_reason);
  }

  // --- connecting to the parent ---

  void connect_loop() {
    auto backoff = config_.backoff_initial;
    std::mt19937_64 jitter(random_id());
    while (!stopping_) {
      auto attempt = connect_once();
      if (stopping_) {
        break;
      }
      if (attempt == Attempt::ran) {
        backoff = config_.backoff_initial;
      }
      // Back-off with jitter: a uniform draw in [backoff/2, backoff], then double, up to backoff_max.
      std::uniform_int_distribution<long> draw(backoff.count() / 2, std::max<long>(1, backoff.count()));
      auto wait = milliseconds(draw(jitter));
      std::unique_lock lock(mutex_);
      wake_.wait_for(lock, wait, [&] { return stopping_.load(); });
      backoff = std::min(config_.backoff_max, backoff * 2);
    }
  }

  enum class Attempt { failed, ran };

  void set_parent_error(const std::string& error, bool refused) {
    {
      std::lock_guard lock(mutex_);
      if (parent_error_ == error) {
        return;  // said once per cause, not at every retry
      }
      parent_error_ = error;
    }
    if (refused) {
      logger_->error("cell '" + config_.fqcn + "': " + error);
    } else {
      logger_->warn("cell '" + config_.fqcn + "': " + error);
    }
  }

  Attempt connect_once() {
    auto dialed = dial(config_.parent, config_.parent_name, settings_);
    if (!dialed) {
      set_parent_error("cannot reach the parent at " + config_.parent + ": " + dialed.error().message, false);
      return Attempt::failed;
    }
    std::shared_ptr<Stream> stream(std::move(*dialed));
    {
      std::lock_guard lock(mutex_);
      if (stopping_) {
        return Attempt::failed;
      }
      dialing_ = stream;
    }
    auto clear_dialing = [&] {
      std::lock_guard lock(mutex_);
      dialing_.reset();
    };
    // The hello and the answer, bounded by connect_timeout (a watchdog cancels the stream).
    std::string hello;
    wire::FrameHeader fh;
    fh.op = Op::cell_hello;
    fh.msg_id = random_id();
    wire::Headers headers{{std::string(header_from), config_.fqcn},
                          {std::string(h_version), std::string(cell_version)}};
    if (!config_.token.empty()) {
      headers.emplace_back(std::string(h_token), config_.token);
    }
    if (!encode_packet(hello, fh, {}, headers, {}, limits_)) {
      clear_dialing();
      return Attempt::failed;
    }
    std::mutex m;
    std::condition_variable cv;
    bool answered = false;
    std::thread watchdog([&] {
      std::unique_lock lock(m);
      if (!cv.wait_for(lock, config_.connect_timeout, [&] { return answered || stopping_.load(); }) ||
          stopping_) {
        stream->cancel();
      }
    });
    std::string answer;
    bool ok = stream->write(hello) && stream->read(answer);
    {
      std::lock_guard lock(m);
      answered = true;
    }
    cv.notify_all();
    watchdog.join();
    if (!ok) {
      auto reason = stream->end_reason();
      clear_dialing();
      if (!stopping_) {
        set_parent_error("cannot reach the parent at " + config_.parent + " within " +
                             ms_text(config_.connect_timeout) + ": " + reason,
                         false);
      }
      return Attempt::failed;
    }
    auto decoded = wire::decode_frame(bytes_of(answer), limits_);
    if (!decoded || (decoded->header.op != Op::cell_welcome && decoded->header.op != Op::cell_refused)) {
      clear_dialing();
      set_parent_error("the parent at " + config_.parent + " answered the hello with something else", true);
      return Attempt::failed;
    }
    const auto* parent_name = decoded->header_value(header_from);
    if (decoded->header.op == Op::cell_refused) {
      const auto* reason = decoded->header_value(h_reason);
      clear_dialing();
      std::string text = "refused by '" + (parent_name != nullptr ? *parent_name : config_.parent) +
                         "': " + (reason != nullptr ? *reason : std::string("no reason given"));
      event(LinkEvent::Kind::refused, parent_name != nullptr ? *parent_name : config_.parent, text);
      {
        std::lock_guard lock(mutex_);
        parent_refused_ = true;
      }
      set_parent_error(text, true);
      return Attempt::failed;
    }
    auto link = std::make_shared<Link>(config_.max_message_bytes);
    link->peer = parent_name != nullptr ? *parent_name : config_.parent;
    link->address = config_.parent;
    link->parent = true;
    link->stream = stream.get();
    {
      std::lock_guard lock(mutex_);
      dialing_.reset();
      if (stopping_) {
        return Attempt::failed;
      }
      parent_ = link;
      parent_error_.clear();
      parent_refused_ = false;
    }
    parent_cv_.notify_all();
    logger_->info("cell '" + config_.fqcn + "': linked to '" + link->peer + "' at " + config_.parent);
    event(LinkEvent::Kind::parent_up, link->peer, config_.parent);
    start_writer(link);
    read_loop(link, *stream);
    auto reason = stopping_ ? std::string("the cell is stopping") : stream->end_reason();
    finish_link(link, reason);
    if (!stopping_) {
      logger_->warn("cell '" + config_.fqcn + "': link to '" + link->peer + "' lost: " + reason);
    }
    event(LinkEvent::Kind::parent_down, link->peer, reason);
    return Attempt::ran;
  }

  // --- housekeeping: heartbeats to the parent, stale partial messages, expired relay entries ---

  void housekeep() {
    auto tick = std::clamp(config_.keepalive / 4, milliseconds(50), milliseconds(1000));
    while (true) {
      {
        std::unique_lock lock(mutex_);
        if (wake_.wait_for(lock, tick, [&] { return stopping_.load(); })) {
          return;
        }
      }
      auto now = Clock::now();
      std::vector<std::shared_ptr<Link>> links;
      std::shared_ptr<Link> parent;
      {
        std::lock_guard lock(mutex_);
        for (auto it = relays_.begin(); it != relays_.end();) {
          it = it->second.expiry < now ? relays_.erase(it) : std::next(it);
        }
        for (auto& [name, link] : children_) {
          links.push_back(link);
        }
        parent = parent_;
      }
      if (parent) {
        links.push_back(parent);
        if (now_ms() - parent->last_write_ms.load() >= config_.keepalive.count()) {
          std::string beat;
          wire::FrameHeader fh;
          fh.op = Op::heartbeat;
          fh.msg_id = random_id();
          if (encode_packet(beat, fh, {}, {}, {}, limits_)) {
            enqueue(*parent, std::move(beat), true, now, {});
          }
        }
      }
      for (auto& link : links) {
        std::vector<std::shared_ptr<Inbound>> stale;
        {
          std::lock_guard lock(link->mutex);
          for (auto id : link->assembler.prune(now - config_.stall_timeout)) {
            if (auto in = take_inbound(*link, id)) {
              stale.push_back(std::move(in));
            }
          }
          std::erase_if(link->forwards,
                        [&](const auto& p) { return now - p.second.touched > config_.stall_timeout; });
        }
        for (auto& in : stale) {
          in->cancel("no frame of it from '" + link->peer + "' for " + ms_text(config_.stall_timeout));
        }
      }
    }
  }

  Config config_;
  std::shared_ptr<Logger> logger_;
  LinkObserver observer_;
  wire::Limits limits_;
  TransportSettings settings_;

  PacketPool pool_{8};
  std::atomic<int> spinners_{0};  // callers watching for their reply (spin_until_ready)
  const int max_spinners_ = static_cast<int>(std::max(1u, std::thread::hardware_concurrency() / 2));
  mutable std::mutex mutex_;
  std::condition_variable_any parent_cv_;
  std::condition_variable_any wake_;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  std::unique_ptr<Listener> listener_;
  std::thread connector_;
  std::thread housekeeper_;
  std::shared_ptr<Stream> dialing_;
  std::shared_ptr<Link> parent_;
  std::string parent_error_ = "not connected yet";
  bool parent_refused_ = false;  // the parent's last answer was CELL_REFUSED
  std::map<std::string, std::shared_ptr<Link>> children_;
  std::map<std::string, PeerInfo> seen_children_;
  std::map<std::string, std::shared_ptr<const Topic>, std::less<>> handlers_;
  std::unordered_map<std::uint64_t, std::shared_ptr<Pending>> pending_;
  std::unordered_map<std::uint64_t, RelayEntry> relays_;
  Admission admission_;
  std::set<std::string> allowed_;
  std::map<std::string, std::string> job_tokens_;

  std::mutex work_mutex_;
  std::condition_variable work_cv_;
  std::condition_variable work_space_cv_;
  std::deque<Work> work_;
  std::uint64_t work_bytes_ = 0;
  std::vector<std::thread> workers_;
};

// ---------------------------------------------------------------------------------------------------------

Result<std::unique_ptr<Cell>> Cell::start(Config config, std::shared_ptr<Logger> logger,
                                          LinkObserver observer) {
  auto impl = std::make_unique<CellImpl>(std::move(config), std::move(logger), std::move(observer));
  if (auto started = impl->start(); !started) {
    return fail(std::move(started.error()));
  }
  return std::unique_ptr<Cell>(new Cell(std::move(impl)));
}

Cell::Cell(std::unique_ptr<CellImpl> impl) : impl_(std::move(impl)) {}
Cell::~Cell() {
  stop();
}

const std::string& Cell::fqcn() const noexcept {
  return impl_->fqcn();
}
std::string Cell::listen_address() const {
  return impl_->listen_address();
}
void Cell::set_admission(Admission admission) {
  impl_->set_admission(std::move(admission));
}
void Cell::set_allowed_children(std::vector<std::string> names) {
  impl_->set_allowed_children(std::move(names));
}
void Cell::admit_job(const std::string& job_id, const std::string& token) {
  impl_->admit_job(job_id, token);
}
void Cell::revoke_job(const std::string& job_id) {
  impl_->revoke_job(job_id);
}
void Cell::handle(const std::string& topic, Handler handler, Dispatch dispatch) {
  impl_->handle(topic, std::move(handler), dispatch);
}
void Cell::handle_stream(const std::string& topic, SinkFactory factory, Dispatch dispatch) {
  impl_->handle_stream(topic, std::move(factory), dispatch);
}
Reply Cell::request(const std::string& to, const std::string& topic, const wire::Headers& headers,
                    std::span<const std::byte> payload, std::chrono::milliseconds timeout,
                    std::stop_token stop) {
  return impl_->request(to, topic, headers, payload, timeout, std::move(stop));
}
Reply Cell::notify(const std::string& to, const std::string& topic, const wire::Headers& headers,
                   std::span<const std::byte> payload, std::chrono::milliseconds timeout,
                   std::stop_token stop, Lane lane) {
  return impl_->notify(to, topic, headers, payload, timeout, std::move(stop), lane);
}
std::vector<TargetReply> Cell::broadcast(const std::vector<std::string>& targets, const std::string& topic,
                                         const wire::Headers& headers, std::span<const std::byte> payload,
                                         std::chrono::milliseconds timeout, std::stop_token stop) {
  return impl_->broadcast(targets, topic, headers, payload, timeout, std::move(stop));
}
bool Cell::wait_parent(std::chrono::milliseconds timeout, std::stop_token stop) {
  return impl_->wait_parent(timeout, std::move(stop));
}
std::string Cell::parent_error() const {
  return impl_->parent_error();
}
std::vector<PeerInfo> Cell::children() const {
  return impl_->children();
}
bool Cell::drain(std::chrono::milliseconds timeout) {
  return impl_->drain(timeout);
}
void Cell::stop() noexcept {
  if (impl_) {
    impl_->stop();
  }
}

}  // namespace ember::cell
