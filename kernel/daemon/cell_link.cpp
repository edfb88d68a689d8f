#include "cell_link.hpp"

#include <algorithm>

#include "codec.hpp"
#include "federation.hpp"

namespace ember::kernel::fed {
namespace {

using Clock = std::chrono::steady_clock;

Errc errc_of(cell::Rc rc) {
  switch (rc) {
    case cell::Rc::timeout:
      return Errc::timeout;
    case cell::Rc::cancelled:
    case cell::Rc::shutting_down:
      return Errc::cancelled;
    case cell::Rc::malformed:
      return Errc::malformed;
    case cell::Rc::unauthenticated:
      return Errc::rejected;
    default:
      return Errc::peer_gone;
  }
}

}  // namespace

CellLink::CellLink(cell::Cell& cell, std::string job_id, std::vector<std::string> sites, JobTimeouts timeouts)
    : cell_(cell), job_id_(std::move(job_id)), sites_(std::move(sites)), timeouts_(timeouts) {}

Result<TaskData> CellLink::execute(const std::string& site, const TaskData& task, std::stop_token stop) {
  if (std::find(sites_.begin(), sites_.end(), site) == sites_.end()) {
    return fail(Errc::not_found, "no site '" + site + "' in job " + job_id_);
  }
  auto bytes = encode_task(task);
  if (!bytes) {
    return fail(std::move(bytes.error()));
  }
  const std::string target = site + "." + job_id_;
  // A task waits to be accepted, then for its result; the transfer itself is bounded by stream_idle on
  // every hop.
  const auto bound = timeouts_.task_wait + timeouts_.result_wait + timeouts_.stream_idle;
  const auto start_deadline = Clock::now() + timeouts_.launch;
  for (;;) {
    auto reply = cell_.request(target, topic::task, {}, *bytes, bound, stop);
    bool up = false;
    {
      std::lock_guard lock(mutex_);
      up = up_.contains(site);
      if (reply.ok()) {
        up_.insert(site);
      }
    }
    if (reply.ok()) {
      if (auto error = get_error(reply.message.headers)) {
        return fail(std::move(*error));
      }
      return decode_task(reply.message.payload, target + ": result of task '" + task.name + "'");
    }
    const bool starting = !up && (reply.rc == cell::Rc::unreachable || reply.rc == cell::Rc::no_handler);
    if (!starting || Clock::now() >= start_deadline) {
      std::string why = reply.reason;
      if (starting) {
        why = "its client job did not come up within the launch bound (" +
              std::to_string(timeouts_.launch.count()) + " ms): " + why;
      }
      return fail(errc_of(reply.rc), site + ": task '" + task.name + "': " + why);
    }
    if (!sleep_for(std::chrono::milliseconds(200), stop)) {
      return fail(Errc::cancelled, site + ": task '" + task.name + "' cancelled while its job was starting");
    }
  }
}

}  // namespace ember::kernel::fed
