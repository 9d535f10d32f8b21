#!/usr/bin/env python3
"""Issue 10 figures: what hostile sources and a down tracking server cost a run, before and after; prints Markdown.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/bench_faults.py bomb       # peak RSS of `fetch` when Yahoo sends a 1 MB gzip body inflating to 1 GiB
    python docs/bench_faults.py hang       # wall time of `fetch` with every source hanging, and with a trickling server
    python docs/bench_faults.py mlflow     # what a refused or hanging MLFLOW_TRACKING_URI costs the four horizons
    python docs/bench_faults.py all

"Before" runs the same command on the fxcu.py of commit BASE (the branch point of issue 10), copied
into a temp folder; "after" runs this checkout's fxcu.py. Each figure is one run per variant (the
faults are deterministic; the machine is shared, so read the ratios, not the last digit). The local
servers are benchkit's (benchkit.FakeSources), playing the real recorded bodies.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchkit as t  # the shared builders and local servers of the benches

BASE = "4f1cd23"  # the last commit before issue 10's fault work


def old_fxcu(folder: Path) -> Path:
    """The fxcu.py of BASE, written into `folder`."""
    path = folder / "fxcu.py"
    path.write_text(
        subprocess.run(["git", "show", f"{BASE}:fxcu.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    )
    return path


def run(
    script: Path, args: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> tuple[float, float, int | str, str]:
    """Wall seconds, peak RSS (MB), exit code (or 'killed'), last stderr line of `python SCRIPT ARGS`."""
    code = (
        "import atexit, resource, runpy, sys\n"
        "atexit.register(lambda: print(f'peak_rss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr))\n"
        f"sys.argv = ['fxcu.py', *{args!r}]\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env={**t.clean_environ(), **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return time.monotonic() - started, float("nan"), "killed", f"still running after {timeout:.0f} s"
    seconds = time.monotonic() - started
    err, _, rss = proc.stderr.rpartition("peak_rss_kb=")
    lines = [line for line in err.splitlines() if line.strip()]
    return seconds, int(rss or 0) / 1024, proc.returncode, (lines[-1] if lines else "")[:160]


def fresh_data(root: Path, name: str) -> Path:
    data = root / name
    t.write_real_warehouse(data)
    return data


def bench_bomb(root: Path, old: Path) -> None:
    print("\n### Peak memory of `fetch` under a gzip bomb\n")
    print(f"Yahoo (CLP=X and HG=F) answers 200 with {len(t.gzip_bomb()) / 1e6:.2f} MB of gzip that inflates to 1 GiB;")
    print("mindicador and FRED answer normally. Peak RSS of the whole `python fxcu.py fetch` process.\n")
    print("| variant | exit | wall s | peak RSS MB | last stderr line |\n|---|---|---|---|---|")
    bomb = t.Reply(body=t.gzip_bomb(), encoding="gzip")
    for label, script, routes in (
        ("after, real bodies (baseline)", ROOT / "fxcu.py", t.good_routes()),
        ("after, gzip bomb", ROOT / "fxcu.py", t.routes(clp=bomb, hg=bomb)),
        (f"before ({BASE}), gzip bomb", old, t.routes(clp=bomb, hg=bomb)),
    ):
        with t.FakeSources(routes) as api:
            seconds, rss, code, last = run(
                script, ["fetch"], t.fault_env(fresh_data(root, f"bomb-{time.monotonic_ns()}"), api.url), root, 300
            )
        print(f"| {label} | {code} | {seconds:.1f} | {rss:.0f} | `{last}` |")


def bench_hang(root: Path, old: Path) -> None:
    print("\n### Wall time of `fetch` with every source hanging or trickling\n")
    print("Hanging: every path waits 600 s before answering. Trickling: every path sends its real body 16 bytes")
    print("every 0.2 s, so no single read ever waits `FXCU_TIMEOUT`. The warehouse holds the real history (the")
    print("cache answers in the end). Defaults are FXCU_TIMEOUT=20, FXCU_NETWORK_BUDGET=180.\n")
    print("| variant | env | exit | wall s | last stderr line |\n|---|---|---|---|---|")
    hang = t.Reply(delay=600)
    trickle = t.Reply(body=t.good_routes()[t.YAHOO_CLP].body, trickle=0.2)
    every = ("clp", "hg", "mindicador", "fred")
    cases = [
        ("after, hanging", ROOT / "fxcu.py", hang, {"FXCU_TIMEOUT": "5", "FXCU_NETWORK_BUDGET": "30"}, 120),
        ("after, trickling", ROOT / "fxcu.py", trickle, {"FXCU_TIMEOUT": "5", "FXCU_NETWORK_BUDGET": "30"}, 120),
        (f"before ({BASE}), trickling", old, trickle, {"FXCU_TIMEOUT": "5", "FXCU_NETWORK_BUDGET": "30"}, 300),
        ("after, hanging", ROOT / "fxcu.py", hang, {}, 400),
        ("after, trickling", ROOT / "fxcu.py", trickle, {}, 400),
    ]
    for label, script, reply, extra, limit in cases:
        with t.FakeSources(t.routes(**dict.fromkeys(every, reply))) as api:
            env = t.fault_env(fresh_data(root, f"hang-{time.monotonic_ns()}"), api.url, **extra)
            seconds, _, code, last = run(script, ["fetch"], env, root, limit)
        shown = " ".join(f"{k}={v}" for k, v in extra.items()) or "defaults"
        print(f"| {label} | {shown} | {code} | {seconds:.1f} | `{last}` |")


MLFLOW_CODE = """
import sys, time
sys.path[:0] = [{folder!r}, {root!r}, {docs!r}]
import fxcu, benchkit as t
import mlflow.tracking  # imported first: the figure is the waiting, not the 2-10 s import
config = fxcu.Config(data_dir=fxcu.Path({data!r}), tracking_timeout=600)
started = time.monotonic()
for horizon in fxcu.HORIZONS:
    try:
        fxcu.log_run(config, t.run_record(horizon, 20.0), environ={{"MLFLOW_TRACKING_URI": {uri!r}}})
    except Exception as exc:
        pass
