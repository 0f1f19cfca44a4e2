#define _GNU_SOURCE
#include "lock_shims.h"
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>

void defib_parker_prepare(uint32_t *futex) { __atomic_store_n(futex, 1, __ATOMIC_RELAXED); }

int defib_parker_park(uint32_t *futex, int64_t deadline_ns) {
    while (__atomic_load_n(futex, __ATOMIC_ACQUIRE) != 0) {
        if (deadline_ns < 0) {
            syscall(SYS_futex, futex, FUTEX_WAIT_PRIVATE, 1, NULL, NULL, 0);
            continue;
        }
        if ((int64_t)defib_monotonic_ns() >= deadline_ns) return 0;
        // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so retries after EINTR or a
        // spurious wake-up never stretch the timeout.
        struct timespec ts = { .tv_sec = deadline_ns / 1000000000, .tv_nsec = deadline_ns % 1000000000 };
        syscall(SYS_futex, futex, FUTEX_WAIT_BITSET_PRIVATE, 1, &ts, NULL, FUTEX_BITSET_MATCH_ANY);
    }
    return 1;
}

int defib_parker_still_parked(const uint32_t *futex) { return __atomic_load_n(futex, __ATOMIC_RELAXED) != 0; }

void defib_parker_unpark_lock(uint32_t *futex) { __atomic_store_n(futex, 0, __ATOMIC_RELEASE); }

void defib_parker_wake(uint32_t *futex) { syscall(SYS_futex, futex, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0); }

static __thread int32_t cached_tid;
static pthread_once_t tid_once = PTHREAD_ONCE_INIT;

static void reset_cached_tid(void) { cached_tid = 0; }
static void register_tid_reset(void) { pthread_atfork(NULL, NULL, reset_cached_tid); }

int32_t defib_lock_tid(void) {
    if (cached_tid == 0) {
        pthread_once(&tid_once, register_tid_reset);
        cached_tid = (int32_t)syscall(SYS_gettid);
    }
    return cached_tid;
}

void defib_cpu_relax(uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#else
        __asm__ __volatile__("" ::: "memory");
#endif
    }
}

uint64_t defib_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int64_t defib_realtime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t defib_atomic_load_u64_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void defib_atomic_store_u64_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
void defib_atomic_store_u64_relaxed(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
void defib_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
void defib_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
