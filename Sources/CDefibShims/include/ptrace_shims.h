#pragma once
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

// Non-variadic wrappers for the native core writer and the kernel-dump capture (ptrace.c).
// Every function returns -1 with errno set on failure, like the call it wraps.

/// PTRACE_SEIZE with no options: the tracee keeps running until PTRACE_INTERRUPT.
int defib_ptrace_seize(pid_t tid);
/// PTRACE_INTERRUPT: the seized thread enters a PTRACE_EVENT_STOP as soon as it can.
int defib_ptrace_interrupt(pid_t tid);
/// PTRACE_DETACH, injecting `sig` when the thread sits in a signal-delivery-stop (0 = none).
int defib_ptrace_detach(pid_t tid, int sig);
/// PTRACE_GETREGSET of one regset (`type` is an NT_* value). Returns the bytes the kernel filled.
long defib_ptrace_getregset(pid_t tid, int type, void *buffer, size_t length);

/// What one non-blocking wait on a traced thread saw.
typedef enum {
    DEFIB_WAIT_NOTHING = 0,   ///< no state change yet
    DEFIB_WAIT_STOPPED = 1,   ///< a ptrace stop (consumed); `sig` and `event` describe it
    DEFIB_WAIT_EXITED = 2,    ///< the thread is gone (exit or signal); `sig` = terminating signal or 0
} defib_wait_kind;

typedef struct {
    defib_wait_kind kind;
    int sig;      ///< WSTOPSIG for a stop, WTERMSIG for a death
    int event;    ///< status >> 16 for a stop (PTRACE_EVENT_STOP = 128 for interrupt and group stops)
    int code;     ///< exit code when the thread exited normally
    int consumed; ///< 1 when the wait status was consumed (reaped)
} defib_wait_result;

/// Looks at `tid` without blocking (waitid WNOWAIT|__WALL). Stops are always consumed; a death is consumed only
/// when `consume_exit` is 1, so the process's own parent can still reap the thread-group leader.
int defib_wait_thread(pid_t tid, int consume_exit, defib_wait_result *out);

/// tgkill(2).
int defib_tgkill(pid_t tgid, pid_t tid, int sig);

/// prlimit(pid, RLIMIT_CORE): sets the soft limit to the hard limit (no privilege needed) and reports both
/// limits before and after. RLIM_INFINITY reads as UINT64_MAX.
int defib_prlimit_core_raise(pid_t pid, uint64_t *old_soft, uint64_t *new_soft, uint64_t *hard);

/// 1 when `length` bytes at `p` are all zero (length a multiple of 8).
int defib_is_zero(const void *p, size_t length);
