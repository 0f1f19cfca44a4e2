#define _GNU_SOURCE
#include "notify_shims.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int defib_notify_socket_bind(const char *path) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) { errno = ENAMETOOLONG; return -1; }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) { int e = errno; close(fd); errno = e; return -1; }
    unlink(path);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { int e = errno; close(fd); errno = e; return -1; }
    return fd;
}

ssize_t defib_notify_recv(int fd, char *buf, size_t len, pid_t *pid, uid_t *uid, gid_t *gid, int *truncated) {
    union { struct cmsghdr align; char data[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * 16)]; } control;
    struct iovec iov = { buf, len };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov; msg.msg_iovlen = 1;
    msg.msg_control = control.data; msg.msg_controllen = sizeof control.data;
    *pid = 0; *uid = (uid_t)-1; *gid = (gid_t)-1; *truncated = 0;
    ssize_t n;
    do { n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC); } while (n < 0 && errno == EINTR);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    if ((size_t)n > len || (msg.msg_flags & MSG_TRUNC)) { *truncated = 1; n = (ssize_t)len; }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len == CMSG_LEN(sizeof(struct ucred))) {
            struct ucred cred; memcpy(&cred, CMSG_DATA(c), sizeof cred);
            *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
        } else if (c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int fds[16];
            if (count > 16) count = 16;
            memcpy(fds, CMSG_DATA(c), sizeof(int) * (size_t)count);
            for (int i = 0; i < count; i++) close(fds[i]);
        }
    }
    return n;
}

int defib_listen_tcp(const char *host, int port, int backlog, const char **stage) {
    struct sockaddr_storage ss;
    socklen_t slen;
    memset(&ss, 0, sizeof ss);
    int family;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        family = AF_INET; v4->sin_family = AF_INET; v4->sin_port = htons((uint16_t)port); slen = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        family = AF_INET6; v6->sin6_family = AF_INET6; v6->sin6_port = htons((uint16_t)port); slen = sizeof *v6;
    } else {
        *stage = "inet_pton"; errno = EINVAL; return -1;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { *stage = "socket"; return -1; }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) { *stage = "setsockopt(SO_REUSEADDR)"; goto fail; }
    if (bind(fd, (struct sockaddr *)&ss, slen) != 0) { *stage = "bind"; goto fail; }
    if (listen(fd, backlog) != 0) { *stage = "listen"; goto fail; }
    return fd;
fail:;
    int e = errno; close(fd); errno = e; return -1;
}
