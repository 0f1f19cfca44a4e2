#!/usr/bin/env python3
"""A minimal supervised service for edge-case tests: answers `ping N` on $DEFIB_CONTROL_SOCKET.
Behaviour is chosen with MODE: ok | hang-after:N (stop answering after N pings) | bad-reply |
bad-reply-after:N | exit-after:N:CODE | ignore-term | slow-start:MS | flood-reply-after:N (after N pings, every
reply is 100 MB without a newline).
With DAEMON_PIDFILE set it first forks a grandchild that leaves the process group (setsid) and sleeps,
writing its pid there — a remnant the supervisor must clean up when the instance goes. DAEMON_CHAIN=N makes
that a chain of N (each forks the next, then sleeps): when the first is killed the rest are orphaned in turn."""
import os, socket, sys, time, signal

path = os.environ["DEFIB_CONTROL_SOCKET"]
if os.environ.get("DAEMON_PIDFILE") and os.fork() == 0:
    os.setsid()
    for depth in range(int(os.environ.get("DAEMON_CHAIN", "1"))):
        if depth > 0 and os.fork() != 0:
            break
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(os.environ["DAEMON_PIDFILE"], "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(3600)
    os._exit(0)
mode = os.environ.get("MODE", "ok")
if os.environ.get("SPIN") == "1":
    # A CPU-hungry worker beside the control loop: under a CPU quota it eats the quota, and the
    # answers to pings wait for the next period (starved, not stuck).
    import threading
    def spin():
        while True:
            pass
    threading.Thread(target=spin, daemon=True).start()
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode.startswith("slow-start:"):
    time.sleep(int(mode.split(":")[1]) / 1000)
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(16)
print(f"pingable pid={os.getpid()} mode={mode}", file=sys.stderr, flush=True)
pings = 0
def reply(c, data):
    # The supervisor may have given up on this ping and closed its end: that is no reason to die.
    try:
        c.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
while True:
    c, _ = s.accept()
    try:
        line = c.makefile().readline().strip()
    except ConnectionResetError:
        c.close()
        continue
    if line.startswith("ping"):
        pings += 1
        if mode.startswith("hang-after:") and pings > int(mode.split(":")[1]):
            time.sleep(3600)
        if mode.startswith("exit-after:"):
            _, n, code = mode.split(":")
            if pings > int(n):
                sys.exit(int(code))
        if mode.startswith("flood-reply-after:") and pings > int(mode.split(":")[1]):
            chunk = b"z" * (1 << 20)
            try:
                for _ in range(100):
                    c.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            c.close()
            continue
        if mode == "bad-reply" or (mode.startswith("bad-reply-after:") and pings > int(mode.split(":")[1])):
            reply(c, b"hello there\n")
        else:
            reply(c, ("pong" + line[4:] + "\n").encode())
    elif line == "locks":
        reply(c, b'{"pid":%d,"locks":[]}\n' % os.getpid())
    else:
        reply(c, b"error unknown command\n")
    c.close()
