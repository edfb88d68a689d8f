// ember-test-trainer: a training program for the job tests, written against the Client API, with no ML
// library. It answers each task with its params plus one (F32), or a layout of its own when the task has
// none, and misbehaves on purpose on one site when asked to:
//   ember-test-trainer [--bad-site SITE] [--mode
//   good|sigkill|exit3|hang-before-hello|wrong-names|wrong-shapes|no-converters|wrong-token|chatter|
//   decline]
//                      [--from-round R] [--size N] [--delay-ms MS]
// It writes its pid to <workspace>/trainer.pid so a test can check that no trainer survived the job, and
// what the job told it (get_config(), the task names) to <workspace>/told.txt.

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <ember/client.hpp>

namespace {

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : fallback;
}

// A fresh F32 tensor holding `values`.
ember::WireTensor f32(std::string name, std::vector<std::int64_t> shape, std::vector<float> values) {
  auto buffer = std::make_shared<std::vector<float>>(std::move(values));
  ember::WireTensor t;
  t.name = std::move(name);
  t.dtype = ember::DType::F32;
  t.shape = std::move(shape);
  t.bytes = std::as_bytes(std::span<const float>(*buffer));
  t.owner = buffer;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  std::string bad_site, mode = "good";
  std::uint64_t from_round = 0;
  std::size_t size = 4;
  long delay_ms = 0;  // before each answer: a task that takes a while (aborts and progress to watch)
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--bad-site") {
      bad_site = argv[i + 1];
    } else if (flag == "--mode") {
      mode = argv[i + 1];
    } else if (flag == "--from-round") {
      from_round = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (flag == "--size") {
      size = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (flag == "--delay-ms") {
      delay_ms = std::strtol(argv[i + 1], nullptr, 10);
    }
  }
  const std::string site = env_or("EMBER_SITE", "");
  const bool bad = !bad_site.empty() && site == bad_site;
  std::ofstream("trainer.pid") << ::getpid() << "\n";  // the launcher starts us in the site workspace
  if (bad && mode == "hang-before-hello") {
    std::this_thread::sleep_for(std::chrono::hours(1));
    return 0;
  }
  ember::client::InitOptions init;
  if (bad && mode == "wrong-token") {
    // A trainer holding a token other than the job's: the bootstrap's token changed before init().
    std::ifstream in(env_or("EMBER_BOOTSTRAP", ""));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto key = text.find("\"token\": \"");
    if (key != std::string::npos) {
      text.insert(key + 10, "not-");
    }
    init.bootstrap = "bootstrap-with-a-wrong-token.json";
    std::ofstream(init.bootstrap) << text;
    std::filesystem::permissions(init.bootstrap,
                                 std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }
  if (bad && mode == "no-converters") {
    // A trainer that speaks no converter: the bootstrap's converter list emptied before init().
    std::ifstream in(env_or("EMBER_BOOTSTRAP", ""));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto start = text.find("\"converters\": [");
    if (start != std::string::npos) {
      auto open = text.find('[', start);
      int depth = 0;
      std::size_t end = open;
      for (; end < text.size(); ++end) {
        depth += text[end] == '[' ? 1 : text[end] == ']' ? -1 : 0;
        if (depth == 0) {
          break;
        }
      }
      text.replace(open, end - open + 1, "[]");
    }
    init.bootstrap = "bootstrap-without-converters.json";
    std::ofstream(init.bootstrap) << text;
    std::filesystem::permissions(init.bootstrap,
                                 std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }
  if (auto ready = ember::client::init(init); !ready) {
    std::fprintf(stderr, "test-trainer: init: %s\n", ready.error().message.c_str());
    std::ofstream("init-error.txt") << ready.error().message << "\n";  // what the trainer was told
    return 1;
  }
  (void)ember::client::init(init);  // a second init() warns and does nothing
  std::ofstream told("told.txt");
  told << "config " << ember::client::get_config() << "\n"
       << "lr " << ember::client::config_value("lr").value_or("none") << "\n";
  std::map<std::string, std::shared_ptr<std::vector<float>>> buffers;
  while (true) {
    auto next = ember::client::receive();
    if (!next) {
      std::fprintf(stderr, "test-trainer: receive: %s\n", next.error().message.c_str());
      return 1;
    }
    if (!*next) {
      break;
    }
    const auto& model = **next;
    const bool misbehave = bad && model.current_round >= from_round;
    if (delay_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    }
    told << "task " << ember::client::task_name() << " train " << ember::client::is_train() << " evaluate "
         << ember::client::is_evaluate() << std::endl;
    if (misbehave && mode == "decline" && model.current_round == from_round) {
      if (auto declined = ember::client::clear("not this round"); !declined) {
        std::fprintf(stderr, "test-trainer: clear: %s\n", declined.error().message.c_str());
        return 1;
      }
      continue;  // the trainer lives on: the next task comes to it
    }
    if (misbehave && mode == "sigkill") {
      ::raise(SIGKILL);
    }
    if (misbehave && mode == "poll-abort") {
      // Trains "forever", polling the abort flag as a training loop should; notes when the job aborted it.
      std::ofstream("training") << model.current_round << "\n";  // a test may stop the job now
      for (int i = 0; i < 3000 && !ember::client::abort_requested(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (ember::client::abort_requested()) {
        std::ofstream("aborted") << "abort seen in round " << model.current_round << "\n";
      }
      ember::client::shutdown();
      return 0;
    }
    if (misbehave && mode == "chatter") {
      // Trains "forever", logging a metric every few milliseconds (as a training loop does) and polling
      // the abort flag, which PEER_GONE sets too: a job that froze must not keep this process alive.
      std::ofstream("chatting") << "round " << model.current_round << "\n";
      for (int i = 0; i < 60000 && !ember::client::abort_requested(); ++i) {
        ember::client::log("step_loss", 1.0 / (i + 1), static_cast<std::uint64_t>(i));
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      ember::client::shutdown();
      return 0;
    }
    if (misbehave && mode == "exit3") {
      std::fprintf(stderr, "test-trainer: giving up with code 3\n");
      std::fflush(stderr);
      std::_Exit(3);
    }
    ember::client::FLModel result;
    result.metrics["num_samples"] = 10;
    result.metrics["loss"] = 1.0 / static_cast<double>(model.current_round + 1);
    ember::client::log("loss", result.metrics["loss"], model.current_round);
    if (model.params.empty()) {
      result.params.push_back(f32("w", {static_cast<std::int64_t>(size)}, std::vector<float>(size, 1.0f)));
    }
    const auto train_start = std::chrono::steady_clock::now();
    for (const auto& t : model.params) {
      // Like a real trainer, the model's memory is allocated once and reused every round (send() returns
      // once the job accepted the result, so the buffer is free again then).
      const std::size_t n = t.bytes.size() / sizeof(float);
      auto& buffer = buffers[t.name];
      if (!buffer || buffer->size() != n) {
        buffer = std::make_shared<std::vector<float>>(n);
      }
      const auto* in = reinterpret_cast<const float*>(t.bytes.data());
      float* out = buffer->data();
      for (std::size_t i = 0; i < n; ++i) {
        out[i] = in[i] + 1.0f;
      }
      ember::WireTensor w;
      w.name = misbehave && mode == "wrong-names" ? t.name + "_renamed" : t.name;
      w.dtype = ember::DType::F32;
      w.shape = t.shape;
      if (misbehave && mode == "wrong-shapes") {
        w.shape = {static_cast<std::int64_t>(n / 2), 2};
      }
      w.bytes = std::as_bytes(std::span<const float>(*buffer));
      w.owner = buffer;
      result.params.push_back(std::move(w));
    }
    result.metrics["train_ms"] =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - train_start).count();
    if (auto sent = ember::client::send(result); !sent) {
      std::fprintf(stderr, "test-trainer: send: %s\n", sent.error().message.c_str());
      if (sent.error().code != ember::Errc::rejected) {
        return 1;
      }
    }
  }
  ember::client::shutdown();
  return 0;
}
