// pipe.cell: frames between a client job and its trainer over the cell network, for a trainer on another
// host or in a container. Each end is a cell of its own:
//   - through a site (site_address set): the job end joins the site's cell listener as
//     "<site>.<job_id>.pipe-<channel>" and the trainer as "<site>.<job_id>.<channel>", both with the job's
//     cell token (token_file); the site routes between them, and its admission (certificate name and token)
//     keeps processes of other jobs out;
//   - self-hosted (no site_address): the job end listens itself (listen, loopback unless TLS files are
//     given) and admits only the one trainer name, whose first frame the session screens (its HELLO token).
// Frames travel as cell messages on the ordered lane, so they arrive whole, in order, or not at all.
// A frame is streamed as it arrives (Cell::handle_stream) into a buffer the session handed back with its
// previous frame (receive_into), so a busy pipe reuses the same memory instead of gathering every frame
// into fresh pages.

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>

#include <sys/stat.h>

#include <ember/job.hpp>
#include <ember/pipe.hpp>
#include <ember/plugin.hpp>

#include "cell/cell.hpp"

namespace ember::cell_pipe {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

constexpr const char* frame_topic = "pipe.frame";
constexpr const char* close_topic = "pipe.close";
constexpr const char* attach_topic = "pipe.attach";  // the trainer end joined (sent once, first)
constexpr std::uint64_t inbox_bytes = 64u << 20;  // frames received but not yet read, before the sender waits
constexpr std::size_t spare_buffers = 2;          // frame buffers kept for reuse
constexpr std::size_t spare_max = 64u << 20;      // the largest buffer kept

struct Settings {
  std::string site;
  std::string job_id;
  std::string channel;
  std::string site_address;  // empty: self-hosted
  std::string listen;
  std::string server_name;  // the name in the certificate of what the trainer connects to
  std::optional<cell::TlsFiles> tls;
  std::string token_file;
  std::uint32_t packet_bytes = 4u << 20;
  milliseconds connect_timeout{5000};
};

std::span<const std::byte> as_span(const std::vector<std::byte>& v) {
  return {v.data(), v.size()};
}

Result<std::string> read_token(const std::string& path) {
  if (path.empty()) {
    return std::string();
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return fail(Errc::io_error, "token_file " + path + ": cannot be read");
  }
  if ((st.st_mode & 077) != 0) {
    return fail(Errc::invalid_option, "token_file " + path + " is readable by others; it must be 0600");
  }
  std::ifstream in(path);
  std::string token;
  std::getline(in, token);
  if (token.empty()) {
    return fail(Errc::invalid_option, "token_file " + path + " is empty");
  }
  return token;
}

// One end: a cell, and the frames the peer sent that were not read yet.
class CellEndpoint final : public PipeEndpoint {
 public:
  CellEndpoint(std::string peer, PipeSide side, PeerAdmission admit)
      : peer_(std::move(peer)), side_(side), admit_(std::move(admit)) {}
  ~CellEndpoint() override { close(); }

  cell::Cell& attach(std::unique_ptr<cell::Cell> cell) {
    cell_ = std::move(cell);
    cell_->handle_stream(frame_topic, [this](const cell::Message& head, std::uint64_t size) {
      return open_frame(head, size);
    });
    cell_->handle(attach_topic, [this](const cell::Message& m) {
      // Without a screen, the trainer is there once it joined; with one, once its first frame passed.
      if (m.from == peer_ && !admit_) {
        std::lock_guard lock(mutex_);
        attached_ = true;
        changed_.notify_all();
      }
      return cell::Reply{};
    });
    cell_->handle(close_topic, [this](const cell::Message& m) {
      std::lock_guard guard(mutex_);
      // A would-be peer the screen refused (a stranger under the trainer's name) does not end the pipe.
      if (m.from == peer_ && (side_ == PipeSide::trainer || attached_)) {
        peer_closed_ = true;
        changed_.notify_all();
      }
      return cell::Reply{};
    });
    return *cell_;
  }

