#include "session/bootstrap.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace ember::session {
namespace {

using nlohmann::json;

std::int64_t to_ms(std::chrono::milliseconds d) {
  return static_cast<std::int64_t>(d.count());
}

// Options keep their type on the way through: {"name": {"string": "x"}}, {"n": {"duration_ms": 30000}}.
json encode_options(const Options& options) {
  json out = json::object();
  for (const auto& [name, value] : options.values()) {
    json v;
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::string>) {
            v["string"] = x;
          } else if constexpr (std::is_same_v<T, std::int64_t>) {
            v["integer"] = x;
          } else if constexpr (std::is_same_v<T, double>) {
            v["number"] = x;
          } else if constexpr (std::is_same_v<T, bool>) {
            v["boolean"] = x;
          } else if constexpr (std::is_same_v<T, std::chrono::milliseconds>) {
            v["duration_ms"] = to_ms(x);
          } else {
            v["string_list"] = x;
          }
        },
        value);
    out[name] = std::move(v);
  }
  return out;
}

json encode_ref(const ComponentRef& ref) {
  return json{{"type", ref.type}, {"file", ref.file.string()}, {"options", encode_options(ref.options)}};
}

class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  Error bad(const std::string& key, const std::string& what) const {
    return Error{Errc::invalid_config, file_ + ": key '" + key + "': " + what};
  }

  Result<const json*> at(const json& object, const std::string& key, const std::string& path) const {
    auto it = object.find(key);
    if (it == object.end()) {
      return fail(bad(path, "missing"));
    }
    return &*it;
  }

  Result<std::string> string(const json& object, const std::string& key, const std::string& path) const {
    auto v = at(object, key, path);
    if (!v) {
      return fail(std::move(v.error()));
    }
    if (!(*v)->is_string()) {
      return fail(bad(path, "must be a string"));
    }
    return (*v)->get<std::string>();
  }

  Result<std::int64_t> integer(const json& object, const std::string& key, const std::string& path) const {
    auto v = at(object, key, path);
    if (!v) {
      return fail(std::move(v.error()));
    }
    if (!(*v)->is_number_integer()) {
      return fail(bad(path, "must be an integer"));
    }
    return (*v)->get<std::int64_t>();
  }

  Result<Options> options(const json& object, const std::string& path) const {
    if (!object.is_object()) {
      return fail(bad(path, "must be an object"));
    }
    Options out;
    for (const auto& [name, tagged] : object.items()) {
      std::string key = path + "." + name;
      if (!tagged.is_object() || tagged.size() != 1) {
        return fail(bad(key, "must be an object with one typed value"));
      }
      // The one entry of the tagged value (items() would hand out a proxy of a temporary iterator).
      auto entry = tagged.begin();
      const std::string tag = entry.key();
      const json& v = entry.value();
      if (tag == "string" && v.is_string()) {
        out.set(name, v.get<std::string>());
      } else if (tag == "integer" && v.is_number_integer()) {
        out.set(name, v.get<std::int64_t>());
      } else if (tag == "number" && v.is_number()) {
        out.set(name, v.get<double>());
      } else if (tag == "boolean" && v.is_boolean()) {
        out.set(name, v.get<bool>());
      } else if (tag == "duration_ms" && v.is_number_integer()) {
        out.set(name, std::chrono::milliseconds(v.get<std::int64_t>()));
      } else if (tag == "string_list" && v.is_array()) {
        std::vector<std::string> list;
        for (const auto& item : v) {
          if (!item.is_string()) {
            return fail(bad(key, "string_list holds a non-string"));
          }
          list.push_back(item.get<std::string>());
        }
        out.set(name, std::move(list));
      } else {
        return fail(bad(key, "unknown or mistyped value tag '" + tag + "'"));
      }
    }
    return out;
  }

  Result<ComponentRef> ref(const json& object, const std::string& path) const {
    if (!object.is_object()) {
      return fail(bad(path, "must be an object"));
    }
    ComponentRef ref;
    auto type = string(object, "type", path + ".type");
    auto file = string(object, "file", path + ".file");
    auto opts = at(object, "options", path + ".options");
    if (!type || !file || !opts) {
      return fail(!type ? type.error() : !file ? file.error() : opts.error());
    }
    auto parsed = options(**opts, path + ".options");
    if (!parsed) {
      return fail(std::move(parsed.error()));
    }
    return ComponentRef{*type, *file, std::move(*parsed)};
  }

 private:
  std::string file_;
};

}  // namespace

