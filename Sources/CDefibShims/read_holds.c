#define _GNU_SOURCE
#include "read_hold_shims.h"
#include "lock_shims.h"
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

// One thread's read holds. Only the owning thread writes `seq`, `used` and the entries; observers
// read them under `registry_mutex` (which keeps the table alive) and validate with `seq`.
typedef struct {
    uint64_t id;        // the lock's id, 0 = free entry
    uint64_t since_ns;  // coarse monotonic time of the 0 -> 1 transition
    uint32_t depth;
    uint32_t reserved;
} hold_entry;

typedef struct hold_table {
    uint64_t seq;       // odd while the owner changes which locks its entries name
    int32_t tid;
    int32_t exited;     // the thread is gone but left read holds behind
    uint32_t used;      // entries [0, used) may be in use
    uint32_t reserved;
    hold_entry entries[DEFIB_READ_HOLDS_PER_THREAD];
    struct hold_table *prev, *next;  // registry list, under registry_mutex
} hold_table;

// Tables of exited threads that still held read locks are kept as evidence, up to this many.
#define EXITED_TABLES_KEPT 64

static pthread_mutex_t registry_mutex = PTHREAD_MUTEX_INITIALIZER;
static hold_table *registry_head;
static unsigned exited_tables;
static pthread_key_t table_key;
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;
// initial-exec: the read fast path reads this on every lock and unlock; no __tls_get_addr call.
static __thread hold_table *mine __attribute__((tls_model("initial-exec")));

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

