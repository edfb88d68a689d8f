#include "session_settings.hpp"

#include "duration.hpp"

namespace ember::kernel {

session::Settings session_settings(const Timeouts& timeouts, const SessionSettings& session) {
  session::Settings s;
  s.launch = timeouts.launch;
  s.heartbeat_interval = timeouts.heartbeat_interval;
  s.heartbeat_timeout = timeouts.heartbeat_timeout;
  s.stream_idle = timeouts.stream_idle;
  s.max_resends = static_cast<int>(session.max_resends);
  return s;
}

std::string describe(const session::Settings& s) {
  return "launch=" + format_duration(s.launch) +
         " heartbeat_interval=" + format_duration(s.heartbeat_interval) +
         " heartbeat_timeout=" + format_duration(s.heartbeat_timeout) +
         " stream_idle=" + format_duration(s.stream_idle) + " close_bound=" + format_duration(s.close_bound) +
         " max_resends=" + std::to_string(s.max_resends) + " chunk_size=" + std::to_string(s.chunk_size);
}

}  // namespace ember::kernel
