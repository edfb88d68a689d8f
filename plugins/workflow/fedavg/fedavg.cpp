// workflow.fedavg: federated averaging, the server side of a training job. Each round sends the global model
// to every site, folds each answer into a weighted sum as it arrives (weights: the sample counts the sites
// report), and makes the weighted mean the next global model, which is checkpointed in safetensors. A round
// survives sites that fail, time out or answer with a model of the wrong layout, as long as min_clients
// results are usable; a run can resume from its last good checkpoint.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <ember/plugin.hpp>
#include <ember/workflow.hpp>

#include "aggregator.hpp"
#include "checkpoint.hpp"

namespace ember::fedavg {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* type_name = "workflow.fedavg";

struct Settings {
  std::uint64_t rounds = 3;
  std::uint64_t min_clients = 0;
  std::string task;
  std::chrono::milliseconds round_timeout{0};
  std::string initial_model;
  std::string weight_metric;
  fs::path checkpoint_dir;
  bool resume = false;
  bool evaluate_final = true;
  std::uint64_t keep_checkpoints = 0;
};

Result<Settings> read_settings(const ComponentContext& context) {
  const auto& options = context.options();
  auto bad = [](const std::string& what) {
    return fail(Errc::invalid_option, std::string(type_name) + ": " + what);
  };
  Settings s;
  auto rounds = options.integer("rounds");
  auto min_clients = options.integer("min_clients");
  auto keep = options.integer("keep_checkpoints");
  if (rounds < 1) {
    return bad("option 'rounds' must be at least 1 (it is " + std::to_string(rounds) + ")");
  }
  if (min_clients < 0) {
    return bad("option 'min_clients' must be 0 (every site) or more (it is " + std::to_string(min_clients) +
               ")");
  }
  if (keep < 0) {
    return bad("option 'keep_checkpoints' must be 0 (keep all) or more (it is " + std::to_string(keep) + ")");
  }
  s.rounds = static_cast<std::uint64_t>(rounds);
  s.min_clients = static_cast<std::uint64_t>(min_clients);
  s.keep_checkpoints = static_cast<std::uint64_t>(keep);
  s.task = options.string("task");
  s.weight_metric = options.string("weight_metric");
  s.round_timeout = options.duration("round_timeout");
  s.initial_model = options.string("initial_model");
  s.resume = options.boolean("resume");
  s.evaluate_final = options.boolean("evaluate_final");
  if (s.task.empty() || s.weight_metric.empty() || options.string("checkpoint_dir").empty()) {
    return bad("options 'task', 'weight_metric' and 'checkpoint_dir' must not be empty");
  }
  if (s.round_timeout.count() < 0) {
    return bad("option 'round_timeout' must not be negative");
  }
  s.checkpoint_dir = options.string("checkpoint_dir");
  if (s.checkpoint_dir.is_relative()) {
    s.checkpoint_dir = context.workspace() / s.checkpoint_dir;
  }
  return s;
}

// A number for a log line: "0.25", "1.5e+06".
std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", value);
  return text;
}

// "1.234 s".
std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f s", seconds);
  return text;
}

std::string seconds_since(Clock::time_point start) {
  return seconds_text(std::chrono::duration<double>(Clock::now() - start).count());
}

// Weighted means of the metrics the results report; a metric counts only the results that have it.
class MetricMeans {
 public:
  void add(const std::map<std::string, double>& metrics, double weight, const std::string& skip) {
    for (const auto& [name, value] : metrics) {
      if (name != skip) {
        auto& [sum, weights] = sums_[name];
        sum += weight * value;
        weights += weight;
      }
    }
  }
  std::map<std::string, double> means() const {
    std::map<std::string, double> out;
    for (const auto& [name, sum] : sums_) {
      out[name] = sum.first / sum.second;
    }
    return out;
  }

 private:
  std::map<std::string, std::pair<double, double>> sums_;
};

std::string metrics_text(const std::map<std::string, double>& metrics) {
  std::string text;
  for (const auto& [name, value] : metrics) {
    text += (text.empty() ? "" : ", ") + name + " " + number(value);
  }
  return text.empty() ? "no metrics" : text;
}

// What one round has gathered so far. broadcast() calls back one result at a time, but from any thread: the
// mutex orders the callbacks' writes with each other and with the reads after broadcast() returns.
struct RoundState {
  std::mutex mutex;
  std::optional<Layout> layout;  // the global model's, or fixed by the round's first result
  std::optional<ParamsType> params_type;
  std::size_t ok = 0;
  std::vector<std::string> failures;  // "site-2: why"
  MetricMeans metrics;
  std::optional<Error> fatal;  // an exception while folding: the round cannot be trusted
};