uint64_t defib_monotonic_coarse_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void unlink_table(hold_table *t) {
    if (t->prev) t->prev->next = t->next; else registry_head = t->next;
    if (t->next) t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

static int holds_any(const hold_table *t) {
    uint32_t used = LOAD(&t->used);
    for (uint32_t i = 0; i < used; i++) {
        if (LOAD(&t->entries[i].id) != 0 && LOAD(&t->entries[i].depth) != 0) return 1;
    }
    return 0;
}

// Thread exit: a table with holds stays (marked exited) so the leak remains visible; the oldest
// such table goes once there are too many.
static void thread_exited(void *p) {
    hold_table *t = p;
    pthread_mutex_lock(&registry_mutex);
    if (holds_any(t)) {
        __atomic_store_n(&t->exited, 1, __ATOMIC_RELEASE);
        if (++exited_tables > EXITED_TABLES_KEPT) {
            hold_table *oldest = NULL;
            for (hold_table *c = registry_head; c; c = c->next) if (c != t && LOAD(&c->exited)) oldest = c;
            if (oldest) {
                unlink_table(oldest);
                free(oldest);
                exited_tables--;
            }
        }
    } else {
        unlink_table(t);
        free(t);
    }
    pthread_mutex_unlock(&registry_mutex);
    // A destructor that runs later on this thread and takes a read lock gets a fresh table.
    mine = NULL;
}

static void before_fork(void) { pthread_mutex_lock(&registry_mutex); }
static void after_fork_parent(void) { pthread_mutex_unlock(&registry_mutex); }

// In the child only the forking thread exists: the other threads' tables stay as "exited" when they
// held read locks (those locks are held for good in the child), and are dropped otherwise.
static void after_fork_child(void) {
    pthread_mutex_init(&registry_mutex, NULL);
    hold_table *c = registry_head;
    registry_head = NULL;
    exited_tables = 0;
    while (c) {
        hold_table *next = c->next;
        c->prev = c->next = NULL;
        if (c == mine || holds_any(c)) {
            if (c == mine) {
                c->tid = (int32_t)syscall(SYS_gettid);
            } else {
                c->exited = 1;
                exited_tables++;
            }
            c->next = registry_head;
            if (registry_head) registry_head->prev = c;
            registry_head = c;
        }
        c = next;
    }
}

static void registry_init(void) {
    pthread_key_create(&table_key, thread_exited);
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

static hold_table *register_thread(void) {
    pthread_once(&registry_once, registry_init);
    hold_table *t = calloc(1, sizeof(hold_table));
    if (!t) return NULL;
    t->tid = defib_lock_tid();
    pthread_mutex_lock(&registry_mutex);
    t->next = registry_head;
    if (registry_head) registry_head->prev = t;
    registry_head = t;
    pthread_mutex_unlock(&registry_mutex);
    pthread_setspecific(table_key, t);
    mine = t;
    return t;
}

// The owner's half of the table's seqlock.
static inline uint64_t begin_change(hold_table *t) {
    uint64_t s = LOAD(&t->seq);
    STORE(&t->seq, s + 1);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return s;
}

static inline void end_change(hold_table *t, uint64_t s) { __atomic_store_n(&t->seq, s + 2, __ATOMIC_RELEASE); }

uint32_t defib_read_hold_enter(uint64_t id) {
    hold_table *t = mine;
    if (__builtin_expect(t == NULL, 0)) {
        t = register_thread();
        if (!t) return 0;
    }
    uint32_t used = t->used;
    uint32_t free_index = used;
    for (uint32_t i = 0; i < used; i++) {
        uint64_t e = t->entries[i].id;
        if (e == id) {
            uint32_t depth = t->entries[i].depth + 1;
            STORE(&t->entries[i].depth, depth);
            return depth;
        }
        if (e == 0 && free_index == used) free_index = i;
    }
    if (free_index == DEFIB_READ_HOLDS_PER_THREAD) return 0;  // untracked
    uint64_t now = defib_monotonic_coarse_ns();
    uint64_t s = begin_change(t);
    STORE(&t->entries[free_index].since_ns, now);
    STORE(&t->entries[free_index].depth, 1u);
    STORE(&t->entries[free_index].id, id);
    if (free_index == used) STORE(&t->used, used + 1);
    end_change(t, s);
    return 1;
}

uint32_t defib_read_hold_exit(uint64_t id) {
    hold_table *t = mine;
    if (t == NULL) return 0;
    uint32_t used = t->used;
    for (uint32_t i = 0; i < used; i++) {
        if (t->entries[i].id != id) continue;
        uint32_t depth = t->entries[i].depth;
        if (depth > 1) {
            STORE(&t->entries[i].depth, depth - 1);
            return depth;
        }
        uint64_t s = begin_change(t);
        STORE(&t->entries[i].id, (uint64_t)0);
        STORE(&t->entries[i].depth, 0u);
        if (i + 1 == used) {
            while (used > 0 && t->entries[used - 1].id == 0) used--;
            STORE(&t->used, used);
        }
        end_change(t, s);
        return depth;
    }
    return 0;
}

uint32_t defib_read_hold_depth(uint64_t id) {
    hold_table *t = mine;
    if (t == NULL) return 0;
    for (uint32_t i = 0; i < t->used; i++) {
        if (t->entries[i].id == id) return t->entries[i].depth;
    }
    return 0;
}

// Copies the entry naming `id` out of another thread's table; 1 if there is one. Retries while the
// owner is mid-change; gives up (0) after a bounded number of tries rather than wait on a thread
// that may be descheduled inside its two stores.
static int read_entry(const hold_table *t, uint64_t id, defib_read_holder *out) {
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint64_t s1 = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) {
            if (attempt > 100) sched_yield(); else defib_cpu_relax(8);
            continue;
        }
        int found = 0;
        uint32_t used = LOAD(&t->used);
        if (used > DEFIB_READ_HOLDS_PER_THREAD) used = DEFIB_READ_HOLDS_PER_THREAD;
        for (uint32_t i = 0; i < used && !found; i++) {
            if (LOAD(&t->entries[i].id) != id) continue;
            out->depth = LOAD(&t->entries[i].depth);
            out->since_ns = LOAD(&t->entries[i].since_ns);
            found = out->depth != 0;
        }
        out->tid = LOAD(&t->tid);
        out->exited = LOAD(&t->exited);
        out->reserved = 0;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (LOAD(&t->seq) == s1) return found;
    }
    return 0;
}

size_t defib_read_holders(uint64_t id, defib_read_holder *out, size_t capacity, uint64_t *total_depth) {
    size_t total = 0, kept = 0;
    uint64_t depth = 0;
    pthread_mutex_lock(&registry_mutex);
    for (hold_table *t = registry_head; t; t = t->next) {
        defib_read_holder h;
        if (!read_entry(t, id, &h)) continue;
        total++;
        depth += h.depth;
        // Keep the `capacity` oldest holds, sorted oldest first (insertion into a short array).
        size_t at = kept;
        while (at > 0 && out[at - 1].since_ns > h.since_ns) at--;
        if (at >= capacity) continue;
        size_t last = kept < capacity ? kept : capacity - 1;
        for (size_t k = last; k > at; k--) out[k] = out[k - 1];
        out[at] = h;
        if (kept < capacity) kept++;
    }
    pthread_mutex_unlock(&registry_mutex);
    if (total_depth) *total_depth = depth;
    return total;
}
