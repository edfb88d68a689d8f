#pragma once
// The two ends of pipe.socket: the job end listens and admits one peer, the trainer end connects.

#include <chrono>
#include <cstddef>
#include <memory>
#include <stop_token>

#include <ember/logger.hpp>
#include <ember/pipe.hpp>

#include "address.hpp"

namespace ember::socket_pipe {

/// What both ends take from the component's options.
struct EndpointSettings {
  std::shared_ptr<Logger> logger;
  std::size_t max_frame = 0;  ///< max_frame_bytes
  int socket_buffer = 0;      ///< socket_buffer_bytes (0: the system's default)
};

/// Opens the job end: listens at `address` and returns at once. For a TCP address with port 0 the port
/// bind() picked is written back into `address`. The first send() or receive() waits for a peer.
Result<std::unique_ptr<PipeEndpoint>> open_job_end(Address& address, const EndpointSettings& settings,
                                                   const PeerAdmission& admit);

/// Opens the trainer end: connects to `address`, retrying while nothing listens there yet, for at most
/// `timeout` (or until `stop` is requested).
Result<std::unique_ptr<PipeEndpoint>> open_trainer_end(const Address& address,
                                                       const EndpointSettings& settings,
                                                       std::chrono::milliseconds timeout,
                                                       const std::stop_token& stop);

}  // namespace ember::socket_pipe
