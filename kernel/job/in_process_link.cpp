#include "in_process_link.hpp"

namespace ember::kernel {

InProcessLink::InProcessLink(const std::vector<ClientJob*>& jobs) {
  for (auto* job : jobs) {
    if (jobs_.emplace(job->site(), job).second) {
      order_.push_back(job->site());
    }
  }
}

std::vector<std::string> InProcessLink::sites() const {
  return order_;
}

Result<TaskData> InProcessLink::execute(const std::string& site, const TaskData& task, std::stop_token stop) {
  auto it = jobs_.find(site);
  if (it == jobs_.end()) {
    return fail(Errc::not_found, "no site '" + site + "' in this job");
  }
  return it->second->execute(task, std::move(stop));
}

}  // namespace ember::kernel
