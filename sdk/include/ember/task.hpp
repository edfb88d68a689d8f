#pragma once
// Tasks and their results, as workflows send them to sites and executors answer them.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ember/tensor.hpp>

namespace ember {

/// Well-known task names.
namespace tasks {
inline constexpr const char* train = "train";
inline constexpr const char* evaluate = "evaluate";
inline constexpr const char* submit_model = "submit_model";
}  // namespace tasks

/// Whether the params are the whole model or a difference to the one received.
enum class ParamsType : std::uint32_t { full = 0, diff = 1 };

/// A task for a site, or a site's answer to one: named tensors plus metrics and free-form meta. A value type
/// (reentrant); one task is read by several sites' threads at once, and nobody writes it meanwhile.
struct TaskData {
  std::string name;                ///< task name: any UTF-8 text, e.g. "train"
  std::uint64_t round = 0;         ///< current round, from 0
  std::uint64_t total_rounds = 0;  ///< rounds planned, 0 if unknown
  ParamsType params_type = ParamsType::full;
  std::vector<WireTensor> params;           ///< the model's named tensors
  std::map<std::string, double> metrics;    ///< e.g. "loss", "accuracy", "num_samples"
  std::map<std::string, std::string> meta;  ///< anything else, as text
};

}  // namespace ember