Settings settings_from(const JobTimeouts& timeouts, std::int64_t max_resends) {
  Settings s;
  s.launch = timeouts.launch;
  s.heartbeat_interval = timeouts.heartbeat_interval;
  s.heartbeat_timeout = timeouts.heartbeat_timeout;
  s.stream_idle = timeouts.stream_idle;
  s.max_resends = static_cast<int>(max_resends);
  return s;
}

Result<std::string> make_token() {
  unsigned char bytes[32];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return fail(Errc::io_error, std::string("getrandom: ") + std::strerror(errno));
    }
    got += static_cast<std::size_t>(n);
  }
  static constexpr char digits[] = "0123456789abcdef";
  std::string token;
  for (unsigned char b : bytes) {
    token += digits[b >> 4];
    token += digits[b & 15];
  }
  return token;
}

Result<void> write_bootstrap(const std::filesystem::path& file, const Bootstrap& b) {
  json doc;
  doc["format"] = bootstrap_format;
  doc["job_id"] = b.job_id;
  doc["job_name"] = b.job_name;
  doc["site"] = b.site;
  doc["token"] = b.token;
  doc["workspace"] = b.workspace.string();
  doc["pipe"] = encode_ref(b.pipe);
  doc["converters"] = json::array();
  for (const auto& c : b.converters) {
    doc["converters"].push_back(encode_ref(c));
  }
  doc["timeouts_ms"] = json{{"launch", to_ms(b.timeouts.launch)},
                            {"heartbeat_interval", to_ms(b.timeouts.heartbeat_interval)},
                            {"heartbeat_timeout", to_ms(b.timeouts.heartbeat_timeout)},
                            {"task_wait", to_ms(b.timeouts.task_wait)},
                            {"result_wait", to_ms(b.timeouts.result_wait)},
                            {"shutdown_grace", to_ms(b.timeouts.shutdown_grace)},
                            {"stream_idle", to_ms(b.timeouts.stream_idle)}};
  doc["max_resends"] = b.max_resends;
  doc["plugin_paths"] = json::array();
  for (const auto& p : b.plugin_paths) {
    doc["plugin_paths"].push_back(p.string());
  }
  json config = json::parse(b.config_json, nullptr, false);
  if (config.is_discarded() || !config.is_object()) {
    return fail(Errc::invalid_argument, file.string() + ": the trainer config is not a JSON object");
  }
  doc["config"] = std::move(config);
  doc["task_names"] = json{{"train", b.task_names.train},
                           {"evaluate", b.task_names.evaluate},
                           {"submit_model", b.task_names.submit_model}};
  std::string text = doc.dump(2) + "\n";

  auto tmp = file;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return fail(Errc::io_error, tmp.string() + ": cannot create: " + std::strerror(errno));
  }
  ::fchmod(fd, 0600);  // O_CREAT's mode is only for new files
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return fail(Errc::io_error, tmp.string() + ": write failed: " + std::strerror(err));
    }
    done += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0 || ::rename(tmp.c_str(), file.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return fail(Errc::io_error, file.string() + ": cannot write: " + std::strerror(err));
  }
  return ok();
}

