// The pieces of the session's work, timed alone in one process, to say where the time of a transfer goes:
// per chunk a copy, the CRC-32C (on the path crc32c() takes, and forced onto each other path this CPU has),
// encoding a frame (copy + CRC) and decoding one (checks + CRC); per message the hand-off between two
// threads (the session hands every message from the caller to its writer thread, and from its reader
// thread to the caller).

#include "pieces.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "spec.hpp"
#include "wire/crc32c.hpp"
#include "wire/frame.hpp"

namespace ember::bench {

namespace {

// The median over `repeats` of the time one call of `work` takes, in microseconds.
template <typename Work>
double median_us(int repeats, Work&& work) {
  std::vector<double> samples;
  for (int i = 0; i < repeats + 3; ++i) {
    auto t0 = Clock::now();
    work();
    auto took = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    if (i >= 3) {
      samples.push_back(took);
    }
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// Keeps the compiler from dropping a computation whose result nobody reads.
template <typename T>
void keep(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

// One hand-off between two threads through a mutex and a condition variable (the session's way): half
// the median round trip of a ping-pong, in microseconds.
double handoff_us(int repeats) {
  std::mutex mutex;
  std::condition_variable changed;
  int turn = 0;  // 1: the other thread's turn; 0: ours
  const int rounds = repeats + 3;
  std::thread other([&] {
    std::unique_lock lock(mutex);
    for (int i = 0; i < rounds; ++i) {
      if (!changed.wait_for(lock, std::chrono::seconds(10), [&] { return turn == 1; })) {
        return;
      }
      turn = 0;
      changed.notify_all();
    }
  });
  std::vector<double> samples;
  for (int i = 0; i < rounds; ++i) {
    auto t0 = Clock::now();
    std::unique_lock lock(mutex);
    turn = 1;
    changed.notify_all();
    if (!changed.wait_for(lock, std::chrono::seconds(10), [&] { return turn == 0; })) {
      break;
    }
    if (i >= 3) {
      samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / 2);
    }
  }
  other.join();
  std::sort(samples.begin(), samples.end());
  return samples.empty() ? 0 : samples[samples.size() / 2];
}

}  // namespace

std::vector<Piece> measure_pieces(std::size_t bytes, int repeats) {
  const auto source = pattern_bytes(bytes);
  std::vector<std::byte> target(bytes);
  std::vector<std::byte> frame;
  wire::FrameHeader header;
  header.op = wire::Op::task_ready;
  header.flags = wire::flags::first;
  header.msg_id = 7;
  header.total_len = std::uint64_t{bytes} * 100;
  // Warm every buffer so that no piece pays the first touch of its pages.
  std::memcpy(target.data(), source.data(), bytes);
  (void)wire::encode_frame(frame, header, "bench", {}, source);
  const auto encoded = frame;

  std::vector<Piece> pieces;
  pieces.push_back({"memcpy", "memcpy of the chunk (one copy)", median_us(repeats, [&] {
                      std::memcpy(target.data(), source.data(), bytes);
                      keep(target.data());
                    })});
  pieces.push_back({"crc32c",
                    "CRC-32C of the chunk (" + std::string(wire::crc32c_path_name(wire::crc32c_path())) + ")",
                    median_us(repeats, [&] { keep(wire::crc32c(0, source)); })});
  // The paths crc32c() passes over on this CPU, forced, so one run shows what the chosen one gains.
  for (auto path : {wire::Crc32cPath::avx512, wire::Crc32cPath::crc32_3way, wire::Crc32cPath::table}) {
    if (path == wire::crc32c_path() || !wire::crc32c_path_supported(path)) {
      continue;
    }
    pieces.push_back(
        {"crc32c_" + std::string(wire::crc32c_path_name(path)),
         "CRC-32C of the chunk, forced onto the " + std::string(wire::crc32c_path_name(path)) + " path",
         median_us(repeats, [&] { keep(wire::crc32c_path_for_testing(path, 0, source)); })});
  }
  pieces.push_back(
      {"encode_frame", "wire::encode_frame of the chunk (into a reused vector)", median_us(repeats, [&] {
         (void)wire::encode_frame(frame, header, "bench", {}, source);
         keep(frame.data());
       })});
  pieces.push_back(
      {"encode_frame_fresh", "wire::encode_frame of the chunk into a new vector", median_us(repeats, [&] {
         std::vector<std::byte> fresh;
         (void)wire::encode_frame(fresh, header, "bench", {}, source);
         keep(fresh.data());
       })});
  pieces.push_back(
      {"decode_frame", "wire::decode_frame of that frame (checks + CRC)", median_us(repeats, [&] {
         auto view = wire::decode_frame(encoded);
         keep(view);
       })});
  pieces.push_back(
      {"alloc_touch", "a new vector of the chunk's size (allocate + zero-fill)", median_us(repeats, [&] {
         std::vector<std::byte> fresh(bytes);
         keep(fresh.data());
       })});
  for (auto& p : pieces) {
    p.bytes = bytes;
  }
  pieces.push_back({"thread_handoff", "hand-off to another thread (mutex + condition variable), one way",
                    handoff_us(repeats), 0});
  return pieces;
}

}  // namespace ember::bench