class FedAvgWorkflow final : public Workflow {
 public:
  static Result<std::unique_ptr<FedAvgWorkflow>> create(const ComponentContext& context) {
    auto settings = read_settings(context);
    if (!settings) {
      return fail(std::move(settings.error()));
    }
    return std::unique_ptr<FedAvgWorkflow>(new FedAvgWorkflow(context, std::move(*settings)));
  }

  Result<void> run(WorkflowHost& host) override {
    try {
      return run_rounds(host);
    } catch (const std::exception& e) {
      return fail(Errc::internal, std::string(type_name) + ": " + e.what());
    }
  }

 private:
  FedAvgWorkflow(const ComponentContext& context, Settings settings)
      : logger_(context.logger_ptr()),
        registry_(&context.registry()),
        workspace_(context.workspace()),
        stop_(context.stop_token()),
        settings_(std::move(settings)) {}

  Logger& log() const noexcept { return *logger_; }
  const JobInfo* job() const noexcept { return registry_->job(); }

  std::chrono::milliseconds round_timeout() const {
    if (settings_.round_timeout.count() > 0) {
      return settings_.round_timeout;
    }
    const auto* info = job();
    return info != nullptr ? info->timeouts.result_wait : std::chrono::hours(1);
  }

  Result<void> run_rounds(WorkflowHost& host) {
    auto sites = host.sites();
    if (sites.empty()) {
      return fail(Errc::invalid_config, std::string(type_name) + ": the job has no sites to train");
    }
    std::uint64_t needed = settings_.min_clients == 0 ? sites.size() : settings_.min_clients;
    if (needed > sites.size()) {
      return fail(Errc::invalid_option, std::string(type_name) + ": min_clients is " +
                                            std::to_string(needed) + ", but the job has " +
                                            std::to_string(sites.size()) + " sites");
    }
    auto first = start();
    if (!first) {
      return fail(std::move(first.error()));
    }
    for (std::uint64_t round = *first; round < settings_.rounds; ++round) {
      if (stop_.stop_requested()) {
        return fail(Errc::cancelled,
                    std::string(type_name) + ": stopped before round " + std::to_string(round));
      }
      auto done = run_round(host, round, sites, needed);
      if (!done) {
        return done;
      }
    }
    // Also after a resumed run that had no round left: a crash may have come between the last checkpoint and
    // the final model.
    auto final_model = workspace_ / "model.safetensors";
    auto saved = write_bundle(final_model, bundle(settings_.rounds - 1, last_metrics_));
    if (!saved) {
      return saved;
    }
    log().info("final model written to " + final_model.string());
    if (settings_.evaluate_final) {
      return evaluate(host, sites);
    }
    return ok();
  }

  // Where the first round starts from: the newest good checkpoint (resume), the initial model, or nothing.
  // Returns the first round to run.
  Result<std::uint64_t> start() {
    const auto& dir = settings_.checkpoint_dir;
    if (settings_.resume) {
      for (const auto& problem : prune_checkpoints(dir, 0)) {  // temporary files of a crashed write only
        log().warn(problem);
      }
      auto found = newest_checkpoint(dir, [this](const std::string& why) {
        log().warn("skipping a checkpoint that cannot be used: " + why);
      });
      if (!found) {
        return fail(found.error().code, std::string(type_name) + ": " + found.error().message);
      }
      if (*found) {
        auto& checkpoint = **found;
        auto adopted = adopt(std::move(checkpoint.data.params), checkpoint.file);
        if (!adopted) {
          return fail(std::move(adopted.error()));
        }
        last_metrics_ = checkpoint.data.metrics;
        std::uint64_t next = checkpoint.data.round + 1;
        log().info("resuming from " + checkpoint.file.string() + " (round " +
                   std::to_string(checkpoint.data.round) + "): " +
                   (next < settings_.rounds ? "next is round " + std::to_string(next)
                                            : std::string("no round left to run")));
        return next;
      }
      log().info("no checkpoint to resume from in " + dir.string() + ": starting at round 0");
    } else {
      // A new run starts a new series: an older run's checkpoints left here would be taken for this one's.
      auto old = list_checkpoints(dir);
      if (old && !old->empty()) {
        log().warn("removing " + std::to_string(old->size()) + " checkpoint(s) of an earlier run from " +
                   dir.string() + " (set resume = true to continue from them)");
        for (const auto& problem : prune_checkpoints(dir, UINT64_MAX)) {
          log().warn(problem);
        }
      }
    }
    if (!settings_.initial_model.empty()) {
      fs::path file = settings_.initial_model;
      const auto* info = job();
      if (file.is_relative() && info != nullptr) {
        file = info->job_dir / file;
      }
      auto model = read_model(file);
      if (!model) {
        return fail(model.error().code, std::string(type_name) + ": initial_model: " + model.error().message);
      }
      auto adopted = adopt(std::move(model->tensors), file);
      if (!adopted) {
        return fail(std::move(adopted.error()));
      }
      log().info("initial model: " + file.string() + " (" + std::to_string(global_.size()) + " tensors)");
    } else {
      log().info("no initial model: round 0 sends no params and takes the layout of its first result");
    }
    return std::uint64_t{0};
  }

