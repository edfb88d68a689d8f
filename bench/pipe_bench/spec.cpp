#include "spec.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

namespace ember::bench {

std::string_view to_string(Kind kind) {
  switch (kind) {
    case Kind::throughput:
      return "throughput";
    case Kind::latency:
      return "latency";
    case Kind::rate:
      return "rate";
  }
  return "unknown";
}

std::vector<std::string> Spec::to_args() const {
  std::vector<std::string> args = {"--role",       role,
                                   "--transport",  transport,
                                   "--kind",       std::string(to_string(kind)),
                                   "--size",       std::to_string(size),
                                   "--block",      std::to_string(block),
                                   "--chunk",      std::to_string(chunk),
                                   "--warmup",     std::to_string(warmup),
                                   "--iterations", std::to_string(iterations),
                                   "--plugins",    plugins.string(),
                                   "--work",       work.string()};
  auto add = [&](const char* key, const std::string& value) {
    if (!value.empty()) {
      args.push_back(key);
      args.push_back(value);
    }
  };
  add("--result", result.string());
  add("--address", address);
  add("--token-file", token_file.string());
  add("--near-cpu", near_cpu >= 0 ? std::to_string(near_cpu) : "");
  add("--far-cpu", far_cpu >= 0 ? std::to_string(far_cpu) : "");
  return args;
}

std::string Spec::placement() const {
  if (near_cpu < 0 && far_cpu < 0) {
    return "";
  }
  return near_cpu == far_cpu ? "same-cpu" : "two-cpus";
}

Result<void> Spec::pin() const {
  const bool near = role == "job" || role == "raw-near";
  const int cpu = near ? near_cpu : far_cpu;
  if (cpu < 0) {
    return ok();
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) {
    return fail(Errc::io_error, "cannot pin the " + role + " end to CPU " + std::to_string(cpu) + ": " +
                                    std::strerror(errno));
  }
  return ok();
}

Result<Spec> Spec::parse(const std::vector<std::string>& args) {
  std::map<std::string, std::string> values;
  for (std::size_t i = 0; i < args.size(); i += 2) {
    if (!args[i].starts_with("--") || i + 1 >= args.size()) {
      return fail(Errc::invalid_argument, "expected --key value, got '" + args[i] + "'");
    }
    values[args[i].substr(2)] = args[i + 1];
  }
  Spec spec;
  try {
    for (const auto& [key, value] : values) {
      if (key == "role") {
        spec.role = value;
      } else if (key == "transport") {
        spec.transport = value;
      } else if (key == "kind") {
        if (value == "throughput") {
          spec.kind = Kind::throughput;
        } else if (value == "latency") {
          spec.kind = Kind::latency;
        } else if (value == "rate") {
          spec.kind = Kind::rate;
        } else {
          return fail(Errc::invalid_argument, "unknown --kind '" + value + "'");
        }
      } else if (key == "size") {
        spec.size = std::stoull(value);
      } else if (key == "block") {
        spec.block = std::stoull(value);
      } else if (key == "chunk") {
        spec.chunk = static_cast<std::uint32_t>(std::stoul(value));
      } else if (key == "warmup") {
        spec.warmup = std::stoull(value);
      } else if (key == "iterations") {
        spec.iterations = std::stoull(value);
      } else if (key == "plugins") {
        spec.plugins = value;
      } else if (key == "work") {
        spec.work = value;
      } else if (key == "result") {
        spec.result = value;
      } else if (key == "address") {
        spec.address = value;
      } else if (key == "token-file") {
        spec.token_file = value;
      } else if (key == "near-cpu") {
        spec.near_cpu = std::stoi(value);
      } else if (key == "far-cpu") {
        spec.far_cpu = std::stoi(value);
      } else {
        return fail(Errc::invalid_argument, "unknown option --" + key);
      }
    }
  } catch (const std::exception&) {
    return fail(Errc::invalid_argument, "a numeric option is not a number");
  }
  if (spec.role.empty() || spec.transport.empty() || spec.work.empty() || spec.block == 0 ||
      spec.chunk == 0 || spec.iterations == 0) {
    return fail(Errc::invalid_argument, "--role, --transport and --work are required; sizes must be > 0");
  }
  return spec;
}

CpuUse cpu_use(pid_t pid) {
  CpuUse use;
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  // The command name is in parentheses and may hold anything: the fields start after the last ')'.
  auto close = text.rfind(')');
  if (close == std::string::npos) {
    return use;
  }
  std::istringstream fields(text.substr(close + 2));
  std::vector<std::string> f;
  for (std::string field; fields >> field;) {
    f.push_back(field);
  }
  // Counted from field 3 (state): minflt is field 10, majflt 12, utime 14, stime 15 (proc(5)).
  if (f.size() < 13) {
    return use;
  }
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  use.minor_faults = std::stoull(f[7]);
  use.major_faults = std::stoull(f[9]);
  use.user_s = static_cast<double>(std::stoull(f[11])) / tick;
  use.system_s = static_cast<double>(std::stoull(f[12])) / tick;
  return use;
}

CpuUse operator-(const CpuUse& after, const CpuUse& before) {
  return CpuUse{after.user_s - before.user_s, after.system_s - before.system_s,
                after.minor_faults - before.minor_faults, after.major_faults - before.major_faults};
}

CpuUse operator+(const CpuUse& a, const CpuUse& b) {
  return CpuUse{a.user_s + b.user_s, a.system_s + b.system_s, a.minor_faults + b.minor_faults,
                a.major_faults + b.major_faults};
}

namespace {

nlohmann::json cpu_json(const CpuUse& use) {
  return {{"user_s", use.user_s},
          {"system_s", use.system_s},
          {"minor_faults", use.minor_faults},
          {"major_faults", use.major_faults}};
}

CpuUse cpu_from(const nlohmann::json& j) {
  return CpuUse{j.at("user_s").get<double>(), j.at("system_s").get<double>(),
                j.at("minor_faults").get<std::uint64_t>(), j.at("major_faults").get<std::uint64_t>()};
}

}  // namespace

Result<void> write_measurement(const Measurement& m, const std::filesystem::path& file) {
  nlohmann::json j = {{"seconds", m.seconds},
                      {"near_peak_kib", m.near_peak_kib},
                      {"far_peak_kib", m.far_peak_kib},
                      {"timed_wall_s", m.timed_wall_s},
                      {"near_cpu", cpu_json(m.near_cpu)},
                      {"far_cpu", cpu_json(m.far_cpu)},
                      {"resends", m.resends}};
  std::ofstream out(file);
  out << j.dump() << "\n";
  if (!out) {
    return fail(Errc::io_error, "cannot write " + file.string());
  }
  return ok();
}

Result<Measurement> read_measurement(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) {
    return fail(Errc::not_found, "no result in " + file.string());
  }
  try {
    auto j = nlohmann::json::parse(in);
    Measurement m;
    m.seconds = j.at("seconds").get<std::vector<double>>();
    m.near_peak_kib = j.at("near_peak_kib").get<std::uint64_t>();
    m.far_peak_kib = j.at("far_peak_kib").get<std::uint64_t>();
    m.timed_wall_s = j.at("timed_wall_s").get<double>();
    m.near_cpu = cpu_from(j.at("near_cpu"));
    m.far_cpu = cpu_from(j.at("far_cpu"));
    m.resends = j.at("resends").get<std::uint64_t>();
    return m;
  } catch (const std::exception& e) {
    return fail(Errc::malformed, file.string() + ": " + e.what());
  }
}

std::vector<std::byte> pattern_bytes(std::size_t n) {
  std::vector<std::byte> bytes(n);
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  for (std::size_t i = 0; i < n; i += 8) {
    // splitmix64: cheap, and nothing on the way can shortcut the bytes (no zero pages, no repeats).
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(bytes.data() + i, &z, std::min<std::size_t>(8, n - i));
  }
  return bytes;
}

}  // namespace ember::bench
