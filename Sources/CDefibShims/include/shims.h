#pragma once
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

/// The calling thread's kernel thread id.
pid_t defib_gettid(void);

/// What the child should look like after fork and before exec.
typedef struct {
    const char *path;            ///< absolute or relative path to execve (resolved by the caller)
    char *const *argv;
    char *const *envp;
    const char *cwd;             ///< NULL: keep the parent's
    const int *fds;              ///< descriptors to hand over as 3, 4, … (LISTEN_FDS); may be NULL
    int nfds;
    int pdeathsig;               ///< signal the child gets when the spawning thread dies; 0 = none
    int new_session;             ///< 1: setsid() (own session and process group)
    char *listen_pid_slot;       ///< NULL or an envp entry "LISTEN_PID=" + 20 spare bytes; the child writes its pid there
    int stdout_fd;               ///< -1: inherit; otherwise dup2'ed onto 1
    int stderr_fd;               ///< -1: inherit; otherwise dup2'ed onto 2
    int stdin_devnull;           ///< 1: stdin from /dev/null
    int set_ids;                 ///< 1: setgroups(groups), setresgid(gid), setresuid(uid) before exec, then the pdeathsig
    uid_t uid;
    gid_t gid;
    const gid_t *groups;         ///< supplementary groups (may be NULL when ngroups is 0)
    int ngroups;
    int cgroup_procs_fd;         ///< -1: stay in the parent's cgroup; else a cgroup.procs opened for writing: the child moves itself there first
    int cgroup_dir_fd;           ///< -1, or the same cgroup's directory: the child is born there (clone3 CLONE_INTO_CGROUP), and
                                 ///< cgroup_procs_fd is the fallback where the kernel refuses that
} defib_spawn_attr;

/// fork + exec. Returns 0 and the pid, or -1 with *err_out = errno and *stage_out naming the failing step
/// (a static string such as "execve" or "chdir"). A failed exec is reported, never a zombie left behind.
int defib_spawn(const defib_spawn_attr *attr, pid_t *pid_out, int *err_out, const char **stage_out);

int defib_pidfd_open(pid_t pid);
int defib_pidfd_send_signal(int pidfd, int sig);

/// A signalfd for the given signals, which are also blocked in the calling thread (call before creating threads).
int defib_signalfd_block(const int *sigs, int n);
/// Reads one signal from a signalfd: returns the signal number, 0 when none is pending, -1 on error.
int defib_signalfd_read(int fd);
/// Unblocks every signal in the calling thread.
void defib_unblock_all_signals(void);

/// process_vm_readv of one range.
ssize_t defib_read_memory(pid_t pid, uint64_t address, void *buffer, size_t length);

int defib_set_child_subreaper(void);

/// waitpid(-1, WNOHANG|__WALL). Returns the pid (0 when none, -1 on error) and the decoded status.
pid_t defib_reap_any(int *exited, int *code, int *signaled, int *sig, int *core_dumped);
