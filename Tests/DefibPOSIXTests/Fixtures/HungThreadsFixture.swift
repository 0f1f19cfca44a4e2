// The C fixture the core-writer tests compile with `cc` at run time (kept in Swift so SwiftPM does not try to
// build it as part of the test target).

/// Threads parked in pthread_cond_wait and a raw futex wait, `the_global`, a touched data buffer, a touched-but-zero
/// region, an untouched reservation; optionally a thread that keeps creating and joining threads.
/// `signals_seen` counts a real-time signal. argv: conds futexes dataMiB zeroMiB reserveMiB churn.
/// Prints "ready pid=… data=… zero=… reserve=… seen=ADDR rtsig=N" when every worker is parked.
let hungThreadsFixtureSource = #"""
#define _GNU_SOURCE
#include <dirent.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile uint64_t the_global = 0x5eed0123456789abULL;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int never = 0;
static int parked = 0;
static uint32_t futex_word = 0;
volatile uint64_t signals_seen = 0;

static void count_signal(int sig) { (void)sig; __atomic_add_fetch(&signals_seen, 1, __ATOMIC_SEQ_CST); }

__attribute__((noinline)) void *worker_cond_wait(void *arg) {
    pthread_mutex_lock(&mu);
    parked++;
    while (!never) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return arg;
}

__attribute__((noinline)) void *worker_futex_wait(void *arg) {
    __atomic_add_fetch(&parked, 1, __ATOMIC_SEQ_CST);
    for (;;) syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    return arg;
}

static void *short_lived(void *arg) { return arg; }

__attribute__((noinline)) void *worker_churn(void *arg) {
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived, NULL) == 0) pthread_join(t, NULL);
    }
    return arg;
}

// Every thread but the caller asleep (state S) in /proc/self/task.
static int all_others_sleeping(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return 0;
    struct dirent *e;
    int ok = 1;
    pid_t self = (pid_t)syscall(SYS_gettid);
    while ((e = readdir(d))) {
        int tid = atoi(e->d_name);
        if (tid <= 0 || tid == self) continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        if (!p || p[2] != 'S') ok = 0;
    }
    closedir(d);
    return ok;
}

__attribute__((noinline)) void main_idle(void) {
    for (;;) pause();
}

int main(int argc, char **argv) {
    int conds = argc > 1 ? atoi(argv[1]) : 3;
    int futexes = argc > 2 ? atoi(argv[2]) : 2;
    size_t data_mib = argc > 3 ? (size_t)atol(argv[3]) : 64;
    size_t zero_mib = argc > 4 ? (size_t)atol(argv[4]) : 32;
    size_t reserve_mib = argc > 5 ? (size_t)atol(argv[5]) : 128;
    int churn = argc > 6 ? atoi(argv[6]) : 0;

    alarm(300);  // a fixture left behind by a crashed test run ends on its own
    // A queued real-time signal: every one sent is delivered exactly once, so a lost one shows in the count.
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = count_signal;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGRTMIN + 1, &sa, NULL);

    unsigned char *data = NULL, *zero = NULL, *reserve = NULL;
    if (data_mib) {
        data = mmap(NULL, data_mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uint64_t *words = (uint64_t *)data;
        for (size_t i = 0; i < (data_mib << 20) / 8; i++) words[i] = (i * 0x9e3779b97f4a7c15ULL) | 1;
    }
    if (zero_mib) {
        zero = mmap(NULL, zero_mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        // Touch every page, then zero it: real pages full of zeros.
        for (size_t i = 0; i < (zero_mib << 20); i += 4096) { zero[i] = 1; zero[i] = 0; }
    }
    if (reserve_mib) {
        reserve = mmap(NULL, reserve_mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    }
    for (int i = 0; i < conds; i++) { pthread_t t; pthread_create(&t, NULL, worker_cond_wait, NULL); }
    for (int i = 0; i < futexes; i++) { pthread_t t; pthread_create(&t, NULL, worker_futex_wait, NULL); }
    for (;;) {
        pthread_mutex_lock(&mu);
        int n = parked;
        pthread_mutex_unlock(&mu);
        if (n >= conds + futexes && all_others_sleeping()) break;
        usleep(1000);
    }
    usleep(20000);
    if (churn) { pthread_t t; pthread_create(&t, NULL, worker_churn, NULL); }
    printf("ready pid=%d data=%p zero=%p reserve=%p seen=%p rtsig=%d\n", getpid(), (void *)data, (void *)zero,
           (void *)reserve, (void *)&signals_seen, SIGRTMIN + 1);
    fflush(stdout);
    main_idle();
    return 0;
}
"""#
