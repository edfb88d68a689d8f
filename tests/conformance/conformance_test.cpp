// One generic suite run over every plugin of each kind found in the build tree (real dlopen): whatever a
// plugin does, it must honour its interface's contract. New plugins are picked up without editing this file.

#include <future>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ember/applet.hpp>
#include <ember/converter.hpp>
#include <ember/launcher.hpp>
#include <ember/pipe.hpp>

#include "support.hpp"

namespace ember {
namespace {

using namespace std::chrono_literals;

// One workspace and one kernel for the whole run: components put sockets and folders in the workspace.
kernel::Kernel& shared_kernel() {
  static test::TempDir workspace;
  static auto kernel = test::kernel_with_paths({test::build_root() / "plugins"}, workspace.path());
  return *kernel;
}

std::vector<std::string> types_of(std::optional<Kind> kind) {
  std::vector<std::string> out;
  for (const auto& type : shared_kernel().registry().types()) {
    if (!kind || shared_kernel().registry().find(type)->kind == *kind) {
      out.push_back(type);
    }
  }
  return out;
}

std::string test_name(const ::testing::TestParamInfo<std::string>& param_info) {
  std::string name = param_info.param;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) {
      c = '_';
    }
  }
  return name;
}

template <class T>
std::shared_ptr<T> create(const std::string& type, const Options& options = {}) {
  auto made = shared_kernel().registry().create_as<T>(type, options, "conformance");
  EXPECT_TRUE(made) << made.error().message;
  return made ? *made : nullptr;
}

// --- every component ---

class AnyComponent : public ::testing::TestWithParam<std::string> {};

TEST_P(AnyComponent, DocumentsEveryOptionAndCreatesWithDefaults) {
  const auto* info = shared_kernel().registry().find(GetParam());
  ASSERT_NE(info, nullptr);
  EXPECT_FALSE(info->description.empty());
  for (const auto& option : info->options) {
    EXPECT_FALSE(option.doc.empty()) << option.name;
    if (!option.default_text) {
      GTEST_SKIP() << "has required options; created by its own tests";
    }
  }
  auto made = shared_kernel().registry().create(GetParam(), Options{});
  EXPECT_TRUE(made) << made.error().message;
}

TEST_P(AnyComponent, RejectsAnUnknownOption) {
  Options options;
  options.set("no_such_option_anywhere", true);
  auto made = shared_kernel().registry().create(GetParam(), options);
  ASSERT_FALSE(made);
  EXPECT_EQ(made.error().code, Errc::invalid_option);
}

INSTANTIATE_TEST_SUITE_P(All, AnyComponent, ::testing::ValuesIn(types_of(std::nullopt)), test_name);

// --- pipes ---

class PipeConformance : public ::testing::TestWithParam<std::string> {
 protected:
  // Opens the job end, then the trainer end the way a trainer process would: from a second component
  // given the job end's address, when the pipe has an `address` option.
  void open_both() {
    pipe_ = create<Pipe>(GetParam());
    ASSERT_TRUE(pipe_);
    auto job_end = pipe_->open(PipeSide::job, 10s);
    ASSERT_TRUE(job_end) << job_end.error().message;
    EXPECT_FALSE(pipe_->address().empty());
    trainer_pipe_ = pipe_;
    if (shared_kernel().registry().find(GetParam())->find_option("address") != nullptr) {
      Options options;
      options.set("address", pipe_->address());
      trainer_pipe_ = create<Pipe>(GetParam(), options);
      ASSERT_TRUE(trainer_pipe_);
    }
    auto trainer = trainer_pipe_->open(PipeSide::trainer, 10s);
    ASSERT_TRUE(trainer) << trainer.error().message;
    job_ = std::move(*job_end);
    trainer_ = std::move(*trainer);
    EXPECT_FALSE(job_->describe().empty());
  }
  std::shared_ptr<Pipe> pipe_;
  std::shared_ptr<Pipe> trainer_pipe_;
  std::unique_ptr<PipeEndpoint> job_;
  std::unique_ptr<PipeEndpoint> trainer_;
};

TEST_P(PipeConformance, DeliversFramesOfAnySizeInOrderBothWays) {
  open_both();
  for (std::size_t size : {std::size_t{1}, std::size_t{4096}, std::size_t{1} << 20}) {
    std::vector<std::byte> frame(size);
    for (std::size_t i = 0; i < size; ++i) {
      frame[i] = static_cast<std::byte>(i * 31 + size);
    }
    ASSERT_TRUE(job_->send(frame, 10s));
    auto got = trainer_->receive(10s);
    ASSERT_TRUE(got && got->has_value()) << size;
    EXPECT_EQ(**got, frame) << size;
    ASSERT_TRUE(trainer_->send(frame, 10s));
    auto back = job_->receive(10s);
    ASSERT_TRUE(back && back->has_value());
    EXPECT_EQ(**back, frame);
  }
}

