#!/usr/bin/env python3
"""Two threads take two threading.Locks in opposite order, and the control channel then waits on one.

Answers defib's ping protocol on $DEFIB_CONTROL_SOCKET ("ping TOKEN" -> "pong TOKEN", one line per
connection) after reading shared state under `inventory_lock`, the way a real control channel checks the
path that must make progress. After HANG_AFTER pings (default 5) the two workers start:
`transfer_stock` takes inventory_lock then ledger_lock, `audit_ledger` takes ledger_lock then
inventory_lock, each pausing in between so the cycle forms every time. With HANG_ONCE=PATH only the
instance that creates PATH hangs (its replacements keep answering)."""
import os
import socket
import sys
import threading
import time

inventory_lock = threading.Lock()
ledger_lock = threading.Lock()
start = threading.Event()
stock = {"widgets": 10}


def transfer_stock():
    start.wait()
    with inventory_lock:
        time.sleep(0.1)
        with ledger_lock:
            stock["widgets"] -= 1


def audit_ledger():
    start.wait()
    with ledger_lock:
        time.sleep(0.1)
        with inventory_lock:
            stock["widgets"] += 0


def should_hang():
    once = os.environ.get("HANG_ONCE")
    if not once:
        return True
    try:
        os.close(os.open(once, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return True
    except FileExistsError:
        return False


def answer_ping(conn, pings, hang_after):
    line = conn.makefile().readline().strip()
    if pings == hang_after and should_hang():
        start.set()
    with inventory_lock:
        _ = stock["widgets"]
    try:
        conn.sendall(("pong" + line[4:] + "\n").encode())
    except OSError:
        pass


def main():
    path = os.environ["DEFIB_CONTROL_SOCKET"]
    hang_after = int(os.environ.get("HANG_AFTER", "5"))
    threading.Thread(target=transfer_stock, name="transfer", daemon=True).start()
    threading.Thread(target=audit_ledger, name="audit", daemon=True).start()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print(f"py-lock-order pid={os.getpid()}", file=sys.stderr, flush=True)
    pings = 0
    while True:
        conn, _ = listener.accept()
        pings += 1
        with conn:
            answer_ping(conn, pings, hang_after)


if __name__ == "__main__":
    main()