  Result<void> send(std::span<const std::byte> frame, milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    if (side_ == PipeSide::job) {
      // A job end sends once its trainer is there (its first frame came).
      std::unique_lock lock(mutex_);
      if (!changed_.wait_until(lock, deadline, [&] { return attached_ || closed_; })) {
        return fail(Errc::timeout, "pipe.cell: no trainer attached within " +
                                       std::to_string(timeout.count()) + " ms (" + peer_ + ")");
      }
    }
    {
      std::lock_guard lock(mutex_);
      if (closed_) {
        return fail(Errc::closed, "pipe.cell: this end is closed");
      }
      if (peer_closed_) {
        return fail(Errc::closed, "pipe.cell: '" + peer_ + "' has closed");
      }
    }
    auto left =
        std::max(1ms, std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now()));
    auto sent = cell_->notify(peer_, frame_topic, {}, frame, left, stop_.get_token(), cell::Lane::ordered);
    if (sent.ok()) {
      return ok();
    }
    if (sent.rc == cell::Rc::timeout) {
      return fail(Errc::timeout, "pipe.cell: " + sent.reason);
    }
    return fail(Errc::closed, "pipe.cell: " + sent.reason);
  }

  Result<bool> receive_into(std::vector<std::byte>& frame, milliseconds timeout) override {
    auto got = receive(timeout);
    if (!got) {
      return fail(std::move(got.error()));
    }
    if (!*got) {
      return false;
    }
    give_spare(std::move(frame));  // the caller's last frame: the next one arriving fills it
    frame = std::move(**got);
    return true;
  }

  Result<std::optional<std::vector<std::byte>>> receive(milliseconds timeout) override {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, timeout, [&] { return !inbox_.empty() || closed_ || peer_closed_; });
    if (!inbox_.empty()) {
      auto frame = std::move(inbox_.front());
      inbox_.pop_front();
      queued_ -= frame.size();
      changed_.notify_all();
      return std::optional<std::vector<std::byte>>(std::move(frame));
    }
    if (closed_) {
      return fail(Errc::closed, "pipe.cell: this end is closed");
    }
    if (peer_closed_) {
      return fail(Errc::closed, "pipe.cell: '" + peer_ + "' has closed");
    }
    return std::optional<std::vector<std::byte>>();
  }

  void close() noexcept override {
    {
      std::lock_guard lock(mutex_);
      if (closed_) {
        return;
      }
      closed_ = true;
      changed_.notify_all();
    }
    stop_.request_stop();
    if (cell_) {
      // Best effort, bounded: the peer also learns of the end from its session when this is lost.
      // Behind the frames already sent (ordered), and written out before the links close.
      cell_->notify(peer_, close_topic, {}, {}, 200ms, {}, cell::Lane::ordered);
      cell_->drain(1s);
      cell_->stop();
    }
  }

  std::string describe() const override {
    return "cell:" + (cell_ ? cell_->fqcn() : std::string("?")) + " peer " + peer_;
  }

 private:
  // Takes a frame's bytes as they arrive (on the cell's reader thread), and hands the frame over once
  // whole (on its handler thread: one, so frames keep their order).
  class FrameSink final : public cell::MessageSink {
   public:
    FrameSink(CellEndpoint& end, std::vector<std::byte> buffer, bool stranger)
        : end_(end), buffer_(std::move(buffer)), stranger_(stranger) {}
    Result<void> write(std::span<const std::byte> bytes) override {
      if (!stranger_) {
        buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
      }
      return ok();
    }
    cell::Reply finish(cell::Message&) override {
      if (stranger_) {
        return cell::Reply::error(cell::Rc::unauthenticated,
                                  "pipe.cell: frames are taken from '" + end_.peer_ + "' only");
      }
      return end_.on_frame(std::move(buffer_));
    }
    void cancel(const std::string&) noexcept override { end_.give_spare(std::move(buffer_)); }

   private:
    CellEndpoint& end_;
    std::vector<std::byte> buffer_;
    bool stranger_;
  };

  Result<std::unique_ptr<cell::MessageSink>> open_frame(const cell::Message& head, std::uint64_t size) {
    bool stranger = head.from != peer_;  // its bytes are dropped; finish() says why
    std::vector<std::byte> buffer;
    if (!stranger) {
      buffer = take_spare();
      buffer.clear();
      // Whole up to 1 GiB (address space, touched as it fills), so a large frame is not copied again each
      // time its buffer doubles.
      buffer.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(size, 1u << 30)));
    }
    return std::unique_ptr<cell::MessageSink>(new FrameSink(*this, std::move(buffer), stranger));
  }

  std::vector<std::byte> take_spare() {
    std::lock_guard lock(spare_mutex_);
    if (spares_.empty()) {
      return {};
    }
    auto buffer = std::move(spares_.back());
    spares_.pop_back();
    return buffer;
  }
  void give_spare(std::vector<std::byte>&& buffer) noexcept {
    if (buffer.capacity() < 64 * 1024 || buffer.capacity() > spare_max) {
      return;
    }
    std::lock_guard lock(spare_mutex_);
    if (spares_.size() < spare_buffers) {
      spares_.push_back(std::move(buffer));
    }
  }

  cell::Reply on_frame(std::vector<std::byte> payload) {
    std::unique_lock lock(mutex_);
    if (side_ == PipeSide::job && !attached_) {
      if (admit_ && !admit_(as_span(payload))) {
        // As a socket drops a connection it does not admit: the would-be peer is told the pipe is closed
        // to it, so it gives up at once instead of waiting for an answer.
        lock.unlock();
        cell_->notify(peer_, close_topic, {{"reason", "not admitted"}}, {}, 1s, {}, cell::Lane::ordered);
        return cell::Reply::error(cell::Rc::unauthenticated, "pipe.cell: the first frame was not admitted");
      }
      attached_ = true;
    }
    // Held back while the reader is behind (the cell's handler waits, and the transport pushes back).
    changed_.wait(lock, [&] { return closed_ || queued_ == 0 || queued_ + payload.size() <= inbox_bytes; });
    if (closed_) {
      return cell::Reply{};
    }
    queued_ += payload.size();
    inbox_.push_back(std::move(payload));
    changed_.notify_all();
    return cell::Reply{};
  }

  std::string peer_;
  PipeSide side_;
  PeerAdmission admit_;
  std::unique_ptr<cell::Cell> cell_;
  std::stop_source stop_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::vector<std::byte>> inbox_;
  std::mutex spare_mutex_;
  std::vector<std::vector<std::byte>> spares_;
  std::uint64_t queued_ = 0;
  bool attached_ = false;
  bool closed_ = false;
  bool peer_closed_ = false;
};

