#pragma once
#include <sys/types.h>

/// An epoll instance (close-on-exec): one descriptor a poll loop can wait on for several (a probe's pidfd and
/// its output pipe). Returns -1 with errno on failure.
int defib_epoll_create(void);
/// Adds `fd` to `epfd` for readability (EPOLLIN). 0 or -1 with errno.
int defib_epoll_add(int epfd, int fd);

/// waitid(P_PIDFD, pidfd, WEXITED|WNOHANG [|WNOWAIT]): 1 with the decoded status when the process has ended
/// (and, without `peek`, is now reaped), 0 while it runs, -1 with errno (ECHILD: someone else reaped it).
int defib_pidfd_wait(int pidfd, int peek, int *exited, int *code, int *signaled, int *sig);

/// The pid of one ended child of the calling process, without reaping it (waitid(P_ALL, WNOWAIT|__WALL)),
/// 0 when none has ended, -1 with errno (ECHILD: no children at all).
pid_t defib_peek_ended_child(void);

/// waitpid(pid, WNOHANG|__WALL) with the decoded status: the pid when reaped, 0 while running, -1 with errno.
pid_t defib_reap_pid(pid_t pid, int *exited, int *code, int *signaled, int *sig, int *core_dumped);

/// pipe2(O_CLOEXEC) with only the read end non-blocking (the writer, a probe command, blocks as usual).
int defib_probe_pipe(int fds[2]);
