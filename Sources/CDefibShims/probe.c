#define _GNU_SOURCE
#include "probe_shims.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

int defib_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int defib_epoll_add(int epfd, int fd) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void decode(const siginfo_t *info, int *exited, int *code, int *signaled, int *sig) {
    *exited = 0; *code = 0; *signaled = 0; *sig = 0;
    if (info->si_code == CLD_EXITED) { *exited = 1; *code = info->si_status; }
    else { *signaled = 1; *sig = info->si_status; }
}

int defib_pidfd_wait(int pidfd, int peek, int *exited, int *code, int *signaled, int *sig) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int options = WEXITED | WNOHANG | (peek ? WNOWAIT : 0);
    int rc;
    do { rc = waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, options); } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -1;
    if (info.si_pid == 0) return 0;
    decode(&info, exited, code, signaled, sig);
    return 1;
}

pid_t defib_peek_ended_child(void) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int rc;
    do { rc = waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL); } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -1;
    return info.si_pid;
}

pid_t defib_reap_pid(pid_t pid, int *exited, int *code, int *signaled, int *sig, int *core_dumped) {
    int status = 0;
    pid_t r;
    do { r = waitpid(pid, &status, WNOHANG | __WALL); } while (r < 0 && errno == EINTR);
    *exited = 0; *code = 0; *signaled = 0; *sig = 0; *core_dumped = 0;
    if (r > 0) {
        if (WIFEXITED(status)) { *exited = 1; *code = WEXITSTATUS(status); }
        else if (WIFSIGNALED(status)) { *signaled = 1; *sig = WTERMSIG(status); *core_dumped = WCOREDUMP(status) ? 1 : 0; }
    }
    return r;
}

int defib_probe_pipe(int fds[2]) {
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    int flags = fcntl(fds[0], F_GETFL);
    if (flags < 0 || fcntl(fds[0], F_SETFL, flags | O_NONBLOCK) != 0) {
        int e = errno; close(fds[0]); close(fds[1]); errno = e;
        return -1;
    }
    return 0;
}
