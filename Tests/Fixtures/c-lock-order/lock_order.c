/* A service whose two named threads take two pthread mutexes in opposite order.
 *
 * It answers defib's ping protocol on $DEFIB_CONTROL_SOCKET ("ping TOKEN" -> "pong TOKEN", one line per
 * connection) from a thread named "ping" that reads shared state under lock_a, the way a real control
 * channel checks the path that must make progress. After HANG_AFTER pings (default 5) it lets the two
 * workers run: "worker-a" takes lock_a then lock_b, "worker-b" takes lock_b then lock_a, each pausing in
 * between so the cycle forms every time. The next ping then blocks on lock_a as well.
 * With HANG_ONCE=PATH only the instance that creates PATH hangs (its replacements keep answering).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>

static pthread_mutex_t lock_a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t lock_b = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t start_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cond = PTHREAD_COND_INITIALIZER;
static int started;
static long counter;

static void wait_for_start(void) {
    pthread_mutex_lock(&start_mutex);
    while (!started) pthread_cond_wait(&start_cond, &start_mutex);
    pthread_mutex_unlock(&start_mutex);
}

static void *worker_a(void *arg) {
    (void)arg;
    wait_for_start();
    pthread_mutex_lock(&lock_a);
    usleep(100 * 1000);
    pthread_mutex_lock(&lock_b);   /* never returns: worker-b holds lock_b and waits for lock_a */
    counter++;
    pthread_mutex_unlock(&lock_b);
    pthread_mutex_unlock(&lock_a);
    return NULL;
}

static void *worker_b(void *arg) {
    (void)arg;
    wait_for_start();
    pthread_mutex_lock(&lock_b);
    usleep(100 * 1000);
    pthread_mutex_lock(&lock_a);
    counter++;
    pthread_mutex_unlock(&lock_a);
    pthread_mutex_unlock(&lock_b);
    return NULL;
}

/* Whether this instance should hang: always, or with HANG_ONCE only the first one to create the file. */
static int should_hang(void) {
    const char *once = getenv("HANG_ONCE");
    if (!once) return 1;
    int fd = open(once, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

static void *ping_responder(void *arg) {
    int listener = *(int *)arg;
    int hang_after = getenv("HANG_AFTER") ? atoi(getenv("HANG_AFTER")) : 5;
    int pings = 0;
    for (;;) {
        int c = accept(listener, NULL, NULL);
        if (c < 0) continue;
        char line[256];
        ssize_t n = read(c, line, sizeof line - 1);
        if (n <= 0) { close(c); continue; }
        line[n] = 0;
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (++pings == hang_after && should_hang()) {
            pthread_mutex_lock(&start_mutex);
            started = 1;
            pthread_cond_broadcast(&start_cond);
            pthread_mutex_unlock(&start_mutex);
        }
        pthread_mutex_lock(&lock_a);   /* the path that must make progress */
        long seen = counter;
        pthread_mutex_unlock(&lock_a);
        (void)seen;
        char reply[300];
        int len = snprintf(reply, sizeof reply, "pong%s\n", line + 4);
        if (write(c, reply, (size_t)len) < 0) { /* the supervisor gave up on this ping */ }
        close(c);
    }
    return NULL;
}

int main(void) {
    const char *path = getenv("DEFIB_CONTROL_SOCKET");
    if (!path) { fprintf(stderr, "DEFIB_CONTROL_SOCKET is not set\n"); return 2; }
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    unlink(path);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 16) != 0) { perror("bind"); return 2; }
    pthread_t a, b, p;
    pthread_create(&a, NULL, worker_a, NULL);
    pthread_setname_np(a, "worker-a");
    pthread_create(&b, NULL, worker_b, NULL);
    pthread_setname_np(b, "worker-b");
    pthread_create(&p, NULL, ping_responder, &listener);
    pthread_setname_np(p, "ping");
    fprintf(stderr, "lock-order pid=%d\n", getpid());
    pthread_join(p, NULL);
    return 0;
}
