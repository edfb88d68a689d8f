// The Client API (sdk/include/ember/client.hpp): one session per trainer process, over the pipe plugin the
// job named in the bootstrap file, loaded through the same registry the kernel uses.

#include <ember/client.hpp>

#include <unistd.h>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include <ember/converter.hpp>
#include <ember/pipe.hpp>

#include <base/strings.hpp>
#include <nlohmann/json.hpp>

#include "kernel.hpp"
#include "session/bootstrap.hpp"
#include "session/bundle.hpp"
#include "session/session.hpp"

namespace ember::client {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using wire::Op;

constexpr std::size_t log_queue_limit = 4096;

std::optional<int> env_rank() {
  const char* text = std::getenv("RANK");
  if (text == nullptr || *text == '\0') {
    return std::nullopt;
  }
  int value = 0;
  auto [end, ec] = std::from_chars(text, text + std::strlen(text), value);
  if (ec != std::errc{} || *end != '\0') {
    return std::nullopt;
  }
  return value;
}

struct LogItem {
  wire::Headers headers;
  std::vector<std::byte> text;
};

class Client {
 public:
  ~Client() { shutdown(); }

  Result<void> init(const InitOptions& options) {
    std::lock_guard lock(mutex_);
    if (initialized_) {
      // As a training script that calls init() in a helper and again in main() expects: the session goes on.
      std::fprintf(stderr, "ember client: warning: init() was already called; this call does nothing\n");
      return ok();
    }
    rank_ = options.rank.value_or(env_rank().value_or(0));
    std::filesystem::path file = options.bootstrap;
    if (file.empty()) {
      const char* env = std::getenv("EMBER_BOOTSTRAP");
      if (env == nullptr || *env == '\0') {
        return fail(
            Errc::invalid_config,
            "no bootstrap file: EMBER_BOOTSTRAP is not set (the job sets it when it launches the trainer)");
      }
      file = env;
    }
    auto boot = session::read_bootstrap(file);
    if (!boot) {
      if (rank_ != 0) {
        // Other ranks need nothing from the job; they only learn they are not rank 0.
        initialized_ = true;
        running_ = true;
        return ok();
      }
      return fail(std::move(boot.error()));
    }
    boot_ = std::move(*boot);
    if (rank_ != 0) {
      boot_.token.clear();  // only rank 0 may use it
      initialized_ = true;
      running_ = true;
      return ok();
    }

    kernel::KernelSettings settings;
    settings.plugin_paths = boot_.plugin_paths;
    settings.use_env_path = false;
    settings.use_default_paths = false;
    settings.workspace = boot_.workspace;
    settings.subs = kernel::Substitutions{boot_.site, boot_.job_id, boot_.workspace.string()};
    // The trainer's stderr is the job's log, where the launcher shows every line at its stderr_level
    // (warn): the plugins' info lines (a pipe attaching) would appear there as warnings. Only warnings and
    // errors go by default; EMBER_LOG still chooses otherwise.
    settings.log.level = LogLevel::warn;
    kernel_ = std::make_unique<kernel::Kernel>(std::move(settings));
    log_ = kernel_->logs().get("client");

    std::vector<const session::ComponentRef*> refs{&boot_.pipe};
    for (const auto& c : boot_.converters) {
      refs.push_back(&c);
    }
    bool searched = false;
    for (const auto* ref : refs) {
      if (kernel_->registry().contains(ref->type)) {
        continue;
      }
      if (!ref->file.empty()) {
        if (auto loaded = kernel_->load_file(ref->file); !loaded) {
          return fail(loaded.error().code, file.string() + ": cannot load the plugin for " + ref->type +
                                               ": " + loaded.error().message);
        }
      } else if (!searched) {
        kernel_->load_plugins();
        searched = true;
      }
    }
    auto pipe = kernel_->registry().create_as<Pipe>(boot_.pipe.type, boot_.pipe.options);
    if (!pipe) {
      return fail(pipe.error().code,
                  file.string() + ": pipe " + boot_.pipe.type + ": " + pipe.error().message);
    }
    pipe_ = *pipe;
    std::vector<std::string> types, formats;
    for (const auto& c : boot_.converters) {
      auto converter = kernel_->registry().create_as<Converter>(c.type, c.options);
      if (!converter) {
        return fail(converter.error().code,
                    file.string() + ": converter " + c.type + ": " + converter.error().message);
      }
      types.push_back(c.type);
      formats.emplace_back((*converter)->format());
      converters_.push_back(*converter);
    }
    formats_ = formats;
    auto endpoint = pipe_->open(PipeSide::trainer, boot_.timeouts.launch);
    if (!endpoint) {
      return fail(endpoint.error().code, "cannot attach to the job's pipe at " +
                                             boot_.pipe.options.string("address") + ": " +
                                             endpoint.error().message);
    }
    session_ =
        std::make_unique<session::Session>(session::Role::trainer, std::move(*endpoint),
                                           session::settings_from(boot_.timeouts, boot_.max_resends), log_);
    session_->set_sink_factory(inbox_.sink_factory());
    wire::Headers hello{{"converters", base::join(types, ",")},
                        {"formats", base::join(formats, ",")},
                        {"rank", "0"},
                        {"pid", std::to_string(::getpid())}};
    if (auto said = session_->hello(boot_.token, hello); !said) {
      auto error = said.error();
      session_.reset();
      return fail(error.code, "cannot join job " + boot_.job_id + " as " + boot_.site + ": " + error.message);
    }
    initialized_ = true;
    running_ = true;
    log_thread_ = std::jthread([this](std::stop_token stop) { log_loop(stop); });
    return ok();
  }