print(f"{{time.monotonic() - started:.1f}}")
"""


def bench_mlflow(root: Path, old: Path) -> None:
    print("\n### What a down MLflow tracking server costs a run\n")
    print("`log_run` for the four horizons (what `run all` does), MLFLOW_TRACKING_URI pointing at a closed port")
    print("(refused) or at a socket that accepts and never answers (hanging); mlflow imported beforehand.\n")
    print("| variant | server | wall s for 4 horizons |\n|---|---|---|")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    servers = {"refused": t.closed_url(), "hanging": f"http://127.0.0.1:{listener.getsockname()[1]}"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    for label, folder in (("after", ROOT), (f"before ({BASE})", old.parent)):
        for server, uri in servers.items():
            code = MLFLOW_CODE.format(
                folder=str(folder),
                root=str(ROOT),
                docs=str(ROOT / "docs"),
                data=str(root / f"ml-{time.monotonic_ns()}"),
                uri=uri,
            )
            try:
                out = subprocess.run(
                    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900, check=False
                ).stdout.strip()
            except subprocess.TimeoutExpired:
                out = "> 900 (killed)"
            print(f"| {label} | {server} | {out.splitlines()[-1] if out else '?'} |")
    listener.close()


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "all"
    with tempfile.TemporaryDirectory(prefix="fxcu-faults-") as tmp:
        root = Path(tmp)
        (root / "old").mkdir()
        old = old_fxcu(root / "old")
        print(f"## Issue 10 figures (`python docs/bench_faults.py {what}`)")
        for name, bench in (("bomb", bench_bomb), ("hang", bench_hang), ("mlflow", bench_mlflow)):
            if what in (name, "all"):
                bench(root, old)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
