#pragma once
#include <stdint.h>
#include <sys/types.h>

/// The calling thread's kernel thread id.
pid_t defib_gettid(void);
