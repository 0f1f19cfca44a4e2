#pragma once
#include <stddef.h>
#include <sys/types.h>

/// A non-blocking, close-on-exec AF_UNIX datagram socket bound to `path` (an existing file there is
/// removed first) with SO_PASSCRED on, so every message carries its sender's credentials — the
/// socket the supervisor serves as NOTIFY_SOCKET to its child. Returns the fd or -1 (errno set).
int defib_notify_socket_bind(const char *path);

/// Receives one datagram (up to `len` bytes) with the sender's pid/uid/gid from SCM_CREDENTIALS.
/// Descriptors passed along (FDSTORE=1) are closed: we do not keep them. Returns the byte count,
/// 0 when nothing is pending, -1 on error (errno set). *pid is 0 when no credentials came along.
/// *truncated is 1 when the datagram was longer than `len`.
ssize_t defib_notify_recv(int fd, char *buf, size_t len, pid_t *pid, uid_t *uid, gid_t *gid, int *truncated);

/// A listening TCP socket bound to host:port (IPv4 or IPv6 literal), SO_REUSEADDR, close-on-exec,
/// with the given backlog. Returns the fd or -1 with errno set and *stage naming the failing call.
int defib_listen_tcp(const char *host, int port, int backlog, const char **stage);
