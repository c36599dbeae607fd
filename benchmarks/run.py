"""The benchmark suite of the "Performance" issue: pyfora against its peers, in one run.

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -e . -r benchmarks/requirements.txt
    .venv-bench/bin/python benchmarks/run.py --runs 3 --json benchmarks/results/latest.json

Workloads (``--workloads w1,w2,...``): W1 no-op round-trip latency, W2 tiny-task throughput,
W3 100 MB transfer each way (MB/s: the median of ``common.TIMED_ROUNDS`` transfers with no
sampler running; peak RSS, and pyfora's files in /dev/shm, from one more transfer
sampled), W4 parallel isPrime count, W5 start-up and shut-down. Systems (``--systems
pyfora,ppe,dask,ray``; ``local`` is the sequential W4 reference; ``pyfora-dask``, pyfora
on its Dask backend, runs W1 and W2 only): a system whose package is not installed is
reported as such.

Each (run, system, workload) runs in a fresh child process of its own session, with a time
limit (``--timeout``): a peer that hangs is killed with its whole process tree and reported
as a timeout, and the suite goes on. Results are medians over ``--runs``; ratios are taken
against ProcessPoolExecutor in the same run, and pyfora-dask's against raw Dask. The table
goes to stdout, everything measured to the JSON file.

Not run in CI: numbers depend on the machine and on whatever else it is doing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOADS = ["w1", "w2", "w3", "w4", "w5"]
SYSTEMS = ["pyfora", "ppe", "dask", "ray", "local", "pyfora-dask"]
PACKAGE = {"pyfora": "pyfora", "ppe": None, "dask": "distributed", "ray": "ray", "local": None,
           "pyfora-dask": "distributed"}
LABEL = {"pyfora": "pyfora", "ppe": "PPE(2)", "dask": "Dask", "ray": "Ray", "local": "local",
         "pyfora-dask": "pyfora on Dask"}
ONLY = {"local": {"w4"}, "pyfora-dask": {"w1", "w2"}}
#: Each ratio column: (system, the system it is measured against in the same run, header).
RATIOS = [("pyfora", "ppe", "pyfora/PPE"), ("pyfora-dask", "dask", "pyfora-dask/Dask")]
MARK = "@@BENCH-RESULT@@ "

# (workload, path in the child's result, label, unit, higher is better)
METRICS = [
    ("w1", "sync.p50_us", "W1 no-op p50, sync", "µs", False),
    ("w1", "sync.p99_us", "W1 no-op p99, sync", "µs", False),
    ("w1", "sync_value.p50_us", "W1 p50 sync + toLocal", "µs", False),
    ("w1", "async.p50_us", "W1 no-op p50, async", "µs", False),
    ("w1", "async.p99_us", "W1 no-op p99, async", "µs", False),
    ("w1", "async_value.p50_us", "W1 p50 async + toLocal", "µs", False),
    ("w2", "sync.tasks_per_s", "W2 tiny tasks, sync", "tasks/s", True),
    ("w2", "sync.with_values_tasks_per_s", "W2 sync + toLocal all", "tasks/s", True),
    ("w2", "async.tasks_per_s", "W2 tiny tasks, async", "tasks/s", True),
    ("w2", "async.with_values_tasks_per_s", "W2 async + toLocal all", "tasks/s", True),
    ("w3", "up_bytes.mb_per_s", "W3 up, bytes", "MB/s", True),
    ("w3", "up_numpy.mb_per_s", "W3 up, numpy", "MB/s", True),
    ("w3", "down_bytes.mb_per_s", "W3 down, bytes", "MB/s", True),
    ("w3", "down_numpy.mb_per_s", "W3 down, numpy", "MB/s", True),
    ("w3", "copies.client", "W3 peak copies, client", "×payload", False),
    ("w3", "copies.coordinator", "W3 peak copies, coordinator", "×payload", False),
    ("w3", "copies.worker", "W3 peak copies, worker", "×payload", False),
    ("w3", "copies.shared memory", "W3 peak copies, /dev/shm", "×payload", False),
    ("w4", "with_block.seconds", "W4 isPrime count", "s", False),
    ("w4", "chunks.seconds", "W4 isPrime, submit chunks", "s", False),
    ("w5", "start_to_first_s", "W5 import→first result", "s", False),
    ("w5", "first_after_import_s", "W5 start→first (no import)", "s", False),
    ("w5", "shutdown_s", "W5 shut-down", "s", False),
]


# -- the child: one system, one workload ----------------------------------------------

def child(system: str, workload: str, cfg: dict) -> None:
    sys.path.insert(0, HERE)
    module = __import__(f"sys_{system.replace('-', '_')}")
    fn = getattr(module, workload, None)
    result = {"status": "n/a", "reason": f"{system} has no {workload}"} if fn is None else fn(cfg)
    print(MARK + json.dumps(result), flush=True)


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass


def run_child(system: str, workload: str, cfg: dict, timeout: float, log) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [HERE, ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", system, workload,
           "--cfg", json.dumps(cfg)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        output, _ = proc.communicate()
        log.write(f"==== {system} {workload}: TIMEOUT after {timeout} s\n{output}\n")
        return {"status": "timeout", "reason": f"killed after {timeout:.0f} s"}
    _kill_tree(proc)   # daemons a peer left behind in its session
    log.write(f"==== {system} {workload} ({time.perf_counter() - t0:.1f} s, "
              f"exit {proc.returncode})\n{output}\n")
    for line in reversed(output.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = " | ".join(output.strip().splitlines()[-3:])[-300:]
    return {"status": "error", "reason": f"exit {proc.returncode}: {tail}"}


# -- aggregation ----------------------------------------------------------------------

def _get(result: dict, path: str):
    if path.startswith("copies."):
        role = path.split(".", 1)[1]
        values = [phase["rss"][role]["copies"] for phase in result.values()
                  if isinstance(phase, dict) and role in phase.get("rss", {})]
        return max(values) if values else None
    node = result
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float)) else None


def _status(result: dict | None, path: str) -> str | None:
    if result is None:
        return None
    if result.get("status") in ("timeout", "error", "n/a", "not installed"):
        return result["status"]
    first = path.split(".")[0]
    sub = result.get(first)
    if isinstance(sub, dict) and sub.get("status"):
        return sub["status"]
    return None


def medians(runs: list[dict], systems: list[str]) -> dict:
    table = {}
    for workload, path, *_ in METRICS:
        key = f"{workload}.{path}"
        table[key] = {}
        for system in systems:
            values = [v for r in runs if (v := _get(r.get(system, {}).get(workload) or {}, path))
                      is not None]
            if values:
                table[key][system] = {"median": statistics.median(values), "runs": values}
            else:
                statuses = [_status(r.get(system, {}).get(workload), path) for r in runs]
                status = next((s for s in statuses if s), None)
                if status:
                    table[key][system] = {"status": status}
    return table


def ratios(runs: list[dict], workload: str, path: str, system: str,
           base: str = "ppe") -> float | None:
    """Median over runs of system/base measured in the same run."""
    values = []
    for r in runs:
        a = _get(r.get(system, {}).get(workload) or {}, path)
        b = _get(r.get(base, {}).get(workload) or {}, path)
        if a is not None and b:
            values.append(a / b)
    return statistics.median(values) if values else None


def _med(table, key, system):
    cell = table.get(key, {}).get(system, {})
    return cell.get("median")


def targets(table: dict, runs: list[dict]) -> list[dict]:
    out = []

    def add(name, value, goal, met, detail):
        out.append({"target": name, "value": value, "goal": goal,
                    "met": None if value is None else met, "detail": detail})

    # The goals of issue #17, "Performance, round two".
    for api, goal in (("sync", 1.5), ("async", 1.2)):
        r = ratios(runs, "w1", f"{api}.p50_us", "pyfora")
        add(f"W1 p50 ({api}) ≤ {goal}× PPE", r, goal, r is not None and r <= goal,
            "pyfora/PPE p50 ratio (same run)")
    for api, goal in (("sync", 1.0), ("async", 1.2)):
        r = ratios(runs, "w2", f"{api}.tasks_per_s", "pyfora")
        add(f"W2 tasks/s ({api}) ≥ {goal}× PPE", r, goal, r is not None and r >= goal,
            "pyfora/PPE tasks/s ratio (same run)")
    # "adds at most 20%": to latency, ×1.2; to the time per task, so tasks/s ÷ 1.2.
    for api in ("sync", "async"):
        r = ratios(runs, "w1", f"{api}.p50_us", "pyfora-dask", "dask")
        add(f"W1 p50 ({api}) on Dask ≤ 1.2× raw Dask", r, 1.2, r is not None and r <= 1.2,
            "pyfora-dask/Dask p50 ratio (same run)")
    for api in ("sync", "async"):
        r = ratios(runs, "w2", f"{api}.tasks_per_s", "pyfora-dask", "dask")
        add(f"W2 tasks/s ({api}) on Dask ≥ 0.83× raw Dask", r, 1 / 1.2,
            r is not None and r >= 1 / 1.2, "pyfora-dask/Dask tasks/s ratio (same run)")
    for phase in ("up_bytes", "up_numpy", "down_bytes", "down_numpy"):
        every = [_get(r.get("pyfora", {}).get("w3") or {}, f"{phase}.mb_per_s") for r in runs]
        slowest = min((v for v in every if v is not None), default=None)
        add(f"W3 {phase} ≥ 1500 MB/s in every run", slowest, 1500,
            slowest is not None and slowest >= 1500, "MB/s, the slowest run")
    for role in ("client", "coordinator", "worker"):
        v = _med(table, f"w3.copies.{role}", "pyfora")
        add(f"W3 peak RSS of {role} ≤ 1 copy", v, 1.0, v is not None and v <= 1.05,
            "max over phases of (peak − start RSS) / payload (5% for the interpreter)")
    values = []
    for r in runs:
        a = _get(r.get("pyfora", {}).get("w5") or {}, "start_to_first_s")
        b = _get(r.get("dask", {}).get("w5") or {}, "start_to_first_s")
        if a is not None and b:
            values.append(a / b)
    v = statistics.median(values) if values else None
    add("W5 start→first ≤ 0.3× Dask", v, 0.3, v is not None and v <= 0.3,
        "pyfora/Dask ratio, import included (same run)")
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("µs",) or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if unit != "s" else f"{value:.3f}"


def render(table: dict, runs: list[dict], systems: list[str], goals: list[dict]) -> str:
    cols = [s for s in systems]
    pairs = [(s, b) for s, b, _ in RATIOS if s in systems]
    head = ["metric", "unit"] + [LABEL[s] for s in cols] + [h for s, _, h in RATIOS
                                                             if s in systems]
    rows = []
    for workload, path, label, unit, _ in METRICS:
        key = f"{workload}.{path}"
        cells = table.get(key, {})
        if not cells:
            continue
        row = [label, unit]
        for s in cols:
            cell = cells.get(s)
            row.append("" if cell is None else cell.get("status") or _fmt(cell["median"], unit))
        for s, b in pairs:
            ratio = ratios(runs, workload, path, s, b) if not path.startswith("copies") else None
            row.append(f"{ratio:.2f}×" if ratio is not None else "")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(head, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append("")
    for g in goals:
        mark = {True: "MET   ", False: "MISSED", None: "n/a   "}[g["met"]]
        val = "—" if g["value"] is None else f"{g['value']:.2f}"
        lines.append(f"{mark} {g['target']}: {val} ({g['detail']})")
    return "\n".join(lines)


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    versions = {}
    for name in ("pyfora", "dask", "distributed", "ray", "numpy", "cloudpickle", "websockets",
                 "aiohttp", "uvloop", "psutil"):
        try:
            from importlib.metadata import version
            versions[name] = version(name)
        except Exception:
            versions[name] = None
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "load_avg": os.getloadavg(), "versions": versions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"))
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds one system gets for one workload (default 300)")
    parser.add_argument("--w1-n", type=int, default=2000)
    parser.add_argument("--w2-n", type=int, default=20000)
    parser.add_argument("--w3-mb", type=int, default=100)
    parser.add_argument("--w4-n", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("SYSTEM", "WORKLOAD"), help=argparse.SUPPRESS)
    parser.add_argument("--cfg", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, json.loads(args.cfg))
        return 0

    cfg = {"w1_n": args.w1_n, "w2_n": args.w2_n, "w3_mb": args.w3_mb, "w4_n": args.w4_n}
    workloads = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    systems = [s.strip().lower() for s in args.systems.split(",") if s.strip()]
    for name in workloads + systems:
        if name not in WORKLOADS + SYSTEMS:
            parser.error(f"unknown workload or system {name!r}")
    installed = {s: PACKAGE[s] is None or importlib.util.find_spec(PACKAGE[s]) is not None
                 for s in systems}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    log_path = os.path.splitext(os.path.abspath(args.json))[0] + ".log"
    runs: list[dict] = []
    started = datetime.datetime.now().isoformat(timespec="seconds")
    with open(log_path, "w") as log:
        for run in range(args.runs):
            results: dict = {}
            for workload in workloads:
                for system in systems:
                    if system in ONLY and workload not in ONLY[system]:
                        continue
                    if not installed[system]:
                        results.setdefault(system, {})[workload] = {"status": "not installed"}
                        continue
                    t0 = time.perf_counter()
                    result = run_child(system, workload, cfg, args.timeout, log)
                    log.flush()
                    results.setdefault(system, {})[workload] = result
                    status = result.get("status", "ok")
                    print(f"run {run + 1}/{args.runs} {workload} {system:11s} {status:8s} "
                          f"{time.perf_counter() - t0:6.1f} s"
                          + (f"  {result.get('reason')}" if status != "ok" else ""),
                          file=sys.stderr, flush=True)
            runs.append(results)
    table = medians(runs, systems)
    goals = targets(table, runs)
    text = render(table, runs, systems, goals)
    print(text)
    with open(args.json, "w") as f:
        json.dump({"started": started, "command": " ".join([os.path.relpath(sys.executable, ROOT),
                                                            "benchmarks/run.py"] + sys.argv[1:]),
                   "config": cfg, "machine": machine(), "runs": runs, "medians": table,
                   "targets": goals, "table": text}, f, indent=1)
    print(f"\nJSON: {args.json}\nlog:  {log_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
