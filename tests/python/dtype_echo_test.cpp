// Every wire dtype through a Python trainer and back, bit for bit, with no aggregation in between (BOOL
// included, which FedAvg cannot average): this test plays the job end (pipe.socket, the session, a bootstrap
// file) and tests/python/echo_trainer.py echoes each task's tensors as it received them, as NumPy arrays or
// as torch tensors. Skipped (77) when the interpreter lacks NumPy (or torch, for its case).

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cstdlib>
#include <thread>

#include <gtest/gtest.h>

#include "session/bootstrap.hpp"
#include "session/bundle.hpp"
#include "session/session.hpp"
#include "support.hpp"

extern char** environ;

namespace ember {
namespace {

using namespace std::chrono_literals;
using wire::Op;

bool python_has(const std::string& module) {
  std::string command = std::string(EMBER_TEST_PYTHON) + " -c 'import " + module + "' 2>/dev/null";
  return std::system(command.c_str()) == 0;
}

// Bytes that are valid for `dtype` (booleans are 0 or 1), different for every tensor.
WireTensor tensor(const std::string& name, DType dtype, std::vector<std::int64_t> shape, unsigned seed) {
  WireTensor t{name, dtype, std::move(shape), {}, {}};
  auto bytes = std::make_shared<std::vector<std::byte>>(*t.element_count() * element_size(dtype));
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& b : *bytes) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<std::byte>(dtype == DType::BOOL ? (x >> 16) & 1 : x >> 24);
  }
  t.bytes = *bytes;
  t.owner = bytes;
  return t;
}

class DtypeEcho : public ::testing::TestWithParam<std::string> {};

TEST_P(DtypeEcho, EveryDtypeComesBackBitForBit) {
  if (const char* sanitized = std::getenv("EMBER_TEST_SANITIZED"); sanitized != nullptr && *sanitized != 0) {
    GTEST_SKIP() << "a sanitizer build: " << EMBER_TEST_PYTHON << " cannot load the instrumented extension";
  }
  if (!python_has("numpy") || (GetParam() == "torch" && !python_has("torch"))) {
    GTEST_SKIP() << EMBER_TEST_PYTHON << " lacks numpy or torch";
  }
  test::TempDir ws;
  auto kernel = test::kernel_with_paths({test::build_root() / "plugins"}, ws.path());
  Options options;
  options.set("address", "unix:" + (ws.path() / "echo.sock").string());
  auto pipe = kernel->registry().create_as<Pipe>("pipe.socket", options, "echo");
  ASSERT_TRUE(pipe) << pipe.error().message;
  auto token = session::make_token();
  ASSERT_TRUE(token);
  auto end = (*pipe)->open(PipeSide::job, 5s, session::admit_hello(*token));
  ASSERT_TRUE(end) << end.error().message;

  session::Bootstrap b;
  b.job_id = "echo";
  b.job_name = "echo";
  b.site = "site-1";
  b.token = *token;
  b.workspace = ws.path();
  b.pipe = session::ComponentRef{"pipe.socket", {}, options};
  b.pipe.options.set("address", (*pipe)->address());
  b.timeouts.launch = 30s;
  b.timeouts.heartbeat_interval = 500ms;
  b.timeouts.heartbeat_timeout = 10s;
  b.timeouts.task_wait = 30s;
  b.plugin_paths = {test::build_root() / "plugins"};
  auto bootstrap = ws.path() / "bootstrap.json";
  ASSERT_TRUE(session::write_bootstrap(bootstrap, b));

  std::string env_bootstrap = "EMBER_BOOTSTRAP=" + bootstrap.string();
  std::vector<char*> env{env_bootstrap.data()};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).rfind("EMBER_BOOTSTRAP=", 0) != 0) {
      env.push_back(*e);
    }
  }
  env.push_back(nullptr);
  std::string python = EMBER_TEST_PYTHON, script = EMBER_TEST_ECHO_TRAINER, format = GetParam();
  std::vector<char*> argv{python.data(), script.data(), format.data(), nullptr};
  pid_t pid = -1;
  ASSERT_EQ(::posix_spawn(&pid, python.c_str(), nullptr, nullptr, argv.data(), env.data()), 0);
  struct Reap {
    pid_t pid;
    ~Reap() {
      if (pid > 0) {  // never kill(-1, ...)
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    }
  } reap{pid};

  session::Settings settings = session::settings_from(b.timeouts, 3);
  session::Session job(session::Role::job, std::move(*end), settings, kernel->logs().get("echo"));
  auto inbox = std::make_shared<session::BundleInbox>();
  job.set_sink_factory(inbox->sink_factory());
  auto hello = job.accept(*token);
  ASSERT_TRUE(hello) << hello.error().message;

  TaskData task;
  task.name = "train";
  unsigned seed = 0;
  for (auto dtype : {DType::BOOL, DType::U8, DType::I8, DType::I16, DType::U16, DType::I32, DType::U32,
                     DType::I64, DType::U64, DType::F16, DType::BF16, DType::F32, DType::F64}) {
    task.params.push_back(tensor(std::string(to_string(dtype)), dtype, {3, 5}, ++seed));
  }
  task.params.push_back(tensor("scalar", DType::F32, {}, ++seed));
  task.params.push_back(tensor("empty", DType::F32, {0, 4}, ++seed));
  auto payload = session::task_payload(task);
  ASSERT_TRUE(payload) << payload.error().message;
  auto sent = job.send(Op::task_ready, "train", {}, *payload);
  ASSERT_TRUE(sent) << sent.error().message;

  std::optional<TaskData> result;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (!result && std::chrono::steady_clock::now() < deadline) {
    auto got = job.receive(200ms);
    ASSERT_TRUE(got) << got.error().message;
    if (!*got) {
      continue;
    }
    auto& m = **got;
    ASSERT_NE(m.op, Op::task_failed) << *m.header("reason");
    if (m.op == Op::result_ready) {
      auto taken = inbox->take(m);
      ASSERT_TRUE(taken) << taken.error().message;
      result = std::move(*taken);
      ASSERT_TRUE(job.send(Op::result_accepted, "train", {}, nullptr, m.msg_id));
    }
  }
  ASSERT_TRUE(result) << "no result within 60 s";
  ASSERT_EQ(result->params.size(), task.params.size());
  for (const auto& sent_tensor : task.params) {
    const WireTensor* back = nullptr;
    for (const auto& t : result->params) {
      back = t.name == sent_tensor.name ? &t : back;
    }
    ASSERT_NE(back, nullptr) << sent_tensor.name;
    EXPECT_EQ(back->dtype, sent_tensor.dtype) << sent_tensor.name;
    EXPECT_EQ(back->shape, sent_tensor.shape) << sent_tensor.name;
    EXPECT_TRUE(std::equal(back->bytes.begin(), back->bytes.end(), sent_tensor.bytes.begin(),
                           sent_tensor.bytes.end()))
        << sent_tensor.name << " changed on its way through Python";
  }
  EXPECT_EQ(result->metrics.at("tensors"), static_cast<double>(task.params.size()));
  job.close(Op::shutdown, "done");
  int status = -1;
  for (int i = 0; i < 1000 && ::waitpid(pid, &status, WNOHANG) != pid; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  reap.pid = -1;
  ASSERT_TRUE(WIFEXITED(status)) << "the trainer did not end after SHUTDOWN";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: a received tensor was a copy";
}

INSTANTIATE_TEST_SUITE_P(Formats, DtypeEcho, ::testing::Values("numpy", "torch"));

}  // namespace
}  // namespace ember
