"""A TCP server on 127.0.0.1:PORT that answers the way real servers should not, for the probe tests.

Modes: garbage (an SSH banner), endless-headers, endless-body, drip (one byte every 0.5 s), status-503, reset
(RST after the request), close (closes without answering), silent (accepts, never answers), long-line (a line
with no end), chunked-ok (a chunked body holding "status: ok"). One thread per connection.
"""
import socket, struct, sys, threading, time

port, mode = int(sys.argv[1]), sys.argv[2]


def read_request(conn):
    data = b""
    conn.settimeout(5)
    try:
        while b"\r\n\r\n" not in data and b"\n" not in data[-1:] and len(data) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            if mode in ("silent", "long-line", "garbage") or b"\r\n\r\n" in data:
                break
    except OSError:
        pass
    return data


def serve(conn):
    try:
        if mode != "silent":
            read_request(conn)
        if mode == "garbage":
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
            time.sleep(30)
        elif mode == "endless-headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while True:
                conn.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        elif mode == "endless-body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            while True:
                conn.sendall(b"a" * 65536)
        elif mode == "drip":
            for b in b"HTTP/1.1 200 OK\r\n\r\n":
                conn.sendall(bytes([b]))
                time.sleep(0.5)
        elif mode == "status-503":
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        elif mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "close":
            pass
        elif mode == "silent":
            time.sleep(60)
        elif mode == "long-line":
            while True:
                conn.sendall(b"+" + b"P" * 65536)
        elif mode == "chunked-ok":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"7\r\nstatus:\r\n4\r\n ok\n\r\n0\r\n\r\n")
    except OSError:
        pass
    finally:
        conn.close()


srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
print("listening", port, mode, flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
