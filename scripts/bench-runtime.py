#!/usr/bin/env python3
"""The runtime tools' cost and the pause they impose, measured (`scripts/bench.sh runtime`).

For each runtime, the route defib takes and the one it rejected, REPS interleaved repetitions each:
  python  py-spy dump --nonblocking (defib's) vs py-spy dump (ptrace-stops the interpreter)
  java    jcmd PID Thread.print -l (defib's) vs jstack PID (the same attach, a separate JDK tool)
  go      dlv core on defib's native core after the restart (defib's; measured from the incidents of real
          hangs under `defib run`) vs dlv attach on the hung process before the kill

"Pause" is what the target felt: a ticker thread in the target sleeps 1 ms in a loop and logs every gap longer
than 2 ms with CLOCK_MONOTONIC stamps; the longest gap overlapping the tool's run, minus nothing, is reported
beside the longest gap of a control window of the same length with no tool (the machine's own noise). For
dlv attach the whole run is a pause by construction (every thread is ptrace-stopped until delve detaches),
and for dlv core the process is already gone: its cost is off the outage.

Writes OUT/runtime.json in scripts/bench.sh's part format. Every process it starts is stopped by its pid.
"""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "Tests", "Fixtures")
BIN = os.environ.get("BIN", os.path.join(ROOT, ".build", "release"))
OUT = os.environ.get("OUT", os.path.join(ROOT, "bench"))
REPS = int(os.environ.get("BENCH_RUNTIME_REPS", "7"))
mono = time.monotonic

PY_TICKER = r'''
import os, sys, threading, time
log = open(sys.argv[1], "w", buffering=1)
def work(n):
    while True:
        time.sleep(0.05)
for i in range(8):
    threading.Thread(target=work, args=(i,), daemon=True).start()
print("ready", flush=True)
last = time.monotonic()
while True:
    time.sleep(0.001)
    now = time.monotonic()
    if now - last > 0.002:
        log.write(f"{last:.6f} {now:.6f}\n")
    last = now
'''

JAVA_TICKER = r'''
import java.io.*;
public final class Ticker {
    public static void main(String[] a) throws Exception {
        PrintWriter log = new PrintWriter(new FileWriter(a[0]), true);
        for (int i = 0; i < 8; i++) { Thread t = new Thread(() -> { try { while (true) Thread.sleep(50); } catch (InterruptedException e) {} }); t.setDaemon(true); t.start(); }
        System.out.println("ready"); System.out.flush();
        long last = System.nanoTime();
        while (true) {
            Thread.sleep(1);
            long now = System.nanoTime();
            if (now - last > 2_000_000L) log.printf("%.6f %.6f%n", last / 1e9, now / 1e9);
            last = now;
        }
    }
}
'''


