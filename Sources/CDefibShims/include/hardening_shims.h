#pragma once
#include <stddef.h>
#include <sys/types.h>

/// O_PATH: the Swift Glibc module is built without _GNU_SOURCE, which hides it.
int defib_o_path(void);

/// getxattr(2) (sys/xattr.h is not in the Swift Glibc module): reads cgroup attributes such as
/// systemd's trusted.delegate.
ssize_t defib_getxattr(const char *path, const char *name, void *value, size_t size);