Result<Bootstrap> read_bootstrap(const std::filesystem::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    return fail(Errc::not_found, file.string() + ": cannot read the bootstrap file: " + std::strerror(errno));
  }
  if ((st.st_mode & 077) != 0) {
    return fail(Errc::invalid_config, file.string() +
                                          ": the bootstrap file holds the session token and must "
                                          "not be readable by group or others (mode 0600)");
  }
  if (st.st_size > (1 << 20)) {
    return fail(Errc::invalid_config, file.string() + ": the bootstrap file is larger than 1 MiB");
  }
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  json doc = json::parse(text.str(), nullptr, false);
  const std::string name = file.string();
  if (doc.is_discarded() || !doc.is_object()) {
    return fail(Errc::invalid_config, name + ": not a JSON object");
  }
  Reader r(name);
  Bootstrap b;
  auto format = r.string(doc, "format", "format");
  if (!format) {
    return fail(std::move(format.error()));
  }
  if (*format != bootstrap_format) {
    return fail(r.bad("format", "is '" + *format + "', this Client API reads '" + bootstrap_format + "'"));
  }
  for (auto [key, out] : {std::pair{"job_id", &b.job_id}, std::pair{"job_name", &b.job_name},
                          std::pair{"site", &b.site}, std::pair{"token", &b.token}}) {
    auto v = r.string(doc, key, key);
    if (!v) {
      return fail(std::move(v.error()));
    }
    *out = *v;
  }
  if (b.token.size() < 32) {
    return fail(r.bad("token", "is too short"));
  }
  auto workspace = r.string(doc, "workspace", "workspace");
  if (!workspace) {
    return fail(std::move(workspace.error()));
  }
  b.workspace = *workspace;
  auto pipe = r.at(doc, "pipe", "pipe");
  if (!pipe) {
    return fail(std::move(pipe.error()));
  }
  auto pipe_ref = r.ref(**pipe, "pipe");
  if (!pipe_ref) {
    return fail(std::move(pipe_ref.error()));
  }
  b.pipe = std::move(*pipe_ref);
  auto converters = r.at(doc, "converters", "converters");
  if (!converters || !(*converters)->is_array()) {
    return fail(converters ? r.bad("converters", "must be an array") : converters.error());
  }
  for (std::size_t i = 0; i < (*converters)->size(); ++i) {
    auto ref = r.ref((**converters)[i], "converters[" + std::to_string(i) + "]");
    if (!ref) {
      return fail(std::move(ref.error()));
    }
    b.converters.push_back(std::move(*ref));
  }
  auto timeouts = r.at(doc, "timeouts_ms", "timeouts_ms");
  if (!timeouts || !(*timeouts)->is_object()) {
    return fail(timeouts ? r.bad("timeouts_ms", "must be an object") : timeouts.error());
  }
  for (auto [key, out] :
       {std::pair{"launch", &b.timeouts.launch},
        std::pair{"heartbeat_interval", &b.timeouts.heartbeat_interval},
        std::pair{"heartbeat_timeout", &b.timeouts.heartbeat_timeout},
        std::pair{"task_wait", &b.timeouts.task_wait}, std::pair{"result_wait", &b.timeouts.result_wait},
        std::pair{"shutdown_grace", &b.timeouts.shutdown_grace},
        std::pair{"stream_idle", &b.timeouts.stream_idle}}) {
    auto v = r.integer(**timeouts, key, std::string("timeouts_ms.") + key);
    if (!v) {
      return fail(std::move(v.error()));
    }
    if (*v <= 0) {
      return fail(r.bad(std::string("timeouts_ms.") + key, "must be positive"));
    }
    *out = std::chrono::milliseconds(*v);
  }
  auto resends = r.integer(doc, "max_resends", "max_resends");
  if (!resends) {
    return fail(std::move(resends.error()));
  }
  b.max_resends = *resends;
  auto paths = r.at(doc, "plugin_paths", "plugin_paths");
  if (!paths || !(*paths)->is_array()) {
    return fail(paths ? r.bad("plugin_paths", "must be an array") : paths.error());
  }
  for (const auto& p : **paths) {
    if (!p.is_string()) {
      return fail(r.bad("plugin_paths", "must hold strings"));
    }
    b.plugin_paths.emplace_back(p.get<std::string>());
  }
  // Optional keys (a job older than them writes none): the trainer config and the task names.
  if (auto config = doc.find("config"); config != doc.end()) {
    if (!config->is_object()) {
      return fail(r.bad("config", "must be an object"));
    }
    b.config_json = config->dump();
  }
  if (auto names = doc.find("task_names"); names != doc.end()) {
    if (!names->is_object()) {
      return fail(r.bad("task_names", "must be an object"));
    }
    for (auto [key, out] :
         {std::pair{"train", &b.task_names.train}, std::pair{"evaluate", &b.task_names.evaluate},
          std::pair{"submit_model", &b.task_names.submit_model}}) {
      if (names->contains(key)) {
        auto v = r.string(*names, key, std::string("task_names.") + key);
        if (!v) {
          return fail(std::move(v.error()));
        }
        if (v->empty()) {
          return fail(r.bad(std::string("task_names.") + key, "must not be empty"));
        }
        *out = *v;
      }
    }
  }
  return b;
}

}  // namespace ember::session
