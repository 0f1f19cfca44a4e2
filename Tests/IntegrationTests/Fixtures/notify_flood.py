#!/usr/bin/env python3
"""A service that floods its NOTIFY_SOCKET, as a buggy or hostile daemon would: after READY=1 its main pid sends
STATUS= lines as fast as it can (some 60 KB long) with its keep-alives, and a forked child (not the main pid, so
rejected) floods as well. Writes the number of datagrams sent to $COUNT_FILE every second."""
import os, socket, sys, time

addr = os.environ["NOTIFY_SOCKET"]
count_file = os.environ.get("COUNT_FILE")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1\nSTATUS=flooding", addr)
if os.fork() == 0:
    t = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    while True:
        try:
            t.sendto(b"STATUS=not the main pid\nWATCHDOG=1", addr)
        except OSError:
            time.sleep(0.001)
sent, last = 0, time.monotonic()
big = b"STATUS=" + b"x" * 60_000
while True:
    try:
        s.sendto(big if sent % 100 == 0 else b"WATCHDOG=1\nSTATUS=busy %d" % sent, addr)
        sent += 1
    except OSError:
        time.sleep(0.001)   # the socket's queue is full: defib reads at its own pace
    if count_file and time.monotonic() - last >= 1:
        last = time.monotonic()
        with open(count_file, "w") as f:
            f.write(str(sent))
