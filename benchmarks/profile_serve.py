"""Where a serving process spends its CPU under unary load: per-thread CPU time and py-spy samples, grouped.

Issue #26 asks, where a target is missed, for a profile rather than a guess. This starts the real server (the
flags `curvedit bench serve` uses) and a no-op gRPC server of as many processes, drives each with the scale-out
benchmark's client processes at one concurrency, and measures, in two windows of ``--duration``:

- CPU-µs per request by thread (``/proc/PID/task/TID/stat``, no profiler attached): each process's asyncio
  thread (gRPC's aio layer and the servicer), gRPC's poller and event-engine threads, the compute threads;
- where each process's main thread is (py-spy ``--nonblocking --threads --idle`` samples; those not waiting in
  epoll grouped by the innermost Python frame: gRPC's Cython aio layer, asyncio, numpy, curvedit's own code, the
  rest of the standard library). Time inside a C extension counts for the Python frame that called it.

    python -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy        # not a project dependency
    .venv/bin/python benchmarks/profile_serve.py --py-spy /tmp/pyspy/bin/py-spy --workers 1 --json out/p1.json

Record the JSON with `curvedit bench results record serve_profile out/p1.json --machine "..."`.
py-spy needs ptrace on the server's processes (root, or CAP_SYS_PTRACE in a container).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import curvedit
from curvedit.bench.load import ServerProcess
from curvedit.bench.scale import family, load, stat_cpu_seconds

WAITING = "epoll wait (selectors)"
CALLBACKS = "C code under an event-loop callback (a front end's: gRPC's Cython aio layer)"
GROUPS = [  # (group, substrings of the innermost Python frame; first match wins)
    # A coroutine of gRPC's Cython aio layer runs as a callback of the event loop with no Python frame of its
    # own: in a front end, a sample whose innermost Python frame is Handle._run is in that C code (the call's
    # state machine and the protobuf parsing and serialising it does). The engine process runs no gRPC.
    (CALLBACKS, ("Handle._run (asyncio/events.py",)),
    (WAITING, ("selectors.py",)),
    ("asyncio loop machinery", ("asyncio/",)),
    ("gRPC Python layer", ("grpc/",)),
    ("numpy", ("numpy/",)),
    ("curvedit", ("service/", "curvedit/", "engines/", "models/", "kernels/", "export/")),
]


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, tid) → (thread name, user + system CPU seconds so far)."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                continue
            out[pid, int(tid)] = (name, stat_cpu_seconds(f"/proc/{pid}/task/{tid}/stat"))
    return out


def classify(stack: list[str]) -> str:
    python = [frame for frame in stack if ".py:" in frame]
    if not python:
        return "no Python frame"
    leaf = python[-1]
    for group, needles in GROUPS:
        if any(n in leaf for n in needles):
            return group
    return "Python standard library, other"


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy's ``--format raw``: one line per distinct stack, ``frame;frame;...;leaf count``."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def summarize(stacks: list[tuple[list[str], int]], pid: int, top: int = 12) -> dict:
    """The samples of process ``pid``'s main thread (``--threads`` puts "thread (TID): name" first), grouped: it
    runs the event loop, gRPC's aio layer and the servicer; the others are accounted for by their CPU time.
    ``--idle`` samples it whether or not it runs; ``busy_share`` is each group's share of the samples not waiting
    in epoll, the part of its CPU time that group takes."""
    stacks = [(stack[1:], n) for stack, n in stacks if stack[0].startswith(f"thread ({pid})")]
    total = sum(n for _, n in stacks) or 1
    groups: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    for stack, n in stacks:
        group = classify(stack)
        groups[group] += n
        python = [frame for frame in stack if ".py:" in frame]
        if python and group != WAITING:
            leaves[python[-1].rsplit(":", 1)[0] + ")"] += n
    busy = (total - groups[WAITING]) or 1
    return {
        "samples": total,
        "waiting_share": round(groups[WAITING] / total, 3),
        "groups": [{"group": g, "busy_share": round(n / busy, 3)} for g, n in groups.most_common()
                   if g != WAITING],
        "innermost": [{"frame": f, "busy_share": round(n / busy, 3)} for f, n in leaves.most_common(top)],
    }


def thread_names(py_spy: str, pid: int) -> dict[int, str]:
    """OS thread id → Python thread name and its innermost frame, from one ``py-spy dump``."""
    done = subprocess.run([py_spy, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                          timeout=60)
    names, current = {}, None
    for line in done.stdout.splitlines():
        if line.startswith("Thread "):  # Thread 2978 (active): "MainThread"
            tid = int(line.split()[1], 0)
            current = tid
            names[tid] = line.split(":", 1)[1].strip().strip('"')
        elif current is not None and line.startswith("    ") and "(" in line:
            names[current] += f" in {line.strip().split(' (')[0]}"
            current = None
    return names


def _load(server: ServerProcess, latents, args, seconds: float) -> dict:
    requests, _, errors, completed = load(f"127.0.0.1:{server.port}", latents, args.concurrency, seconds,
                                          args.client_processes)
    return {"requests": requests, "errors": errors, "completed": completed}


def by_thread(server: ServerProcess, latents, args) -> tuple[float, list[dict]]:
    """One unprofiled window: requests/s and each server thread's CPU-µs per request."""
    pids = family(server.proc.pid)
    before = thread_cpu(pids)
    names: dict[int, str] = {}
    sampler = threading.Timer(args.duration / 2, lambda: [names.update(thread_names(args.py_spy, pid))
                                                         for pid in pids])
    sampler.start()
    done = _load(server, latents, args, args.duration)
    sampler.join()
    after = thread_cpu(pids)
    rows = []
    for key, (comm, cpu) in after.items():
        used = cpu - before.get(key, (comm, 0.0))[1]
        if used > 0:
            pid, tid = key
            rows.append({"pid": pid, "tid": tid, "thread": names.get(tid, comm),
                         "cpu_us_per_request": round(used / max(done["completed"], 1) * 1e6, 1)})
    rows.sort(key=lambda r: -r["cpu_us_per_request"])
    roles = process_roles(server.proc.pid, rows)
    for row in rows:
        row["process"] = roles[row["pid"]]
    return done["requests"] / args.duration, rows