  Result<std::optional<FLModel>> receive(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    if (auto usable = check_usable(); !usable) {
      return fail(std::move(usable.error()));
    }
    if (!running_) {
      return std::optional<FLModel>{};
    }
    auto deadline =
        timeout == std::chrono::milliseconds::max() ? Clock::time_point::max() : Clock::now() + timeout;
    while (true) {
      auto now = Clock::now();
      if (now >= deadline) {
        return fail(Errc::timeout, "no task within " + std::to_string(timeout.count()) + " ms");
      }
      auto step =
          deadline == Clock::time_point::max()
              ? std::chrono::milliseconds(1000)
              : std::max(1ms, std::min(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now),
                                       std::chrono::milliseconds(1000)));
      // A task that came while send() waited for its answer is taken first.
      auto got = early_task_
                     ? Result<std::optional<session::Message>>(std::exchange(early_task_, std::nullopt))
                     : session_->receive(step);
      if (!got) {
        if (got.error().code == Errc::closed) {
          running_ = false;
          return std::optional<FLModel>{};
        }
        running_ = false;
        return fail(got.error().code, "the job's session ended: " + got.error().message);
      }
      if (!*got) {
        continue;
      }
      auto& m = **got;
      switch (m.op) {
        case Op::task_ready: {
          auto task = inbox_.take(m);
          if (!task) {
            auto reason = task.error().message;
            (void)session_->send(Op::task_failed, m.topic, {{"reason", reason}}, nullptr, m.msg_id);
            return fail(task.error().code, "task '" + m.topic + "' could not be read: " + reason);
          }
          if (auto accepted = session_->send(Op::task_accepted, m.topic, {}, nullptr, m.msg_id); !accepted) {
            return fail(accepted.error().code,
                        "cannot accept task '" + m.topic + "': " + accepted.error().message);
          }
          task_msg_ = m.msg_id;
          task_name_ = task->name;
          FLModel model;
          model.params = std::move(task->params);
          model.params_type = task->params_type;
          model.metrics = std::move(task->metrics);
          model.meta = std::move(task->meta);
          model.current_round = task->round;
          model.total_rounds = task->total_rounds;
          round_ = task->round;
          total_rounds_ = task->total_rounds;
          metric_round_ = static_cast<std::int64_t>(task->round);
          return std::optional<FLModel>(std::move(model));
        }
        case Op::shutdown:
          running_ = false;
          return std::optional<FLModel>{};
        case Op::abort:
          running_ = false;
          aborted_ = true;
          return std::optional<FLModel>{};
        default:
          break;
      }
    }
  }

