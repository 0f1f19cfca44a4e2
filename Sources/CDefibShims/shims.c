#define _GNU_SOURCE
#include "shims.h"
#include <unistd.h>
#include <sys/syscall.h>

pid_t defib_gettid(void) { return (pid_t)syscall(SYS_gettid); }
