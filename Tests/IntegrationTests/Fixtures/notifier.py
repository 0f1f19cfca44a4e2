#!/usr/bin/env python3
"""A supervised service that speaks only sd_notify (no control channel), from its main pid.
MODE: ok (READY=1, then WATCHDOG=1 every WATCHDOG_USEC/2) | stop-after:N (stop keep-alives after N) |
impostor (READY=1 from the main pid, keep-alives only from a forked child: must not count) |
trigger-after:N (WATCHDOG=trigger after N keep-alives)."""
import os, socket, sys, time

addr = os.environ["NOTIFY_SOCKET"]
period = int(os.environ.get("WATCHDOG_USEC", "200000")) / 2 / 1e6
mode = os.environ.get("MODE", "ok")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def send(msg):
    s.sendto(msg.encode(), addr)
send("STATUS=starting\n")
time.sleep(0.05)
send("READY=1\nSTATUS=serving")
print(f"notifier pid={os.getpid()} mode={mode} period={period}", file=sys.stderr, flush=True)
if mode == "impostor":
    if os.fork() == 0:
        t = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        while True:
            t.sendto(b"WATCHDOG=1", addr)
            time.sleep(period)
    while True:
        time.sleep(3600)
n = 0
while True:
    n += 1
    if mode.startswith("stop-after:") and n > int(mode.split(":")[1]):
        time.sleep(3600)
    if mode.startswith("trigger-after:") and n > int(mode.split(":")[1]):
        send("WATCHDOG=trigger")
        time.sleep(3600)
    send("WATCHDOG=1")
    time.sleep(period)