  Result<void> send(const FLModel& model) {
    std::unique_lock lock(mutex_);
    if (auto usable = check_usable(); !usable) {
      return fail(std::move(usable.error()));
    }
    if (!task_msg_) {
      return fail(Errc::invalid_argument, "send() without a task: call receive() first");
    }
    TaskData result;
    result.name = task_name_;
    result.round = round_;
    result.total_rounds = total_rounds_;
    result.params_type = model.params_type;
    result.params = model.params;
    result.metrics = model.metrics;
    result.meta = model.meta;
    auto payload = session::task_payload(result);
    if (!payload) {
      return fail(payload.error().code, "cannot encode the result: " + payload.error().message);
    }
    auto sent = session_->send(Op::result_ready, task_name_, {}, *payload, *task_msg_);
    if (!sent) {
      return fail(sent.error().code,
                  "cannot send the result of '" + task_name_ + "': " + sent.error().message);
    }
    auto deadline = Clock::now() + boot_.timeouts.task_wait;
    while (Clock::now() < deadline) {
      auto got = session_->receive(200ms);
      if (!got) {
        running_ = false;
        return fail(got.error().code,
                    "the job's session ended before it answered the result: " + got.error().message);
      }
      if (!*got) {
        continue;
      }
      auto& m = **got;
      if ((m.op == Op::result_accepted || m.op == Op::result_rejected) && m.req_id == *sent) {
        task_msg_.reset();
        task_name_.clear();
        if (m.op == Op::result_rejected) {
          const auto* reason = m.header("reason");
          return fail(Errc::rejected,
                      "the job rejected the result: " + (reason != nullptr ? *reason : "no reason"));
        }
        return ok();
      }
      if (m.op == Op::abort || m.op == Op::shutdown) {
        running_ = false;
        aborted_ = aborted_ || m.op == Op::abort;
        return fail(Errc::closed, "the job ended before it answered the result");
      }
      if (m.op == Op::task_ready && !early_task_) {
        // The job moved on (this result's task was aborted there): the next task is kept for receive().
        early_task_ = std::move(m);
      }
    }
    return fail(Errc::timeout, "the job did not answer the result within task_wait = " +
                                   std::to_string(boot_.timeouts.task_wait.count()) + " ms");
  }

  Result<void> clear(std::string_view reason) {
    std::unique_lock lock(mutex_);
    if (initialized_ && !task_msg_) {
      return ok();  // nothing to decline (always so on ranks other than 0)
    }
    if (auto usable = check_usable(); !usable) {
      return fail(std::move(usable.error()));
    }
    return decline(reason.empty() ? std::string_view("the trainer cleared the task") : reason, false);
  }

  void end_with_error(std::string_view reason) noexcept {
    {
      std::unique_lock lock(mutex_);
      if (session_ && rank_ == 0) {
        (void)decline(reason, true);
      }
    }
    shutdown(Op::abort, std::string(reason));
  }

  /// The round a metric logged now belongs to: that of the last task received, if any.
  std::optional<std::uint64_t> metric_round() const noexcept {
    auto round = metric_round_.load();
    return round < 0 ? std::nullopt : std::optional<std::uint64_t>(static_cast<std::uint64_t>(round));
  }

  void log(wire::Headers headers, std::vector<std::byte> text) {
    std::lock_guard lock(log_mutex_);
    if (!log_thread_.joinable()) {
      return;
    }
    if (log_queue_.size() >= log_queue_limit) {
      log_queue_.pop_front();
      ++log_dropped_;
    }
    log_queue_.push_back(LogItem{std::move(headers), std::move(text)});
    log_cv_.notify_one();
  }

  void shutdown(Op farewell = Op::shutdown, std::string reason = "trainer finished") noexcept {
    {
      std::lock_guard lock(log_mutex_);
      log_cv_.notify_all();
    }
    if (log_thread_.joinable()) {
      log_thread_.request_stop();
      log_cv_.notify_all();
      log_thread_.join();
    }
    std::lock_guard lock(mutex_);
    if (session_) {
      session_->close(farewell, std::move(reason));
      session_.reset();
    }
    running_ = false;
    converters_.clear();
    pipe_.reset();
  }

