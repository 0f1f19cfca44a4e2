#define _GNU_SOURCE
#include "shims.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <linux/sched.h>
#include <stdint.h>
#include <sys/wait.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

pid_t defib_gettid(void) { return (pid_t)syscall(SYS_gettid); }

// Only async-signal-safe calls between fork and exec: the parent is multi-threaded.
static void child_fail(int errpipe, int err, const char *stage) {
    struct { int err; const char *stage; } msg = { err, stage }; // stage points into static storage: same address after fork
    ssize_t r = write(errpipe, &msg, sizeof msg);
    (void)r;
    _exit(127);
}

static void write_pid(char *slot, pid_t pid) {
    char digits[24]; int n = 0;
    do { digits[n++] = (char)('0' + pid % 10); pid /= 10; } while (pid > 0 && n < 20);
    char *p = slot + strlen("LISTEN_PID=");
    while (n > 0) *p++ = digits[--n];
    *p = '\0';
}

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

// clone3 with CLONE_INTO_CGROUP: the child is born in the cgroup. Moving it there after fork (a write to
// cgroup.procs) takes the cgroup threadgroup lock for writing, which waits for an RCU grace period: 6-21 ms
// measured here on a restart after a quiet spell, all of it on the path from detection to the replacement.
// Returns the pid, 0 in the child, -1 with errno (ENOSYS/E2BIG on kernels before 5.7, EINVAL/EOPNOTSUPP where the
// cgroup cannot take it this way).
static pid_t fork_into_cgroup(int cgroup_dir_fd) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)cgroup_dir_fd;
    return (pid_t)syscall(SYS_clone3, &args, sizeof args);
}

