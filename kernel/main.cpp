#include <iostream>

#include "cli.hpp"

int main(int argc, char** argv) {
  return ember::kernel::run_cli(argc, argv, std::cout, std::cerr);
}