  std::string task_name() {
    std::lock_guard lock(mutex_);
    return task_name_;
  }
  SystemInfo info() {
    std::lock_guard lock(mutex_);
    return SystemInfo{boot_.job_id,
                      boot_.job_name,
                      boot_.site,
                      rank_,
                      boot_.workspace,
                      formats_,
                      boot_.task_names.train,
                      boot_.task_names.evaluate,
                      boot_.task_names.submit_model};
  }
  std::string config() {
    std::lock_guard lock(mutex_);
    return boot_.config_json;
  }
  bool rank0() {
    std::lock_guard lock(mutex_);
    return rank_ == 0;
  }
  bool running() const { return running_; }
  // Never blocks the training loop: while another thread is inside receive() or send(), the flag they keep
  // answers; otherwise the session says whether an ABORT has arrived since, or the job has gone (PEER_GONE:
  // nothing trained from now on can be delivered).
  bool aborted() {
    if (aborted_) {
      return true;
    }
    std::unique_lock lock(mutex_, std::try_to_lock);
    if (lock.owns_lock() && session_ &&
        (session_->peer_aborted() || session_->state() == session::State::peer_gone)) {
      aborted_ = true;
    }
    return aborted_;
  }

  Result<NativeTensor> to_native(const WireTensor& tensor, std::string_view format) {
    auto converter = find(format);
    if (!converter) {
      return fail(std::move(converter.error()));
    }
    return (*converter)->to_native(tensor);
  }
  Result<WireTensor> to_wire(const NativeTensor& tensor, std::string name) {
    auto converter = find(tensor.format);
    if (!converter) {
      return fail(std::move(converter.error()));
    }
    return (*converter)->to_wire(tensor, std::move(name));
  }

 private:
  // TASK_FAILED for the current task (mutex_ held). `final`: the trainer is about to end, so the job need not
  // keep it for the next task.
  Result<void> decline(std::string_view reason, bool final) {
    if (!task_msg_) {
      return ok();
    }
    wire::Headers headers{{"reason", std::string(reason)}};
    if (final) {
      headers.emplace_back("final", "true");
    }
    auto sent = session_->send(Op::task_failed, task_name_, std::move(headers), nullptr, *task_msg_);
    task_msg_.reset();
    task_name_.clear();
    if (!sent) {
      return fail(sent.error().code, "cannot decline the task: " + sent.error().message);
    }
    return ok();
  }

  Result<void> check_usable() const {
    if (!initialized_) {
      return fail(Errc::invalid_argument, "call ember::client::init() first");
    }
    if (rank_ != 0) {
      return fail(Errc::unsupported, "rank " + std::to_string(rank_) +
                                         " does not talk to the job: only rank 0 receives tasks and sends "
                                         "results (share the model from rank 0 inside your trainer)");
    }
    if (!session_) {
      return fail(Errc::closed, "the session has ended (shutdown() was called)");
    }
    return ok();
  }

  Result<std::shared_ptr<Converter>> find(std::string_view format) {
    std::lock_guard lock(mutex_);
    for (const auto& c : converters_) {
      if (c->format() == format) {
        return c;
      }
    }
    return fail(Errc::not_found, "no converter of format '" + std::string(format) +
                                     "': the job's executor lists the converters a trainer loads");
  }

  void log_loop(const std::stop_token& stop) {
    while (true) {
      LogItem item;
      {
        std::unique_lock lock(log_mutex_);
        log_cv_.wait_for(lock, 500ms, [&] { return stop.stop_requested() || !log_queue_.empty(); });
        if (log_queue_.empty()) {
          if (stop.stop_requested()) {
            return;
          }
          continue;
        }
        item = std::move(log_queue_.front());
        log_queue_.pop_front();
      }
      // post() returns once queued; the ticket is dropped: logs are best effort.
      std::shared_ptr<const session::PayloadSource> payload;
      if (!item.text.empty()) {
        payload = std::make_shared<session::BytesSource>(std::move(item.text));
      }
      session::Session* s = session_.get();
      if (s != nullptr && s->state() == session::State::ready) {
        (void)s->post(Op::log, "log", std::move(item.headers), std::move(payload));
      }
    }
  }

