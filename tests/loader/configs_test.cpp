// Every file under configs/ is loaded and validated against the plugins in the build tree.

#include <gtest/gtest.h>

#include "config.hpp"
#include "support.hpp"

namespace ember::kernel {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> config_files() {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(test::source_root() / "configs")) {
    if (entry.is_regular_file() && entry.path().extension() == ".toml") {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(Configs, EveryShippedFileIsValid) {
  auto kernel = test::kernel_with_paths({test::build_root() / "plugins"});
  auto files = config_files();
  ASSERT_GE(files.size(), 2u);
  for (const auto& file : files) {
    auto text = read_text_file(file);
    ASSERT_TRUE(text) << text.error().message;
    if (looks_like_site(*text)) {
      auto site = load_site(file);
      EXPECT_TRUE(site) << site.error().message;
    } else {
      auto job = load_job(file, kernel->registry());
      EXPECT_TRUE(job) << job.error().message;
    }
  }
}

}  // namespace
}  // namespace ember::kernel