// "cell://HOST:PORT/<job end fqcn>/<trainer fqcn>"
struct CellAddress {
  std::string host_port;
  std::string job_end;
  std::string trainer;

  std::string to_string() const { return "cell://" + host_port + "/" + job_end + "/" + trainer; }

  static Result<CellAddress> parse(const std::string& text) {
    constexpr std::string_view scheme = "cell://";
    if (text.rfind(scheme, 0) != 0) {
      return fail(Errc::invalid_option, "'" + text + "' is not a cell:// address");
    }
    auto rest = text.substr(scheme.size());
    auto a = rest.find('/');
    auto b = a == std::string::npos ? std::string::npos : rest.find('/', a + 1);
    if (a == std::string::npos || b == std::string::npos) {
      return fail(Errc::invalid_option, "'" + text + "' is not cell://HOST:PORT/JOB_END/TRAINER");
    }
    CellAddress out{rest.substr(0, a), rest.substr(a + 1, b - a - 1), rest.substr(b + 1)};
    if (!cell::valid_fqcn(out.job_end) || !cell::valid_fqcn(out.trainer) || out.host_port.empty()) {
      return fail(Errc::invalid_option, "'" + text + "' names an invalid cell");
    }
    return out;
  }
};

bool loopback(const std::string& host_port) {
  return host_port.rfind("127.", 0) == 0 || host_port.rfind("[::1]", 0) == 0 ||
         host_port.rfind("localhost:", 0) == 0;
}

class CellPipe final : public Pipe {
 public:
  CellPipe(const ComponentContext& context, Settings settings, std::string address_option)
      : logger_(context.logger_ptr()),
        settings_(std::move(settings)),
        address_option_(std::move(address_option)) {}

