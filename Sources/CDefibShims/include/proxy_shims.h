#pragma once

/// Names the calling thread (at most 15 bytes are kept), so the proxy's threads are labelled in
/// gdb, /proc/PID/task/TID/comm and cores. Returns 0 or an errno value.
int defib_proxy_set_thread_name(const char *name);