  std::mutex mutex_;
  bool initialized_ = false;
  int rank_ = 0;
  session::Bootstrap boot_;
  std::unique_ptr<kernel::Kernel> kernel_;
  std::shared_ptr<Logger> log_;
  std::shared_ptr<Pipe> pipe_;
  std::vector<std::shared_ptr<Converter>> converters_;
  std::vector<std::string> formats_;
  std::unique_ptr<session::Session> session_;
  session::BundleInbox inbox_;
  std::optional<std::uint64_t> task_msg_;
  std::optional<session::Message> early_task_;  // a TASK_READY that arrived while send() waited
  std::string task_name_;
  std::uint64_t round_ = 0;
  std::uint64_t total_rounds_ = 0;
  // The round of the last task received, for log(): read without mutex_, which receive() holds while waiting.
  std::atomic<std::int64_t> metric_round_{-1};
  std::atomic<bool> running_{false};
  std::atomic<bool> aborted_{false};

  std::mutex log_mutex_;
  std::condition_variable log_cv_;
  std::deque<LogItem> log_queue_;
  std::uint64_t log_dropped_ = 0;
  std::jthread log_thread_;
};

Client& the_client() {
  static Client client;
  return client;
}

}  // namespace

Result<void> init(const InitOptions& options) {
  return the_client().init(options);
}
Result<std::optional<FLModel>> receive(std::chrono::milliseconds timeout) {
  return the_client().receive(timeout);
}
Result<void> send(const FLModel& model) {
  return the_client().send(model);
}
void log(std::string_view key, double value, std::optional<std::uint64_t> step) {
  char text[64];
  auto [end, ec] = std::to_chars(text, text + sizeof text, value);
  wire::Headers headers{{"kind", "metric"}, {"key", std::string(key)}, {"value", std::string(text, end)}};
  if (step) {
    headers.emplace_back("step", std::to_string(*step));
  }
  // The metric belongs to the task being worked on, whenever its LOG reaches the job.
  if (auto round = the_client().metric_round()) {
    headers.emplace_back("round", std::to_string(*round));
  }
  (void)ec;
  the_client().log(std::move(headers), {});
}
void log(const std::map<std::string, double>& values, std::optional<std::uint64_t> step) {
  for (const auto& [key, value] : values) {
    log(key, value, step);
  }
}
Result<void> clear(std::string_view reason) {
  return the_client().clear(reason);
}
void end_with_error(std::string_view reason) {
  the_client().end_with_error(reason);
}
std::string get_config() {
  return the_client().config();
}
std::optional<std::string> config_value(std::string_view key) {
  auto doc = nlohmann::json::parse(the_client().config(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return std::nullopt;
  }
  auto it = doc.find(key);
  if (it == doc.end()) {
    return std::nullopt;
  }
  return it->dump();
}
void log_text(std::string_view text) {
  std::vector<std::byte> bytes(text.size());
  std::memcpy(bytes.data(), text.data(), text.size());
  the_client().log({{"kind", "text"}}, std::move(bytes));
}
std::string task_name() {
  return the_client().task_name();
}
bool is_train() {
  auto name = task_name();
  return !name.empty() && name == the_client().info().train_task;
}
bool is_evaluate() {
  auto name = task_name();
  return !name.empty() && name == the_client().info().evaluate_task;
}
bool is_submit_model() {
  auto name = task_name();
  return !name.empty() && name == the_client().info().submit_model_task;
}
std::string job_id() {
  return the_client().info().job_id;
}
std::string site_name() {
  return the_client().info().site;
}
SystemInfo system_info() {
  return the_client().info();
}
bool is_rank0() {
  return the_client().rank0();
}
bool is_running() {
  return the_client().running();
}
bool abort_requested() {
  return the_client().aborted();
}
void shutdown() {
  the_client().shutdown();
}
Result<NativeTensor> to_native(const WireTensor& tensor, std::string_view format) {
  return the_client().to_native(tensor, format);
}
Result<WireTensor> to_wire(const NativeTensor& tensor, std::string name) {
  return the_client().to_wire(tensor, std::move(name));
}

}  // namespace ember::client
