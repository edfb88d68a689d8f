#include "session_settings.hpp"

#include "duration.hpp"
#include "session/bootstrap.hpp"

namespace ember::kernel {

session::Settings session_settings(const Timeouts& timeouts, const SessionSettings& session) {
  return session::settings_from(timeouts, session.max_resends);
}

std::string describe(const session::Settings& s) {
  return "launch=" + format_duration(s.launch) +
         " heartbeat_interval=" + format_duration(s.heartbeat_interval) +
         " heartbeat_timeout=" + format_duration(s.heartbeat_timeout) +
         " stream_idle=" + format_duration(s.stream_idle) + " close_bound=" + format_duration(s.close_bound) +
         " max_resends=" + std::to_string(s.max_resends) + " chunk_size=" + std::to_string(s.chunk_size);
}

}  // namespace ember::kernel