def process_roles(root: int, rows: list[dict]) -> dict[int, str]:
    """What each process is: the one with a compute thread is the engine (the whole server at --workers 1), the
    root above an engine is the supervisor, and any other process that answered calls a front end."""
    engines = {row["pid"] for row in rows if row["thread"].startswith("curvedit-compute")}
    roles = {}
    for pid in {row["pid"] for row in rows}:
        if pid in engines:
            roles[pid] = "engine" if root not in engines else "server"
        elif pid == root and engines:
            roles[pid] = "supervisor"
        else:
            roles[pid] = "front end"
    return roles


def sampled(server: ServerProcess, latents, args) -> list[dict]:
    """One window under py-spy (non-blocking, so the server is not paused): the groups, per process."""
    with tempfile.TemporaryDirectory() as tmp:
        samplers = []
        for pid in family(server.proc.pid):
            out = Path(args.raw_dir or tmp) / f"{pid}.txt"
            cmd = [args.py_spy, "record", "--pid", str(pid), "--nonblocking", "--threads", "--idle",
                   "--rate", str(args.rate), "--duration", str(int(args.duration)), "--format", "raw",
                   "--output", str(out)]
            samplers.append((pid, out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                        text=True)))
        time.sleep(1.0)  # py-spy attaches
        _load(server, latents, args, args.duration)
        processes = []
        for pid, out, proc in samplers:
            _, err = proc.communicate(timeout=args.duration + 60)
            if proc.returncode != 0 or not out.exists():
                raise SystemExit(f"py-spy failed on pid {pid}: {err.strip()[-500:]}")
            processes.append({"pid": pid, **summarize(parse_raw(out.read_text()), pid)})
    return processes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load in each window")
    p.add_argument("--client-processes", type=int, default=2)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--raw-dir", help="keep py-spy's raw stacks (one file per process) here")
    args = p.parse_args(argv)

    bundle = curvedit.default_bundle_path()
    latents = curvedit.load(bundle, engine="torch").sample(4096, seed=0)
    server = ServerProcess([sys.executable, "-m", "curvedit.cli", "serve", "--model", str(bundle), "--port", "0",
                            "--http-port", "-1", "--metrics-port", "0", "--workers", str(args.workers),
                            "--engine", args.engine, "--max-concurrent-requests", "100000",
                            "--max-queue-size", "65536"])
    try:
        _load(server, latents, args, 2.0)  # warm up
        requests_per_s, threads = by_thread(server, latents, args)
        processes = sampled(server, latents, args)
    finally:
        server.stop()
    noop = ServerProcess([sys.executable, "-m", "curvedit.bench.noop", "--port", "0", "--processes",
                          str(args.workers)])
    try:
        _load(noop, latents, args, 2.0)
        noop_requests_per_s, noop_threads = by_thread(noop, latents, args)
    finally:
        noop.stop()
    servers = [summary("curvedit", args, requests_per_s, threads), summary("no-op", args, noop_requests_per_s,
                                                                          noop_threads)]
    roles = {row["pid"]: row["process"] for row in threads}
    cpu_of = {row["tid"]: row["cpu_us_per_request"] for row in threads}
    main_threads = [{"process": roles.get(proc["pid"], "front end"), "pid": proc["pid"], "group": g["group"],
                     "busy_share": g["busy_share"],
                     "cpu_us_per_request": round(g["busy_share"] * cpu_of.get(proc["pid"], 0.0), 1)}
                    for proc in processes if cpu_of.get(proc["pid"], 0.0) > 5 for g in proc["groups"]]
    for server, rows in zip(servers, (threads, noop_threads), strict=True):
        print(f"{server['server']}, {args.workers} process(es), c={args.concurrency}: "
              f"{server['requests_per_s']:,.0f} req/s, {server['cpu_us_per_request']:,.0f} server CPU-µs per "
              f"request; by thread (unprofiled window):")
        for row in rows:
            print(f"  {row['cpu_us_per_request']:8.1f}  {row['process']:<10} pid {row['pid']} tid {row['tid']}  "
                  f"{row['thread']}")
    print("\nmain threads under py-spy (samples not waiting in epoll, by innermost Python frame; µs ≈ share × the "
          "thread's CPU-µs per request):")
    for row in main_threads:
        print(f"  {row['process']:<10} pid {row['pid']:<7} {row['busy_share']:6.1%} "
              f"≈{row['cpu_us_per_request']:6.0f} µs  {row['group']}")
    for proc in processes:
        if cpu_of.get(proc["pid"], 0.0) > 5:
            print(f"  pid {proc['pid']}, innermost frames: " +
                  "; ".join(f"{f['frame']} {f['busy_share']:.1%}" for f in proc["innermost"][:6]))
    if args.json:
        report = {"servers": servers, "threads": threads + noop_threads, "main_threads": main_threads}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def summary(server: str, args, requests_per_s: float, threads: list[dict]) -> dict:
    by_process = collections.Counter()
    for row in threads:
        by_process[row["process"]] += row["cpu_us_per_request"]
    return {"server": server, "workers": args.workers, "engine": args.engine if server == "curvedit" else "–",
            "concurrency": args.concurrency,
            "requests_per_s": round(requests_per_s, 1),
            "cpu_us_per_request": round(sum(by_process.values()), 1),
            **{f"{role.replace(' ', '_')}_cpu_us": round(us, 1) for role, us in sorted(by_process.items())}}

if __name__ == "__main__":
    raise SystemExit(main())