int defib_spawn(const defib_spawn_attr *a, pid_t *pid_out, int *err_out, const char **stage_out) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) { *err_out = errno; *stage_out = "pipe2"; return -1; }
    pid_t parent = getpid();
    // The child of a raw clone3 has glibc's view of the parent's threads, so it must make only direct system
    // calls (no set*id wrappers: they signal every thread glibc knows of). The code below does that either way.
    int born_in_cgroup = 0;
    pid_t pid = -1;
    if (a->cgroup_dir_fd >= 0) {
        pid = fork_into_cgroup(a->cgroup_dir_fd);
        if (pid >= 0) born_in_cgroup = 1;
    }
    if (pid < 0) pid = fork();
    if (pid < 0) {
        *err_out = errno; *stage_out = "fork";
        close(pipefd[0]); close(pipefd[1]);
        return -1;
    }
    if (pid == 0) {
        int errpipe = pipefd[1];
        // Into the service's cgroup before anything else: all it will ever start is born there.
        if (!born_in_cgroup && a->cgroup_procs_fd >= 0 && write(a->cgroup_procs_fd, "0", 1) != 1) child_fail(errpipe, errno, "write(cgroup.procs)");
        int top = 3 + (a->nfds > 0 ? a->nfds : 0);
        // Keep the error pipe out of the range the passed descriptors go to.
        if (errpipe < top + 64) {
            int moved = fcntl(errpipe, F_DUPFD_CLOEXEC, top + 64);
            if (moved < 0) child_fail(errpipe, errno, "fcntl(F_DUPFD_CLOEXEC)");
            errpipe = moved;
        }
        if (a->new_session && setsid() < 0) child_fail(errpipe, errno, "setsid");
        // Groups first (setgroups needs root), then the gid, then the uid: after setresuid nothing else can change.
        if (a->set_ids) {
            // Direct system calls: the child is one thread, and glibc's wrappers would try to reach the others.
            if (syscall(SYS_setgroups, (size_t)(a->ngroups > 0 ? a->ngroups : 0), a->groups) != 0) child_fail(errpipe, errno, "setgroups");
            if (syscall(SYS_setresgid, a->gid, a->gid, a->gid) != 0) child_fail(errpipe, errno, "setresgid");
            if (syscall(SYS_setresuid, a->uid, a->uid, a->uid) != 0) child_fail(errpipe, errno, "setresuid");
        }
        // After the credential change: changing credentials clears the parent-death signal (prctl(2)).
        if (a->pdeathsig > 0) {
            if (prctl(PR_SET_PDEATHSIG, a->pdeathsig) != 0) child_fail(errpipe, errno, "prctl(PR_SET_PDEATHSIG)");
            if (getppid() != parent) _exit(127); // the parent died before prctl took effect
        }
        // Reset every disposition and the mask: the child must not inherit ignored SIGINT/SIGQUIT or our blocked set.
        struct sigaction dfl; memset(&dfl, 0, sizeof dfl); dfl.sa_handler = SIG_DFL;
        for (int s = 1; s < 65; s++) { if (s != SIGKILL && s != SIGSTOP) sigaction(s, &dfl, NULL); }
        sigset_t none; sigemptyset(&none); sigprocmask(SIG_SETMASK, &none, NULL);
        // Passed descriptors: first lift them above the target range, then place them at 3, 4, …
        if (a->nfds > 0) {
            int lifted[64];
            for (int i = 0; i < a->nfds && i < 64; i++) {
                lifted[i] = fcntl(a->fds[i], F_DUPFD_CLOEXEC, top + 128);
                if (lifted[i] < 0) child_fail(errpipe, errno, "fcntl(F_DUPFD) of a passed socket");
            }
            for (int i = 0; i < a->nfds && i < 64; i++) {
                if (dup2(lifted[i], 3 + i) < 0) child_fail(errpipe, errno, "dup2 of a passed socket");
            }
        }
        if (a->stdout_fd >= 0 && dup2(a->stdout_fd, 1) < 0) child_fail(errpipe, errno, "dup2(stdout)");
        if (a->stderr_fd >= 0 && dup2(a->stderr_fd, 2) < 0) child_fail(errpipe, errno, "dup2(stderr)");
        if (a->stdin_devnull) {
            int nul = open("/dev/null", O_RDONLY);
            if (nul < 0 || dup2(nul, 0) < 0) child_fail(errpipe, errno, "open(/dev/null)");
            if (nul > 2) close(nul);
        }
        // Everything above the passed range closes on exec (including the error pipe).
        if (syscall(SYS_close_range, (unsigned)top, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
            for (int fd = top; fd < 4096; fd++) if (fd != errpipe) fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
        if (a->listen_pid_slot) write_pid(a->listen_pid_slot, getpid());
        if (a->cwd && chdir(a->cwd) != 0) child_fail(errpipe, errno, "chdir");
        execve(a->path, a->argv, a->envp);
        child_fail(errpipe, errno, "execve");
    }
    close(pipefd[1]);
    struct { int err; const char *stage; } msg;
    ssize_t n;
    do { n = read(pipefd[0], &msg, sizeof msg); } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == (ssize_t)sizeof msg) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *err_out = msg.err; *stage_out = msg.stage;
        return -1;
    }
    *pid_out = pid;
    return 0;
}

int defib_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
int defib_pidfd_send_signal(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0); }

int defib_signalfd_block(const int *sigs, int n) {
    sigset_t set; sigemptyset(&set);
    for (int i = 0; i < n; i++) sigaddset(&set, sigs[i]);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

int defib_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    if (n == (ssize_t)sizeof info) return (int)info.ssi_signo;
    if (n < 0 && errno == EAGAIN) return 0;
    return -1;
}

void defib_unblock_all_signals(void) {
    sigset_t none; sigemptyset(&none); pthread_sigmask(SIG_SETMASK, &none, NULL);
}

ssize_t defib_read_memory(pid_t pid, uint64_t address, void *buffer, size_t length) {
    struct iovec local = { buffer, length };
    struct iovec remote = { (void *)(uintptr_t)address, length };
    return process_vm_readv(pid, &local, 1, &remote, 1, 0);
}

int defib_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1); }

pid_t defib_reap_any(int *exited, int *code, int *signaled, int *sig, int *core_dumped) {
    int status = 0;
    pid_t pid;
    do { pid = waitpid(-1, &status, WNOHANG | __WALL); } while (pid < 0 && errno == EINTR);
    *exited = 0; *code = 0; *signaled = 0; *sig = 0; *core_dumped = 0;
    if (pid > 0) {
        if (WIFEXITED(status)) { *exited = 1; *code = WEXITSTATUS(status); }
        else if (WIFSIGNALED(status)) { *signaled = 1; *sig = WTERMSIG(status); *core_dumped = WCOREDUMP(status) ? 1 : 0; }
    }
    return pid;
}
