#pragma once
// libsystemd's daemon and journal APIs (Debian: libsystemd-dev). Only non-variadic entry points are
// used from Swift: sd_notify, sd_watchdog_enabled, sd_listen_fds_with_names, sd_journal_sendv.
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
