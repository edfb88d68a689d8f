#include "console_progress.hpp"

#include <iomanip>
#include <sstream>

namespace ember::kernel {

std::string task_label(const TaskData& task) {
  // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict for `"/" + std::to_string(...)` here.
  std::string label = task.name;
  if (task.total_rounds != 0 && task.round >= task.total_rounds) {
    label.append(" (after round ").append(std::to_string(task.total_rounds)).append(")");
  } else {
    label.append(" round ").append(std::to_string(task.round + 1));
    if (task.total_rounds != 0) {
      label.append("/").append(std::to_string(task.total_rounds));
    }
  }
  return label;
}

std::string bytes_text(std::uint64_t n) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1);
  if (n >= (1u << 30)) {
    s << static_cast<double>(n) / (1u << 30) << " GiB";
  } else if (n >= (1u << 20)) {
    s << static_cast<double>(n) / (1u << 20) << " MiB";
  } else {
    s << static_cast<double>(n) / 1024 << " KiB";
  }
  return s.str();
}

std::string seconds_text(std::chrono::steady_clock::duration d) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << std::chrono::duration<double>(d).count() << " s";
  return s.str();
}

std::string metric_text(double v) {
  std::ostringstream s;
  s << std::setprecision(4) << v;
  return s.str();
}

void ConsoleProgress::round_started(const TaskData& task, std::size_t sites) {
  std::lock_guard lock(mutex_);
  out_ << task_label(task) << ": sending " << bytes_text(params_bytes(task)) << " to " << sites << " site"
       << (sites == 1 ? "" : "s") << "\n"
       << std::flush;
}

void ConsoleProgress::site_result(const TaskData& task, const SiteResult& result,
                                  std::chrono::steady_clock::duration elapsed, std::size_t answered,
                                  std::size_t total) {
  std::lock_guard lock(mutex_);
  out_ << "  " << task_label(task) << "  " << result.site << "  ";
  if (result.result) {
    out_ << "ok  " << seconds_text(elapsed);
    for (const auto& [k, v] : result.result->metrics) {
      out_ << "  " << k << "=" << metric_text(v);
    }
  } else {
    out_ << "FAILED  " << result.result.error().message;
  }
  out_ << "  [" << answered << "/" << total << " done]\n" << std::flush;
}

void ConsoleProgress::round_aggregated(std::uint64_t round, bool final,
                                       const std::map<std::string, double>& metrics) {
  std::lock_guard lock(mutex_);
  if (final) {
    out_ << "final model evaluated:";
  } else {
    out_ << "round " << round + 1 << " aggregated:";
  }
  for (const auto& [k, v] : metrics) {
    out_ << "  " << k << "=" << metric_text(v);
  }
  out_ << "\n" << std::flush;
}

}  // namespace ember::kernel
