#pragma once
// From a job's [timeouts] and [session] tables to the session layer's settings.

#include "config.hpp"
#include "session/session.hpp"

namespace ember::kernel {

/// The session settings a job's config asks for; the rest keep the session's defaults. The config loader
/// has already checked the invariants (interval < timeout, bounded resends, stream_idle ≥ interval).
session::Settings session_settings(const Timeouts& timeouts, const SessionSettings& session);

/// One line per effective value, for the log at job start ("heartbeat_timeout=30s ...").
std::string describe(const session::Settings& settings);

}  // namespace ember::kernel