TEST_P(PipeConformance, ReceiveReturnsNothingWhenIdle) {
  open_both();
  auto got = trainer_->receive(20ms);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_FALSE(got->has_value());
}

TEST_P(PipeConformance, CloseIsSeenByThePeerAfterItDrains) {
  open_both();
  const std::byte last[] = {std::byte{7}};
  ASSERT_TRUE(job_->send(last, 10s));
  job_->close();
  job_->close();  // idempotent
  auto got = trainer_->receive(10s);
  ASSERT_TRUE(got && got->has_value());
  Result<std::optional<std::vector<std::byte>>> after = std::optional<std::vector<std::byte>>();
  for (int i = 0; i < 100 && after && !after->has_value(); ++i) {
    after = trainer_->receive(100ms);
  }
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().code, Errc::closed);
}

INSTANTIATE_TEST_SUITE_P(All, PipeConformance, ::testing::ValuesIn(types_of(Kind::pipe)), test_name);

// --- launchers ---

class LauncherConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(LauncherConformance, LaunchesWaitsAndStopsIdempotently) {
  if (GetParam() == "launcher.docker") {
    // It needs a container engine and an image: tests/docker runs these checks against a real podman service.
    GTEST_SKIP() << "launcher.docker needs a container engine: covered by the docker_launcher test";
  }
  auto launcher = create<Launcher>(GetParam());
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(LaunchSpec{"conformance", {"/bin/sh", "-c", "exit 0"}, {}, {}, {}});
  ASSERT_TRUE(handle) << handle.error().message;
  EXPECT_FALSE((*handle)->id().empty());
  auto status = (*handle)->wait(30s);
  ASSERT_TRUE(status) << status.error().message;
  ASSERT_TRUE(status->has_value());
  EXPECT_TRUE((*status)->success());
  EXPECT_EQ((*handle)->state(), RunState::stopped);
  auto stopped = (*handle)->stop(1s);
  ASSERT_TRUE(stopped);
  EXPECT_EQ(*stopped, **status);
}

TEST_P(LauncherConformance, RefusesAnEmptyCommand) {
  auto launcher = create<Launcher>(GetParam());
  ASSERT_TRUE(launcher);
  auto handle = launcher->launch(LaunchSpec{"empty", {}, {}, {}, {}});
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, Errc::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(All, LauncherConformance, ::testing::ValuesIn(types_of(Kind::launcher)), test_name);

// --- applets ---

class AppletConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(AppletConformance, StartsRelaysAndStopsIdempotently) {
  auto applet = create<Applet>(GetParam());
  ASSERT_TRUE(applet);
  EXPECT_EQ(applet->state(), RunState::not_started);
  ASSERT_TRUE(applet->start());
  EXPECT_EQ(applet->state(), RunState::started);
  const std::byte message[] = {std::byte{'p'}, std::byte{'i'}, std::byte{'n'}, std::byte{'g'}};
  EXPECT_TRUE(applet->relay(message));
  ASSERT_TRUE(applet->stop(5s));
  ASSERT_TRUE(applet->stop(5s));
  EXPECT_NE(applet->state(), RunState::started);
  EXPECT_FALSE(applet->relay(message));
}

INSTANTIATE_TEST_SUITE_P(All, AppletConformance, ::testing::ValuesIn(types_of(Kind::applet)), test_name);

// --- converters ---

class ConverterConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(ConverterConformance, RoundTripsEveryDtypeByteExact) {
  auto converter = create<Converter>(GetParam());
  ASSERT_TRUE(converter);
  EXPECT_FALSE(converter->format().empty());
  for (auto dtype : {DType::BOOL, DType::U8, DType::I8, DType::I16, DType::I32, DType::I64, DType::F16,
                     DType::BF16, DType::F32, DType::F64}) {
    auto storage = std::make_shared<std::vector<std::byte>>(6 * element_size(dtype));
    for (std::size_t i = 0; i < storage->size(); ++i) {
      (*storage)[i] = static_cast<std::byte>(dtype == DType::BOOL ? i % 2 : i * 7 + 1);
    }
    WireTensor wire{"t", dtype, {2, 3}, *storage, storage};
    auto native = converter->to_native(wire);
    ASSERT_TRUE(native) << to_string(dtype) << ": " << native.error().message;
    EXPECT_EQ(native->format, converter->format());
    auto back = converter->to_wire(*native, "t");
    ASSERT_TRUE(back) << to_string(dtype) << ": " << back.error().message;
    EXPECT_EQ(back->dtype, dtype);
    EXPECT_EQ(back->shape, wire.shape);
    ASSERT_EQ(back->bytes.size(), storage->size());
    EXPECT_TRUE(std::equal(back->bytes.begin(), back->bytes.end(), storage->begin())) << to_string(dtype);
  }
}

INSTANTIATE_TEST_SUITE_P(All, ConverterConformance, ::testing::ValuesIn(types_of(Kind::converter)),
                         test_name);

}  // namespace
}  // namespace ember
