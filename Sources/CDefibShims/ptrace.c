#define _GNU_SOURCE
#include "ptrace_shims.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

int defib_ptrace_seize(pid_t tid) {
    return (int)ptrace(PTRACE_SEIZE, tid, NULL, NULL);
}

int defib_ptrace_interrupt(pid_t tid) {
    return (int)ptrace(PTRACE_INTERRUPT, tid, NULL, NULL);
}

int defib_ptrace_detach(pid_t tid, int sig) {
    return (int)ptrace(PTRACE_DETACH, tid, NULL, (void *)(uintptr_t)sig);
}

long defib_ptrace_getregset(pid_t tid, int type, void *buffer, size_t length) {
    struct iovec iov = { buffer, length };
    if (ptrace(PTRACE_GETREGSET, tid, (void *)(uintptr_t)type, &iov) != 0) return -1;
    return (long)iov.iov_len;
}

int defib_wait_thread(pid_t tid, int consume_exit, defib_wait_result *out) {
    memset(out, 0, sizeof *out);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int r;
    // Peek first: consuming the leader's death would steal it from the supervisor's waitpid(-1).
    do { r = waitid(P_PID, (id_t)tid, &info, WEXITED | WSTOPPED | WNOHANG | WNOWAIT | __WALL); } while (r < 0 && errno == EINTR);
    if (r < 0) return -1;
    if (info.si_pid == 0) return 0;
    int is_death = info.si_code == CLD_EXITED || info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED;
    if (is_death && !consume_exit) {
        out->kind = DEFIB_WAIT_EXITED;
        if (info.si_code == CLD_EXITED) out->code = info.si_status; else out->sig = info.si_status;
        return 0;
    }
    int status = 0;
    pid_t p;
    do { p = waitpid(tid, &status, WNOHANG | __WALL); } while (p < 0 && errno == EINTR);
    if (p < 0) return -1;
    if (p == 0) return 0;
    out->consumed = 1;
    if (WIFSTOPPED(status)) {
        out->kind = DEFIB_WAIT_STOPPED;
        out->sig = WSTOPSIG(status);
        out->event = (status >> 16) & 0xffff;
    } else if (WIFEXITED(status)) {
        out->kind = DEFIB_WAIT_EXITED;
        out->code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        out->kind = DEFIB_WAIT_EXITED;
        out->sig = WTERMSIG(status);
    }
    return 0;
}

int defib_tgkill(pid_t tgid, pid_t tid, int sig) {
    return (int)syscall(SYS_tgkill, tgid, tid, sig);
}

int defib_prlimit_core_raise(pid_t pid, uint64_t *old_soft, uint64_t *new_soft, uint64_t *hard) {
    struct rlimit old;
    if (prlimit(pid, RLIMIT_CORE, NULL, &old) != 0) return -1;
    *old_soft = old.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)old.rlim_cur;
    *hard = old.rlim_max == RLIM_INFINITY ? UINT64_MAX : (uint64_t)old.rlim_max;
    struct rlimit raised = { old.rlim_max, old.rlim_max };
    if (prlimit(pid, RLIMIT_CORE, &raised, NULL) != 0) return -1;
    *new_soft = *hard;
    return 0;
}

int defib_is_zero(const void *p, size_t length) {
    const uint64_t *w = (const uint64_t *)p;
    size_t n = length / 8;
    // Eight words per step: the compiler turns this into wide vector compares.
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        if ((w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7]) != 0) return 0;
    }
    for (; i < n; i++) if (w[i] != 0) return 0;
    return 1;
}