  Result<void> adopt(std::vector<WireTensor> tensors, const fs::path& file) {
    auto layout = Layout::of(tensors);
    if (!layout) {
      return fail(Errc::invalid_argument,
                  std::string(type_name) + ": " + file.string() + ": " + layout.error().message);
    }
    global_ = std::move(tensors);
    layout_ = std::move(*layout);
    return ok();
  }

  TaskData bundle(std::uint64_t round, std::map<std::string, double> metrics) const {
    TaskData data;
    data.name = settings_.task;
    data.round = round;
    data.total_rounds = settings_.rounds;
    data.params = global_;
    data.metrics = std::move(metrics);
    data.meta["workflow"] = type_name;
    if (const auto* info = job()) {
      data.meta["job_id"] = info->job_id;
      data.meta["job_name"] = info->job_name;
    }
    return data;
  }

  TaskData task_for(const std::string& name, std::uint64_t round) const {
    TaskData task;
    task.name = name;
    task.round = round;
    task.total_rounds = settings_.rounds;
    task.params = global_;  // the headers are copied; every site's task shares the same bytes
    if (const auto* info = job()) {
      task.meta["job_id"] = info->job_id;
    }
    return task;
  }

  // The result's weight, from its weight metric; a site that reports none counts with 1 (said once per site).
  Result<double> weight_of(const std::string& site, const TaskData& result) {
    auto it = result.metrics.find(settings_.weight_metric);
    if (it == result.metrics.end()) {
      if (warned_.insert(site).second) {
        log().warn(site + " reports no '" + settings_.weight_metric +
                   "' metric: its results count with weight 1");
      }
      return 1.0;
    }
    if (!std::isfinite(it->second) || it->second <= 0) {
      return fail(Errc::rejected, "its weight '" + settings_.weight_metric + "' is " + number(it->second) +
                                      ", not a positive number");
    }
    return it->second;
  }

  // Checks one result and folds it into the round's sum at once. Returns why it was refused, if it was.
  std::optional<std::string> accept(RoundState& state, const std::string& site, const TaskData& result) {
    auto weight = weight_of(site, result);
    if (!weight) {
      return weight.error().message;
    }
    if (result.params_type == ParamsType::diff && !layout_) {
      return std::string(
          "it is a DIFF, but there is no global model to apply it to (set initial_model, or "
          "have the first round answer with FULL params)");
    }
    if (state.params_type && *state.params_type != result.params_type) {
      return std::string(result.params_type == ParamsType::diff
                             ? "it is a DIFF, but earlier results were FULL"
                             : "it is FULL, but earlier results were DIFFs");
    }
    if (!state.layout) {
      if (result.params.empty()) {
        return std::string("it has no tensors, and there is no global model to compare it with");
      }
      auto layout = Layout::of(result.params);
      if (!layout) {
        return layout.error().message;
      }
      state.layout = std::move(*layout);
      log().info("round layout taken from " + site + ": " + std::to_string(state.layout->tensors().size()) +
                 " tensors, " + std::to_string(state.layout->bytes()) + " bytes");
    }
    auto ordered = state.layout->match(result.params);
    if (!ordered) {
      return ordered.error().message;
    }
    if (!aggregator_) {
      aggregator_ = std::make_unique<Aggregator>(*state.layout);
    }
    aggregator_->fold(*ordered, *weight);
    state.params_type = result.params_type;
    state.metrics.add(result.metrics, *weight, settings_.weight_metric);
    ++state.ok;
    return std::nullopt;
  }

