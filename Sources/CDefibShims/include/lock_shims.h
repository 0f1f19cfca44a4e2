#pragma once
#include <stdint.h>

// Helpers for ParkingLock: a futex-based thread parker (as parking_lot_core's Linux parker), the CPU
// pause hint for spin loops, and explicit atomics/fences on raw memory (the flight recorder's
// mmapped seqlocks), which Swift's Atomic cannot place at an arbitrary address.

/// Marks the parker as "should park" (futex word = 1). Call before publishing the waiter.
void defib_parker_prepare(uint32_t *futex);
/// Sleeps until the futex word becomes 0 or `deadline_ns` (CLOCK_MONOTONIC, -1 = none) passes.
/// Returns 1 when unparked, 0 on timeout. Spurious wake-ups are absorbed.
int defib_parker_park(uint32_t *futex, int64_t deadline_ns);
/// Whether the parker is still marked "should park" (so a timed-out sleeper was not unparked).
int defib_parker_still_parked(const uint32_t *futex);
/// Clears the futex word (release). Call under the queue lock; `defib_parker_wake` may follow outside it.
void defib_parker_unpark_lock(uint32_t *futex);
/// FUTEX_WAKE one sleeper on the word.
void defib_parker_wake(uint32_t *futex);

/// The calling thread's kernel tid, cached per thread (the write path records it on every acquire;
/// gettid is a system call). The cache is reset in a forked child.
int32_t defib_lock_tid(void);

/// `pause` `n` times (spin-loop hint).
void defib_cpu_relax(uint32_t n);

/// Monotonic and wall clocks.
uint64_t defib_monotonic_ns(void);
int64_t defib_realtime_ms(void);

uint64_t defib_atomic_load_u64_acquire(const uint64_t *p);
void defib_atomic_store_u64_release(uint64_t *p, uint64_t v);
void defib_atomic_store_u64_relaxed(uint64_t *p, uint64_t v);
void defib_fence_release(void);
void defib_fence_acquire(void);
