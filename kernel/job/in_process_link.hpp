#pragma once
// The link of `ember simulate`: the server job and its client jobs in one process, a task handed over by a
// function call on the server job's worker thread.

#include <map>
#include <string>
#include <vector>

#include "client_job.hpp"
#include "link.hpp"

namespace ember::kernel {

/// Reaches client jobs living in this process. The client jobs must outlive the link.
///
/// Thread-safe, as Link.
class InProcessLink final : public Link {
 public:
  /// Reaches each of `jobs` by its site name; sites() lists them in this order.
  explicit InProcessLink(const std::vector<ClientJob*>& jobs);

  std::vector<std::string> sites() const override;
  Result<TaskData> execute(const std::string& site, const TaskData& task, std::stop_token stop) override;

 private:
  std::vector<std::string> order_;  // as given: site-1 .. site-N, not the map's text order
  std::map<std::string, ClientJob*, std::less<>> jobs_;
};

}  // namespace ember::kernel