  void on_result(RoundState& state, SiteResult&& answer, std::uint64_t round, Clock::time_point start) {
    std::lock_guard lock(state.mutex);
    std::string at = "round " + std::to_string(round) + ": ";
    if (!answer.result) {
      const auto& error = answer.result.error();
      state.failures.push_back(answer.site + ": " + std::string(to_string(error.code)) + ": " +
                               error.message);
      log().warn(at + answer.site + " failed after " + seconds_since(start) + " (" +
                 std::string(to_string(error.code)) + "): " + error.message);
      return;
    }
    try {
      auto refused = accept(state, answer.site, *answer.result);
      if (refused) {
        state.failures.push_back(answer.site + ": rejected: " + *refused);
        log().warn(at + "rejected the result of " + answer.site + ": " + *refused);
        return;
      }
    } catch (const std::exception& e) {
      state.fatal =
          Error{Errc::internal, at + "folding the result of " + answer.site + " failed: " + e.what()};
      return;
    }
    auto it = answer.result->metrics.find(settings_.weight_metric);
    double weight = it != answer.result->metrics.end() ? it->second : 1.0;
    log().info(at + answer.site + " answered in " + seconds_since(start) + ", weight " + number(weight) +
               " (" + std::to_string(state.ok) + " folded, " + std::to_string(state.failures.size()) +
               " failed)");
  }

  Result<void> run_round(WorkflowHost& host, std::uint64_t round, const std::vector<std::string>& sites,
                         std::uint64_t needed) {
    auto start = Clock::now();
    std::string at = "round " + std::to_string(round) + ": ";
    log().info(at + "sending '" + settings_.task + "' to " + std::to_string(sites.size()) +
               " sites (rounds 0 to " + std::to_string(settings_.rounds - 1) + ")");
    RoundState state;
    state.layout = layout_;
    auto sent =
        host.broadcast(task_for(settings_.task, round), sites, round_timeout(),
                       [&](SiteResult&& answer) { on_result(state, std::move(answer), round, start); });
    std::lock_guard lock(state.mutex);
    if (!sent) {
      return fail(sent.error().code, std::string(type_name) + ": " + at + sent.error().message);
    }
    if (state.fatal) {
      return fail(*state.fatal);
    }
    if (state.ok < std::max<std::uint64_t>(needed, 1)) {
      std::string why;
      for (const auto& failure : state.failures) {
        why += "; " + failure;
      }
      return fail(Errc::peer_gone, std::string(type_name) + ": " + at + std::to_string(state.ok) + " of " +
                                       std::to_string(sites.size()) +
                                       " sites answered with a usable result, " + std::to_string(needed) +
                                       " needed (min_clients)" + why);
    }
    std::vector<const WireTensor*> base;
    if (*state.params_type == ParamsType::diff) {
      for (const auto& tensor : global_) {
        base.push_back(&tensor);
      }
    }
    double total_weight = aggregator_->total_weight();
    global_ = aggregator_->finish(base);
    layout_ = std::move(state.layout);
    auto means = state.metrics.means();
    auto saved = checkpoint(round, means);
    if (!saved) {
      return saved;
    }
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    for (const auto& [name, value] : means) {
      host.report(name, value, round);
    }
    host.report("clients_ok", static_cast<double>(state.ok), round);
    host.report("clients_failed", static_cast<double>(state.failures.size()), round);
    host.report("round_seconds", seconds, round);
    log().info(at + "done in " + seconds_text(seconds) + ": " + std::to_string(state.ok) + " of " +
               std::to_string(sites.size()) + " sites, total weight " + number(total_weight) + "; " +
               metrics_text(means));
    last_metrics_ = std::move(means);
    return ok();
  }

  Result<void> checkpoint(std::uint64_t round, const std::map<std::string, double>& metrics) {
    auto file = checkpoint_path(settings_.checkpoint_dir, round);
    auto saved = write_bundle(file, bundle(round, metrics));
    if (!saved) {
      return fail(saved.error().code, std::string(type_name) + ": round " + std::to_string(round) +
                                          ": checkpoint: " + saved.error().message);
    }
    if (settings_.keep_checkpoints > 0 && round + 1 > settings_.keep_checkpoints) {
      for (const auto& problem :
           prune_checkpoints(settings_.checkpoint_dir, round + 1 - settings_.keep_checkpoints)) {
        log().warn(problem);
      }
    }
    return ok();
  }