def gaps(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                a, b = line.split()
                out.append((float(a), float(b)))
    except (OSError, ValueError):
        pass
    return out


def max_gap(path, start, end):
    """Longest gap (ms) that overlaps [start, end]."""
    return max([(b - a) * 1000 for a, b in gaps(path) if b >= start and a <= end] or [0.0])


def timed(argv, timeout=60, stdin=None):
    start = mono()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, input=stdin)
    end = mono()
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {r.returncode}: {r.stdout[-300:]!r}")
    return start, end


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def start_ticker(argv, log):
    p = subprocess.Popen(argv + [log], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.stdout.readline().strip() != "ready":
        p.kill()
        raise RuntimeError(f"ticker {argv} did not start")
    time.sleep(1.0)
    return p


def stop(p):
    p.kill()
    p.wait()


def measure_pause_tools(ticker_argv, tools, scratch):
    """Interleaved: control window, then each tool, REPS times. Returns {name: {"ms": [...], "pause": [...]}}."""
    log = os.path.join(scratch, "gaps.log")
    p = start_ticker(ticker_argv, log)
    res = {name: {"ms": [], "pause": []} for name in ["control"] + [t[0] for t in tools]}
    try:
        for _ in range(REPS):
            for name, argv in tools:
                argv = [a.replace("{pid}", str(p.pid)) for a in argv]
                s, e = timed(argv)
                time.sleep(0.3)
                res[name]["ms"].append((e - s) * 1000)
                res[name]["pause"].append(max_gap(log, s, e))
                # A control window as long as this run, right after it.
                cs = mono()
                time.sleep(e - s)
                res["control"]["ms"].append((e - s) * 1000)
                res["control"]["pause"].append(max_gap(log, cs, mono()))
    finally:
        stop(p)
    return res


def ping(path, token):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(1)
    try:
        s.connect(path)
        s.sendall(f"ping {token}\n".encode())
        return s.recv(100)
    except OSError:
        return None
    finally:
        s.close()


def go_attach(rrdns, scratch):
    """dlv attach on a hung go-rrdns: the time every thread stays stopped."""
    script = os.path.join(scratch, "g.star")
    with open(script, "w") as f:
        f.write("def main():\n    for g in goroutines().Goroutines:\n        stacktrace(g.ID, 64, False, False, 0)\n")
    init = os.path.join(scratch, "g.init")
    with open(init, "w") as f:
        f.write(f"source {script}\n")
    sock = os.path.join(scratch, "go.sock")
    times = []
    for i in range(REPS):
        env = dict(os.environ, DEFIB_CONTROL_SOCKET=sock, HANG_AFTER="3")
        p = subprocess.Popen([rrdns], env=env, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if os.path.exists(sock):
                    break
                time.sleep(0.02)
            for n in range(4):
                ping(sock, n)
            time.sleep(0.3)
            # exit, then "n": detach and leave the process running (it is killed right after anyway).
            s, e = timed(["dlv", "attach", str(p.pid), "--allow-non-terminal-interactive=true", "--init", init], stdin=b"exit\nn\n")
            times.append((e - s) * 1000)
        finally:
            stop(p)
    return times


def go_core(defib, rrdns, scratch):
    """Real hangs under defib run: the native core's duration and delve's time on it after the restart."""
    core_ms, dlv_ms, diagnoses = [], [], []
    for i in range(REPS):
        d = tempfile.mkdtemp(dir=scratch)
        cfg = os.path.join(d, "defib.toml")
        with open(cfg, "w") as f:
            f.write(f'state_dir = "{d}/state"\n[service]\nname = "go-rrdns"\nargv = ["{rrdns}"]\n'
                    f'env = {{ HANG_AFTER = "5", HANG_ONCE = "{d}/once" }}\n[heartbeat]\ninterval_ms = 100\ndeadline_ms = 1000\n'
                    f'[capture]\nstacks = false\n')
        p = subprocess.Popen([defib, "run", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            info = None
            for _ in range(600):
                time.sleep(0.1)
                r = subprocess.run([defib, "incidents", "info", "last", "--state-dir", f"{d}/state", "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                if r.returncode == 0:
                    o = json.loads(r.stdout)
                    if (o.get("runtime_tool") or "").startswith("dlv core,") and o.get("runtime_stacks"):
                        info = o
                        break
            if info is None:
                raise RuntimeError("no goroutines in the incident within 60 s")
            core_ms.append(info["capture_ms"])
            dlv_ms.append(float(info["runtime_tool"].split(",")[1].split("ms")[0]))
            diagnoses.append(info["diagnosis"].split(":")[0])
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return core_ms, dlv_ms, diagnoses


def main():
    scratch = tempfile.mkdtemp(prefix="defib-bench-runtime-")
    rows, targets, notes = [], [], []
    try:
        # Python
        ticker = os.path.join(scratch, "ticker.py")
        with open(ticker, "w") as f:
            f.write(PY_TICKER)
        py = measure_pause_tools([sys.executable, ticker], [
            ("py-spy dump --nonblocking", ["py-spy", "dump", "--json", "--nonblocking", "--pid", "{pid}"]),
            ("py-spy dump (ptrace)", ["py-spy", "dump", "--json", "--pid", "{pid}"]),
        ], scratch)
        # Java
        jdir = os.path.join(scratch, "java")
        os.makedirs(jdir)
        with open(os.path.join(jdir, "Ticker.java"), "w") as f:
            f.write(JAVA_TICKER)
        subprocess.run(["javac", "-d", jdir, os.path.join(jdir, "Ticker.java")], check=True)
        jv = measure_pause_tools(["java", "-Xmx64m", "-XX:+UseSerialGC", "-cp", jdir, "Ticker"], [
            ("jcmd Thread.print -l", ["jcmd", "{pid}", "Thread.print", "-l"]),
            ("jstack", ["jstack", "{pid}"]),
        ], scratch)
        # Go
        rrdns = os.path.join(scratch, "rrdns")
        subprocess.run(["go", "build", "-buildvcs=false", "-o", rrdns, "."], cwd=os.path.join(FIX, "go-rrdns"), check=True,
                       env=dict(os.environ, GOCACHE=os.path.join(scratch, "gocache"), GOPATH=os.path.join(scratch, "gopath")))
        attach = go_attach(rrdns, scratch)
        core_ms, dlv_ms, diagnoses = go_core(os.path.join(BIN, "defib"), rrdns, scratch)

        def row(runtime, name, r, chosen):
            rows.append(f"| {runtime} | {name}{' (defib)' if chosen else ''} | {med(r['ms']):.0f} / {max(r['ms']):.0f} ms | "
                        f"{med(r['pause']):.1f} / {max(r['pause']):.1f} ms |")
        for name in ["py-spy dump --nonblocking", "py-spy dump (ptrace)", "control"]:
            row("python", name if name != "control" else "no tool (the machine's noise)", py[name], name.endswith("nonblocking"))
        for name in ["jcmd Thread.print -l", "jstack", "control"]:
            row("java", name if name != "control" else "no tool (the machine's noise)", jv[name], name.startswith("jcmd"))
        rows.append(f"| go | dlv attach on the hung process (before the kill) | {med(attach):.0f} / {max(attach):.0f} ms | "
                    f"{med(attach):.0f} / {max(attach):.0f} ms (every thread stopped throughout) |")
        rows.append(f"| go | dlv core on the native core, after the restart (defib) | {med(dlv_ms):.0f} / {max(dlv_ms):.0f} ms | "
                    f"0 (the process is gone; native core itself {med(core_ms):.0f} / {max(core_ms):.0f} ms) |")
        nb, pt, ctl = py["py-spy dump --nonblocking"], py["py-spy dump (ptrace)"], py["control"]
        targets.append({"id": "py-spy-nonblocking-pause", "target": "py-spy --nonblocking pauses the interpreter no more than the machine's noise (+5 ms)",
                        "measured": f"median {med(nb['pause']):.1f} ms vs control {med(ctl['pause']):.1f} ms",
                        "pass": med(nb["pause"]) <= med(ctl["pause"]) + 5})
        targets.append({"id": "runtime-tools-in-budget", "target": "py-spy and jcmd each finish within the default runtime budget (3000 ms)",
                        "measured": f"py-spy max {max(nb['ms']):.0f} ms, jcmd max {max(jv['jcmd Thread.print -l']['ms']):.0f} ms",
                        "pass": max(nb["ms"]) < 3000 and max(jv["jcmd Thread.print -l"]["ms"]) < 3000})
        targets.append({"id": "go-from-the-core", "target": "dlv on the core keeps the outage shorter than dlv attach would (attach pause > native core)",
                        "measured": f"attach pause median {med(attach):.0f} ms vs native core {med(core_ms):.0f} ms",
                        "pass": med(attach) > med(core_ms)})
        targets.append({"id": "go-diagnosis", "target": "every Go hang diagnosed leaked-read-lock from the core",
                        "measured": ", ".join(diagnoses), "pass": all(d == "leaked-read-lock" for d in diagnoses)})
        notes.append(f"py-spy ptrace mode pause median {med(pt['pause']):.1f} ms (max {max(pt['pause']):.1f}); "
                     f"jcmd's JVM pause median {med(jv['jcmd Thread.print -l']['pause']):.1f} ms (a safepoint for the dump).")
        status, reason = "ok", None
    except Exception as e:  # noqa: BLE001 - the report says what failed
        status, reason = "FAIL", f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    md = ["## Runtime evidence: the tools' cost and the pause they impose", "",
          f"{REPS} interleaved repetitions per tool; median / max. Pause = the longest gap a 1 ms ticker thread inside the "
          "target saw while the tool ran (a control window of the same length with no tool shows the machine's own noise).", "",
          "| runtime | route | tool wall time | pause the service felt |", "|---|---|---|---|"] + rows + [""] + notes
    if reason:
        md.append(f"**FAIL**: {reason}")
    doc = {"part": "runtime", "status": status, "reason": reason, "targets": targets, "markdown": "\n".join(md) + "\n"}
    with open(os.path.join(OUT, "runtime.json"), "w") as f:
        json.dump(doc, f, indent=2)
    print("\n".join(md))
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
