#pragma once
#include <stddef.h>
#include <stdint.h>

// Per-thread read-lock bookkeeping for ParkingLock: which locks (by a 64-bit id that is never
// reused) the calling thread holds for reading, how deep, and since when. Each thread writes only
// its own table, with plain stores under a per-table sequence, so the read fast path never touches
// a cache line another thread writes. Observers (a lock's snapshot, the flight-recorder mirror)
// walk every thread's table under a registry mutex that the fast path never takes.
//
// A read lock must be released on the thread that took it (as parking_lot's guards are !Send): a
// release on another thread is not seen, and the taker's row stays until it releases one itself.

/// Most locks one thread can hold for reading at once with bookkeeping; further ones go untracked
/// (they still work; the lock's reader count shows them as readers without a row).
#define DEFIB_READ_HOLDS_PER_THREAD 16

/// One thread's read hold on one lock, as an observer sees it.
typedef struct {
    /// Kernel tid of the holder.
    int32_t tid;
    /// 1 when the thread has exited while still holding the read lock (a leak no one can release).
    int32_t exited;
    /// Recursive depth (read locks taken and not yet released by this thread on this lock).
    uint32_t depth;
    uint32_t reserved;
    /// CLOCK_MONOTONIC_COARSE (a few ms resolution) when the thread's depth went from 0 to 1.
    uint64_t since_ns;
} defib_read_holder;

/// Records that the calling thread took a read lock on lock `id` (nonzero). Returns its depth after.
uint32_t defib_read_hold_enter(uint64_t id);

/// Records that the calling thread released a read lock on `id`. Returns its depth before the release
/// (0: this thread had no recorded hold on `id`).
uint32_t defib_read_hold_exit(uint64_t id);

/// The calling thread's read depth on `id` (0 when it holds none).
uint32_t defib_read_hold_depth(uint64_t id);

/// The threads holding a read lock on `id`, oldest hold first: up to `capacity` of them into `out`.
/// Returns how many threads hold it in all (may exceed `capacity`); `total_depth` (if not NULL)
/// receives the sum of their depths, to compare with the lock word's reader count.
size_t defib_read_holders(uint64_t id, defib_read_holder *out, size_t capacity, uint64_t *total_depth);

/// CLOCK_MONOTONIC_COARSE in ns: the clock of `since_ns` (same epoch as CLOCK_MONOTONIC).
uint64_t defib_monotonic_coarse_ns(void);