  // Sends the final model to every site as an "evaluate" task and reports the weighted means of what they
  // measure, as round `rounds`. Sites that fail are logged; the job's result does not depend on them.
  Result<void> evaluate(WorkflowHost& host, const std::vector<std::string>& sites) {
    if (stop_.stop_requested()) {
      return fail(Errc::cancelled, std::string(type_name) + ": stopped before the final evaluation");
    }
    auto round = settings_.rounds;
    auto start = Clock::now();
    log().info("evaluating the final model on " + std::to_string(sites.size()) + " sites");
    std::mutex mutex;
    MetricMeans metrics;
    std::size_t answered = 0;
    std::size_t failed = 0;
    auto sent =
        host.broadcast(task_for(tasks::evaluate, round), sites, round_timeout(), [&](SiteResult&& answer) {
          std::lock_guard lock(mutex);
          auto weight = answer.result ? weight_of(answer.site, *answer.result)
                                      : Result<double>(fail(std::move(answer.result.error())));
          if (!weight) {
            ++failed;
            log().warn("evaluation: " + answer.site + " failed: " + weight.error().message);
            return;
          }
          metrics.add(answer.result->metrics, *weight, settings_.weight_metric);
          ++answered;
          log().info("evaluation: " + answer.site + " answered in " + seconds_since(start));
        });
    std::lock_guard lock(mutex);
    if (!sent) {
      return fail(sent.error().code, std::string(type_name) + ": evaluation: " + sent.error().message);
    }
    auto means = metrics.means();
    for (const auto& [name, value] : means) {
      host.report(name, value, round);
    }
    host.report("clients_ok", static_cast<double>(answered), round);
    host.report("clients_failed", static_cast<double>(failed), round);
    if (answered == 0) {
      log().warn("evaluation: no site evaluated the final model");
    } else {
      log().info("evaluation done: " + std::to_string(answered) + " of " + std::to_string(sites.size()) +
                 " sites; " + metrics_text(means));
    }
    return ok();
  }

  std::shared_ptr<Logger> logger_;
  Registry* registry_;
  fs::path workspace_;
  std::stop_token stop_;
  Settings settings_;
  std::vector<WireTensor> global_;  // in layout_'s order; empty until a first round without an initial model
  std::optional<Layout> layout_;    // set once there is a global model
  std::map<std::string, double> last_metrics_;  // of the round that made global_, saved with the final model
  std::set<std::string> warned_;                // sites told that their results have no weight metric
  // Made with the layout, kept for the run: its second thread and its memory serve every round.
  std::unique_ptr<Aggregator> aggregator_;
};

constexpr OptionSpec fedavg_options[] = {
    {.name = "rounds",
     .type = OptionType::integer,
     .default_value = "3",
     .doc = "rounds of training to run",
     .minimum = "1"},
    {.name = "min_clients",
     .type = OptionType::integer,
     .default_value = "0",
     .doc = "usable results a round needs to go on (0: every site of the job)",
     .minimum = "0"},
    {"task", OptionType::string, "train", "the task each round sends"},
    {.name = "round_timeout",
     .type = OptionType::duration,
     .default_value = "0s",
     .doc = "how long a round waits for the sites (0s: the job's result_wait timeout)",
     .minimum = "0s"},
    {"initial_model", OptionType::string, "\"\"",
     "safetensors file of the first global model, relative to the job folder (empty: the first round sends "
     "no params and takes FULL results only)"},
    {"weight_metric", OptionType::string, "num_samples",
     "the metric whose value weighs a result (a result without it weighs 1)"},
    {"checkpoint_dir", OptionType::string, "{workspace}/checkpoints",
     "folder of the per-round checkpoints, round-<r>.safetensors"},
    {"resume", OptionType::boolean, "false", "continue from the newest good checkpoint in checkpoint_dir"},
    {"evaluate_final", OptionType::boolean, "true",
     "after the last round, send 'evaluate' with the final model to every site and report the metrics"},
    {.name = "keep_checkpoints",
     .type = OptionType::integer,
     .default_value = "0",
     .doc = "checkpoints to keep, the newest (0: all)",
     .minimum = "0"},
};

constexpr ComponentDescriptor components[] = {
    component<FedAvgWorkflow>("fedavg", "Federated averaging over rounds, weighted by sample counts",
                              fedavg_options),
};

}  // namespace
}  // namespace ember::fedavg

EMBER_PLUGIN(fedavg_workflow, "fedavg-workflow", "0.1.0", "The FedAvg workflow: server-side round logic",
             "Apache-2.0", ember::fedavg::components)
