#pragma once
// The pieces of the session's work, timed alone in one process (see pieces.cpp).

#include <string>
#include <vector>

namespace ember::bench {

struct Piece {
  std::string id;
  std::string label;
  double median_us = 0;   ///< per call
  std::size_t bytes = 0;  ///< the chunk a call works on (0: not a piece of per-byte work)
};

/// Times each per-chunk piece on a chunk of `bytes` and the thread hand-off, `repeats` times after a
/// warm-up; medians.
std::vector<Piece> measure_pieces(std::size_t bytes, int repeats);

}  // namespace ember::bench