  static Result<std::unique_ptr<CellPipe>> create(const ComponentContext& context) {
    const auto& o = context.options();
    const auto* job = context.registry().job();
    Settings s;
    s.site = !o.string("site").empty()              ? o.string("site")
             : job != nullptr && !job->site.empty() ? job->site
                                                    : std::string("local");
    s.job_id = !o.string("job_id").empty()              ? o.string("job_id")
               : job != nullptr && !job->job_id.empty() ? job->job_id
                                                        : context.instance();
    s.channel = o.string("channel");
    s.site_address = o.string("site_address");
    s.listen = o.string("listen");
    s.server_name = o.string("server_name");
    s.token_file = o.string("token_file");
    s.packet_bytes = static_cast<std::uint32_t>(o.integer("packet_bytes"));
    s.connect_timeout = o.duration("connect_timeout");
    auto where = [&](const char* option) {
      return "pipe.cell '" + context.instance() + "': option '" + option + "': ";
    };
    // Names become parts of FQCNs: the job id's dots and other characters are mapped to '_'.
    for (auto* part : {&s.site, &s.job_id}) {
      std::replace_if(
          part->begin(), part->end(),
          [](char c) { return !(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'); }, '_');
    }
    if (!cell::valid_fqcn(s.channel) || s.channel.find('.') != std::string::npos) {
      return fail(Errc::invalid_option,
                  where("channel") + "'" + s.channel + "' must be one name part (letters, digits, '_', '-')");
    }
    const auto& ca = o.string("ca");
    const auto& cert = o.string("cert");
    const auto& key = o.string("key");
    if (!ca.empty() || !cert.empty() || !key.empty()) {
      if (ca.empty() || cert.empty() || key.empty()) {
        return fail(Errc::invalid_option, where("ca") + "ca, cert and key are given together or not at all");
      }
      s.tls = cell::TlsFiles{ca, cert, key};
    }
    if (!s.tls && s.site_address.empty() && !loopback(s.listen)) {
      return fail(Errc::invalid_option,
                  where("listen") + s.listen +
                      " is not a loopback address; without TLS files (ca, cert, key) the "
                      "job end listens on loopback only");
    }
    if (!s.tls && !s.site_address.empty() && !loopback(s.site_address) && !o.boolean("insecure")) {
      return fail(Errc::invalid_option,
                  where("site_address") + s.site_address +
                      " is not loopback: give TLS files (ca, cert, key), or set insecure = "
                      "true to send frames in clear text");
    }
    return std::make_unique<CellPipe>(context, std::move(s), o.string("address"));
  }

  Result<std::unique_ptr<PipeEndpoint>> open(PipeSide side, milliseconds timeout,
                                             const PeerAdmission& admit) override {
    auto token = read_token(settings_.token_file);
    if (!token) {
      return fail(std::move(token.error()));
    }
    cell::Config config;
    config.packet_bytes = settings_.packet_bytes;
    config.tls = settings_.tls;
    config.insecure = !settings_.tls;
    config.connect_timeout = settings_.connect_timeout;
    config.handler_threads = 1;  // one at a time: frames are handed over in the order they came
    config.token = *token;
    config.backoff_initial = 100ms;
    config.backoff_max = 1000ms;
    std::string trainer = settings_.site + "." + settings_.job_id + "." + settings_.channel;
    if (side == PipeSide::job) {
      CellAddress address;
      address.trainer = trainer;
      if (settings_.site_address.empty()) {
        config.fqcn = settings_.site + "." + settings_.job_id;
        config.listen = settings_.listen;
      } else {
        config.fqcn = settings_.site + "." + settings_.job_id + ".pipe-" + settings_.channel;
        config.parent = settings_.site_address;
        config.parent_name = settings_.server_name.empty() ? settings_.site : settings_.server_name;
      }
      auto endpoint = std::make_unique<CellEndpoint>(trainer, side, admit);
      auto started = cell::Cell::start(config, logger_);
      if (!started) {
        return fail(Errc::io_error, "pipe.cell: " + started.error().message);
      }
      auto& c = endpoint->attach(std::move(*started));
      if (settings_.site_address.empty()) {
        // Only the expected trainer may join; its HELLO token is checked by the session (admit).
        c.set_admission([trainer](const cell::PeerClaim& claim) -> std::optional<std::string> {
          if (claim.fqcn != trainer) {
            return "only '" + trainer + "' may join this pipe";
          }
          return std::nullopt;
        });
        address.host_port = c.listen_address();
      } else {
        if (!c.wait_parent(timeout)) {
          return fail(Errc::timeout, "pipe.cell: cannot join the site at " + settings_.site_address + ": " +
                                         c.parent_error());
        }
        address.host_port = settings_.site_address;
      }
      address.job_end = c.fqcn();
      {
        std::lock_guard lock(mutex_);
        current_ = address.to_string();
      }
      return std::unique_ptr<PipeEndpoint>(std::move(endpoint));
    }
    // The trainer end: joins where the job end's address says.
    auto text = address_option_;
    if (text.empty()) {
      std::lock_guard lock(mutex_);
      text = current_;
    }
    auto address = CellAddress::parse(text);
    if (!address) {
      return fail(Errc::invalid_option, "pipe.cell: option 'address': " + address.error().message);
    }
    config.fqcn = address->trainer;
    config.parent = address->host_port;
    config.parent_name = settings_.server_name.empty() ? settings_.site : settings_.server_name;
    if (settings_.site_address.empty() && settings_.tls) {
      config.parent_name = address->trainer.substr(0, address->trainer.find('.'));
    }
    auto endpoint = std::make_unique<CellEndpoint>(address->job_end, side, PeerAdmission{});
    auto started = cell::Cell::start(config, logger_);
    if (!started) {
      return fail(Errc::io_error, "pipe.cell: " + started.error().message);
    }
    auto& c = endpoint->attach(std::move(*started));  // handlers first: frames may follow the join at once
    if (!c.wait_parent(timeout)) {
      return fail(Errc::timeout, "pipe.cell: cannot join '" + address->job_end + "' at " +
                                     address->host_port + " within " + std::to_string(timeout.count()) +
                                     " ms: " + c.parent_error());
    }
    auto said = c.notify(address->job_end, attach_topic, {}, {}, timeout, {}, cell::Lane::ordered);
    if (!said.ok()) {
      return fail(Errc::closed, "pipe.cell: cannot reach '" + address->job_end + "': " + said.reason);
    }
    return std::unique_ptr<PipeEndpoint>(std::move(endpoint));
  }

  std::string address() const override {
    std::lock_guard lock(mutex_);
    return current_;
  }

 private:
  std::shared_ptr<Logger> logger_;
  Settings settings_;
  std::string address_option_;
  mutable std::mutex mutex_;
  std::string current_;
};

constexpr OptionSpec cell_options[] = {
    {"address", OptionType::string, "",
     "where the trainer end joins: cell://HOST:PORT/JOB_END/TRAINER, as the job end's address() gives it "
     "(set "
     "by the executor; leave empty in a job file)"},
    {"site_address", OptionType::string, "",
     "HOST:PORT of the site's cell listener to join (empty: the job end listens itself, on `listen`)"},
    {"listen", OptionType::string, "127.0.0.1:0",
     "where a self-hosted job end listens (HOST:PORT, port 0: ephemeral); loopback unless TLS files are "
     "given"},
    {"site", OptionType::string, "",
     "the site's name in the cell names (default: the job's site; for a trainer started by hand)"},
    {"job_id", OptionType::string, "", "the job's id in the cell names (default: the running job's id)"},
    {"channel", OptionType::string, "trainer",
     "the trainer's name under the job (its FQCN is <site>.<job_id>.<channel>); one per trainer of a job"},
    {"token_file", OptionType::string, "",
     "a 0600 file holding the job's cell token, presented to the site (needed with site_address)"},
    {"ca", OptionType::string, "", "PEM file of the project's root CA (mutual TLS; with cert and key)"},
    {"cert", OptionType::string, "", "PEM certificate of this site (its processes present it)"},
    {"key", OptionType::string, "", "PEM private key of that certificate (0600)"},
    {"server_name", OptionType::string, "",
     "the name the listener's certificate must carry (default: this site's name)"},
    {"insecure", OptionType::boolean, "false",
     "allow clear text to a site_address that is not loopback (frames and tokens then cross the network "
     "unprotected)"},
    {.name = "packet_bytes",
     .type = OptionType::integer,
     .default_value = "4194304",
     .doc = "the largest gRPC message (one frame) on the cell's links",
     .minimum = "65536",
     .maximum = "1073741824"},
    {"connect_timeout", OptionType::duration, "5s", "one attempt to reach the listener, hello included"},
};

constexpr ComponentDescriptor components[] = {
    component<CellPipe>(
        "cell", "Frames over the cell network (gRPC, mutual TLS) to a trainer on another host", cell_options),
};

}  // namespace
}  // namespace ember::cell_pipe

EMBER_PLUGIN(cell_pipe, "cell-pipe", "0.1.0", "Pipe over the gRPC cell network", "Apache-2.0",
             ember::cell_pipe::components)
