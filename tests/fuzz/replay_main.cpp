// Runs every file of the corpus folders (or single files) named on the command line through the fuzz
// target once, so the seed corpus is a regression test in every build, with or without libFuzzer.
// Exits 1 when a path cannot be read or when nothing was run (a wrong path must not pass silently).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;

// The inputs a path stands for: the regular files under a folder, sorted so runs are reproducible.
bool collect(const fs::path& path, std::vector<fs::path>& files) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    files.push_back(path);
    return true;
  }
  if (!fs::is_directory(path, ec)) {
    std::cerr << path.string() << ": no such file or folder\n";
    return false;
  }
  std::vector<fs::path> here;
  for (fs::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) {
      here.push_back(it->path());
    }
  }
  if (ec) {
    std::cerr << path.string() << ": cannot read folder: " << ec.message() << "\n";
    return false;
  }
  std::sort(here.begin(), here.end());
  files.insert(files.end(), here.begin(), here.end());
  return true;
}

bool run_one(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::cerr << file.string() << ": cannot open for reading\n";
    return false;
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // An empty input still gets a valid pointer, as libFuzzer gives it.
  static const std::uint8_t empty = 0;
  const auto* data = bytes.empty() ? &empty : reinterpret_cast<const std::uint8_t*>(bytes.data());
  LLVMFuzzerTestOneInput(data, bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " CORPUS_DIR_OR_FILE...\n";
    return 2;
  }
  std::vector<fs::path> files;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    ok = collect(argv[i], files) && ok;
  }
  std::size_t ran = 0;
  for (const auto& file : files) {
    // Named before it runs, so a crash points at its input.
    std::cout << "input " << file.string() << std::endl;
    if (run_one(file)) {
      ++ran;
    } else {
      ok = false;
    }
  }
  std::cout << "replayed " << ran << " inputs\n";
  if (ran == 0) {
    std::cerr << "no inputs found\n";
    return 1;
  }
  return ok ? 0 : 1;
}
