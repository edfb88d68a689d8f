#include "server_job.hpp"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <set>
#include <thread>

#include "duration.hpp"

namespace ember::kernel {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string what_of(std::exception_ptr e) {
  try {
    std::rethrow_exception(std::move(e));
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "a non-standard exception";
  }
}

// The WorkflowHost a workflow runs against: broadcast() fans a task out to one worker thread per site, each
// calling Link::execute(); report() collects the workflow's metrics by round.
class LinkHost final : public WorkflowHost {
 public:
  LinkHost(Link& link, std::stop_token stop, ProgressObserver* observer, MetricsLog* metrics)
      : link_(link), stop_(std::move(stop)), observer_(observer), metrics_(metrics) {}

  std::vector<std::string> sites() const override { return link_.sites(); }

  Result<void> broadcast(const TaskData& task, const std::vector<std::string>& targets,
                         std::chrono::milliseconds timeout,
                         const std::function<void(SiteResult&&)>& on_result) override {
    flush_round();
    last_task_total_ = task.total_rounds;
    // Shared with the workers, which may outlive a deadline by their close bound.
    struct Shared {
      std::mutex mutex;
      std::condition_variable done;
      std::set<std::string> pending;
      bool open = true;
      std::exception_ptr thrown;  // from on_result, on whichever thread called it
    };
    auto shared = std::make_shared<Shared>();
    const auto started = Clock::now();
    if (observer_ != nullptr) {
      observer_->round_started(task, targets.size());
    }
    const std::size_t total = targets.size();
    std::size_t answered = 0;
    // Called with shared->mutex held: results are reported one at a time.
    auto report_one = [&, total](SiteResult&& r) {
      ++answered;
      if (r.result) {
        bytes_moved_ += params_bytes(task) + params_bytes(*r.result);
      }
      if (observer_ != nullptr) {
        observer_->site_result(task, r, Clock::now() - started, answered, total);
      }
      if (shared->thrown) {
        return;  // the workflow already failed in this broadcast; it is told once
      }
      try {
        on_result(std::move(r));
      } catch (...) {
        shared->thrown = std::current_exception();
      }
    };
    std::vector<std::jthread> workers;
    for (const auto& name : targets) {
      {
        std::lock_guard lock(shared->mutex);
        shared->pending.insert(name);
      }
      workers.emplace_back([this, name, shared, &task, &report_one](std::stop_token worker_stop) {
        Result<TaskData> result = fail(Errc::internal, name + ": no result");
        try {
          result = link_.execute(name, task, worker_stop);
        } catch (...) {
          result = fail(Errc::internal, name + ": the link threw: " + what_of(std::current_exception()));
        }
        std::lock_guard lock(shared->mutex);
        if (shared->open && shared->pending.erase(name) == 1) {
          report_one(SiteResult{name, std::move(result)});
        }
        shared->done.notify_all();
      });
    }
    const auto deadline = Clock::now() + timeout;
    {
      // The stop wakes this wait at once; the empty lock orders the notification after the wait began.
      std::stop_callback wake(stop_, [&shared] {
        { std::lock_guard order(shared->mutex); }
        shared->done.notify_all();
      });
      std::unique_lock lock(shared->mutex);
      shared->done.wait_until(lock, deadline,
                              [&] { return shared->pending.empty() || stop_.stop_requested(); });
      for (const auto& name : shared->pending) {
        report_one(SiteResult{
            name, stop_.stop_requested()
                      ? fail(Errc::cancelled, name + ": the job was interrupted")
                      : fail(Errc::timeout, name + ": no answer within " + format_duration(timeout))});
      }
      shared->pending.clear();
      shared->open = false;
    }
    for (auto& w : workers) {
      w.request_stop();
    }
    workers.clear();  // joins: a link returns within its close bound once stopped
    if (shared->thrown) {
      return fail(Errc::internal, "the workflow's result handler threw: " + what_of(shared->thrown));
    }
    if (stop_.stop_requested()) {
      return fail(Errc::cancelled, "interrupted");
    }
    return ok();
  }

  void report(const std::string& key, double value, std::uint64_t round) override {
    if (metrics_ != nullptr) {
      metrics_->write("server", key, value, round);
    }
    last_total_ = last_task_total_;
    rounds_[round][key] = value;
    last_round_ = round;
    have_round_ = true;
  }

  // Tells the observer about the round whose metrics the workflow reported since the last broadcast.
  void flush_round() {
    if (!have_round_ || printed_through_ == static_cast<std::int64_t>(last_round_)) {
      return;
    }
    printed_through_ = static_cast<std::int64_t>(last_round_);
    if (observer_ != nullptr) {
      observer_->round_aggregated(last_round_, last_total_ != 0 && last_round_ >= last_total_,
                                  rounds_[last_round_]);
    }
  }

  RoundMetrics& rounds() { return rounds_; }
  std::uint64_t bytes_moved() const { return bytes_moved_; }

 private:
  Link& link_;
  std::stop_token stop_;
  ProgressObserver* observer_;
  MetricsLog* metrics_;
  RoundMetrics rounds_;
  std::uint64_t last_round_ = 0;
  std::uint64_t last_total_ = 0;       // total_rounds of the task the reported round belongs to
  std::uint64_t last_task_total_ = 0;  // total_rounds of the last task broadcast
  bool have_round_ = false;
  std::int64_t printed_through_ = -1;
  std::uint64_t bytes_moved_ = 0;
};

}  // namespace

ServerJob::ServerJob(std::shared_ptr<Workflow> workflow, Link& link, ProgressObserver* observer,
                     MetricsLog* metrics)
    : workflow_(std::move(workflow)), link_(link), observer_(observer), metrics_(metrics) {}

JobReport ServerJob::run(std::stop_token stop) {
  const auto t0 = Clock::now();
  LinkHost host(link_, stop, observer_, metrics_);
  JobReport report;
  if (stop.stop_requested()) {
    report.outcome = fail(Errc::cancelled, "interrupted");
  } else {
    try {
      report.outcome = workflow_->run(host);
    } catch (...) {
      report.outcome = fail(Errc::internal, "the workflow threw: " + what_of(std::current_exception()));
    }
  }
  host.flush_round();
  report.rounds = std::move(host.rounds());
  report.bytes_moved = host.bytes_moved();
  report.elapsed = Clock::now() - t0;
  if (observer_ != nullptr) {
    observer_->finished(report);
  }
  return report;
}

}  // namespace ember::kernel
