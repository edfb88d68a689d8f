// Baseline for plugin loading: a program that only dlopen()s the .so files of the folders (or the files)
// named on its command line, with RTLD_NOW | RTLD_LOCAL as the kernel does, and does nothing else: no
// symbol lookup, no descriptor checks, no registry. Libraries are not closed, as in the kernel.
// Exits 1 if any library fails to open.

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <vector>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    fs::path arg(argv[i]);
    if (!fs::is_directory(arg, ec)) {
      files.push_back(arg);
      continue;
    }
    std::vector<fs::path> here;
    for (fs::directory_iterator it(arg, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".so" && it->is_regular_file(ec)) {
        here.push_back(it->path());
      }
    }
    std::sort(here.begin(), here.end());
    files.insert(files.end(), here.begin(), here.end());
  }
  for (const auto& file : files) {
    if (dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL) == nullptr) {
      std::fprintf(stderr, "%s\n", dlerror());
      return 1;
    }
  }
  return 0;
}
