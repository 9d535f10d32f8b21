#!/usr/bin/env python3
"""Operations benchmarks for fxcu on the real histories in ../shared/data; prints Markdown tables.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/bench_ops.py tracking   # issue 5: fxcu.log_run on new and warm SQLite databases, storage per run
    python docs/bench_ops.py ops        # issue 6: `fxcu.py run 7d|all --offline` and `check` next to their import floors
    python docs/bench_ops.py all        # both
    python docs/bench_ops.py profile    # cProfile of one `run 7d --offline` (cumulative time by function; not in `all`)

Data directory: ../shared/data relative to the repository root, or FXCU_SHARED_DATA.
FXCU_BENCH_QUICK=1 cuts every repeat count to a smoke test (its numbers mean nothing).

Everything runs in fresh temporary data directories (removed afterwards) built like
`benchkit.write_real_warehouse`: the real CLP=X history (2006-05-16 .. 2024-07-15) and HG=F copper
up to 2024-07-15, as a warm parquet warehouse. Commands measured as subprocesses run from another
working directory with FXCU_DATA_DIR set, FXCU_TRACKING_TIMEOUT=60 and no MLFLOW_TRACKING_URI, and
are interleaved with their reference command, so the ratios compare like with like on a noisy machine.
Peak memory is GNU time's "Maximum resident set size" (`/usr/bin/time -v`); without it, a child
started through /bin/sh reports its children's ru_maxrss.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fxcu  # noqa: E402  (after the sys.path change)

SHARED = Path(os.environ.get("FXCU_SHARED_DATA") or ROOT.parent / "shared" / "data")
QUICK = os.environ.get("FXCU_BENCH_QUICK", "") not in {"", "0"}

# Repeat counts (the brief's): 5 new databases, 30 warm runs, 100 runs for storage; 5 `run 7d`
# next to the import floor, 3 `run all` next to `run 7d`, 9 `check` next to `import mlflow`.
COLD_DBS, WARM_RUNS, STORAGE_RUNS = (2, 3, 5) if QUICK else (5, 30, 100)
RUN_REPEATS, ALL_REPEATS, CHECK_REPEATS = (1, 1, 2) if QUICK else (5, 3, 9)
IMPORTTIME_REPEATS = 1 if QUICK else 3
FRESH_PROCESSES = 2 if QUICK else 5
TARGET_RUN_FLOOR, TARGET_ALL_7D, TARGET_CHECK_MLFLOW = 2.0, 1.6, 0.33
GUIDE_SECONDS_LOW, GUIDE_SECONDS_HIGH, GUIDE_SECONDS_MAX = 0.1, 0.5, 1.0
GUIDE_MB_PER_RUN, AIM_MB_PER_RUN = 10.0, 1.0
GNU_TIME = Path("/usr/bin/time")
MIB = 1024 * 1024
RUN_IMPORTS = "import httpx, polars, statsforecast.models, matplotlib.pyplot, mlflow"
# Everything `run 7d --offline` has loaded by its end (checked in sys.modules), the SQLite store included:
# no fxcu work, so `run 7d` / this is what the work costs on top of the unavoidable imports.
FULL_IMPORTS = RUN_IMPORTS + ", mlflow.tracking, mlflow.store.tracking.sqlalchemy_store"


# -- Inputs: the test suite's own builders (real data, ../shared/data or FXCU_SHARED_DATA) ----

from benchkit import write_real_warehouse  # noqa: E402

# -- Helpers --------------------------------------------------------------------------


def in_temp_dir(prefix: str, work: Callable[[Path], Any]) -> Any:
    """Run `work(root)` in a fresh temp folder, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return work(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def db_bytes(data_dir: Path) -> int:
    """The SQLite database with its journal files, as on disk."""
    db = data_dir / "mlflow" / "mlflow.db"
    return sum(
        p.stat().st_size for p in (db, db.with_name("mlflow.db-wal"), db.with_name("mlflow.db-journal")) if p.exists()
    )


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def du(path: Path) -> tuple[int, int]:
    """`du -sb` (apparent bytes) and `du -sk` (disk KiB, block-rounded) of a folder."""
    if not path.exists():
        return 0, 0
    apparent = int(
        subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
    )
    disk = int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])
    return apparent, disk


def versions() -> str:
    import importlib.metadata as md

    found = []
    for pkg in ("polars", "statsforecast", "mlflow", "sqlalchemy", "numpy"):
        try:
            found.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            found.append(f"{pkg} missing")
    return ", ".join(found)


def machine() -> str:
    return f"nproc {os.cpu_count()}, Python {platform.python_version()}, {versions()}, {platform.machine()} {platform.system()}"


def header(title: str, command: str) -> None:
    print(f"\n## {title}\n")
    print(f"- Command: `{command}` from the repository root{' (FXCU_BENCH_QUICK: smoke test only)' if QUICK else ''}.")
    print(f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.")
    print(f"- Machine: {machine()}.")
    print(f"- Data: {SHARED}\n")


def verdict(value: float, target: float, *, lower_is_better: bool = True) -> str:
    met = value <= target if lower_is_better else value >= target
    return (
        f"**met** ({value:.2f} ≤ {target:.2f})"
        if met
        else f"**not met** ({value:.2f} > {target:.2f}, {value / target:.2f}× the target)"
    )


# -- Issue 5: MLflow tracking -----------------------------------------------------------


def realistic_record(root: Path) -> tuple[fxcu.RunRecord, fxcu.Config, dict[str, float]]:
    """One real 7d forecast on the real data: its report, chart, table and input parquet files as artifacts."""
    source = root / "source"
    write_real_warehouse(source)
    config = dataclasses.replace(
        fxcu.Config.from_env({"FXCU_DATA_DIR": str(source), "FXCU_TRACKING_TIMEOUT": "60"}), offline=True
    )
    now = datetime.now(UTC)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    bundle = fxcu.load(config, now=now)
    seconds["fetch"] = time.perf_counter() - started
    started = time.perf_counter()
    bt = fxcu.backtest(bundle.usdclp, bundle.copper, "7d")
    seconds["backtest"] = time.perf_counter() - started
    started = time.perf_counter()
    fc = fxcu.forecast(bundle.usdclp, bundle.copper, "7d", backtest_result=bt)
    seconds["forecast"] = time.perf_counter() - started
    started = time.perf_counter()
    report = fxcu.write_report(fc, bundle, source / "reports", now=now)
    seconds["report"] = time.perf_counter() - started
    record = fxcu.report_record(fc, bundle, report, source / "inputs", now=now, seconds=seconds)
    return record, config, seconds


def forget_tracking_stores() -> bool:
    """Drop MLflow's in-process store and engine caches, so the next client pays what a new process pays (less imports).

    Private MLflow internals (3.x): returns False when they are not there, and the caller skips that row.
    """
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service import utils

        utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        for engine in SqlAlchemyStore._engine_map.values():
            engine.dispose()
        SqlAlchemyStore._engine_map.clear()
        return True
    except (ImportError, AttributeError):
        return False


def bench_tracking() -> dict[str, Any]:
    header("MLflow tracking (issue 5)", "python docs/bench_ops.py tracking")
    return in_temp_dir("fxcu-bench-tracking-", _bench_tracking)


def _bench_tracking(root: Path) -> dict[str, Any]:
    started = time.perf_counter()
    record, config, stage_seconds = realistic_record(root)
    print(
        f"Record: one real `7d` forecast built in {time.perf_counter() - started:.1f} s "
        f"(backtest {stage_seconds['backtest']:.1f} s, forecast {stage_seconds['forecast']:.1f} s); "
        f"{len(record.params)} params, {len(record.metrics)} metrics, {len(record.tags)} tags, {len(record.artifacts)} artifacts:"
    )
    for path in record.artifacts:
        print(f"  - {path.name}: {path.stat().st_size / 1024:.1f} KiB")
    artifact_total = sum(p.stat().st_size for p in record.artifacts)
    print(f"  - total {artifact_total / 1024:.1f} KiB\n")

    def log_into(data_dir: Path) -> tuple[float, str]:
        cfg = dataclasses.replace(config, data_dir=data_dir)
        t0 = time.perf_counter()
        run_id = fxcu.log_run(cfg, record, environ={})
        return time.perf_counter() - t0, run_id

    # mlflow itself, imported once here (polars, statsforecast, pandas and numpy are already loaded).
    t0 = time.perf_counter()
    import mlflow.entities  # noqa: F401
    import mlflow.tracking  # noqa: F401

    import_s = time.perf_counter() - t0
    # The first log_run of a process also pays MLflow's lazy imports (alembic, SQLAlchemy dialect, artifact repo).
    first_s, _ = log_into(root / "first")

    cold = []
    cold_db = []
    for i in range(COLD_DBS):
        seconds, _ = log_into(root / f"new{i}")
        cold.append(seconds)
        cold_db.append(db_bytes(root / f"new{i}"))

    warm_dir = root / "warm"
    log_into(warm_dir)  # migrate the database and create the experiment
    can_forget = forget_tracking_stores()
    cached, reopened, growth, art_growth = [], [], [], []
    mlruns = warm_dir / "mlflow" / "mlruns"
    for i in range(WARM_RUNS):
        for mode in ("cached", "reopened") if i % 2 == 0 else ("reopened", "cached"):
            if mode == "reopened" and not can_forget:
                continue
            if mode == "reopened":
                forget_tracking_stores()
            db0, art0 = db_bytes(warm_dir), tree_bytes(mlruns)
            seconds, _ = log_into(warm_dir)
            (cached if mode == "cached" else reopened).append(seconds)
            growth.append(db_bytes(warm_dir) - db0)
            art_growth.append(tree_bytes(mlruns) - art0)

    # (b'') what `fxcu run` pays: the first log_run in a new process on the warm database, after the
    # imports `run` has made by then (polars, statsforecast.models, matplotlib), mlflow's import timed apart.
    spec = root / "record.json"
    spec.write_text(json.dumps({**dataclasses.asdict(record), "artifacts": [str(p) for p in record.artifacts]}))
    fresh_process = []
    for _ in range(FRESH_PROCESSES):
        proc = subprocess.run(
            [sys.executable, "-c", CHILD_LOG_RUN, str(ROOT), str(spec), str(warm_dir)],
            capture_output=True,
            text=True,
            check=True,
        )
        fresh_process.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    db_before, (du_b_before, du_k_before) = db_bytes(warm_dir), du(mlruns)
    runs_before = _count_runs(warm_dir)
    hundred = []
    for _ in range(STORAGE_RUNS):
        seconds, _ = log_into(warm_dir)
        hundred.append(seconds)
    db_after, (du_b_after, du_k_after) = db_bytes(warm_dir), du(mlruns)
    runs_after = _count_runs(warm_dir)

    rows = [
        (
            "`import mlflow.tracking, mlflow.entities` in this process (polars, statsforecast, pandas already loaded)",
            [import_s],
        ),
        ("first `log_run` of the process, new database (lazy imports + schema creation)", [first_s]),
        (f"(a) new database: schema creation + experiment + run, median of {COLD_DBS} new databases", cold),
        (f"(b) warm database, store cached in the process, {WARM_RUNS} runs", cached),
    ]
    if reopened:
        rows.append(
            (
                f"(b') warm database, store and engine re-created each run (what a new `fxcu run` process pays, less imports), {len(reopened)} runs",
                reopened,
            )
        )
    rows.append(
        (
            f"(b'') warm database, first `log_run` in a new process (after `run`'s imports): `import mlflow`, {FRESH_PROCESSES} processes",
            [f["import"] for f in fresh_process],
        )
    )
    rows.append(
        (
            "(b'') ... then `log_run` itself (store creation, schema check, MLflow's lazy imports, writes, artifact copies)",
            [f["log_run"] for f in fresh_process],
        )
    )
    rows.append(
        (
            "(b'') ... sum: what `seconds_tracking` of a one-horizon `fxcu run` measures",
            [f["import"] + f["log_run"] for f in fresh_process],
        )
    )
    rows.append((f"warm database, {STORAGE_RUNS} more runs in a row (store cached)", hundred))
    print("**Time of `fxcu.log_run(config, record, environ={})`** (file lock + bounded thread + MLflow), seconds:\n")
    print("| what | n | median s | [25%, 75%] | min | max |")
    print("|---|---:|---:|---|---:|---:|")
    for label, values in rows:
        lo, hi = quartiles(values)
        print(
            f"| {label} | {len(values)} | {median(values):.3f} | [{lo:.3f}, {hi:.3f}] | {min(values):.3f} | {max(values):.3f} |"
        )

    warm_median = median(reopened or cached)
    print()
    print("- Guide: +0.1–0.5 s per run, success criterion under 1 s.")
    print(
        f"- (a) new database, median {median(cold):.2f} s: under 1 s {verdict(median(cold), GUIDE_SECONDS_MAX)}; "
        f"at or under the guide's 0.5 s upper bound: {'yes' if median(cold) <= GUIDE_SECONDS_HIGH else 'no'}."
    )
    print(
        f"- (b) warm database, store cached, median {median(cached):.3f} s: under 1 s {verdict(median(cached), GUIDE_SECONDS_MAX)}; "
        f"at or under the guide's 0.5 s upper bound: {'yes' if median(cached) <= GUIDE_SECONDS_HIGH else 'no'}."
    )
    if reopened:
        print(
            f"- (b') warm database, store re-created, median {median(reopened):.3f} s: under 1 s {verdict(median(reopened), GUIDE_SECONDS_MAX)}; "
            f"at or under the guide's 0.5 s upper bound: {'yes' if median(reopened) <= GUIDE_SECONDS_HIGH else 'no'}."
        )
    first_total = median([f["import"] + f["log_run"] for f in fresh_process])
    print(
        f"- (b'') first `log_run` of a new process, warm database, mlflow import included, median {first_total:.2f} s: under 1 s "
        f"{verdict(first_total, GUIDE_SECONDS_MAX)}; without the import {median([f['log_run'] for f in fresh_process]):.2f} s."
    )
    print(f"- Ratio (a) / (b): {median(cold) / median(cached):.1f}×.")

    per100 = (db_after - db_before) / max(1, STORAGE_RUNS) * 100
    art_per_run = median(art_growth)
    print("\n**Storage per run** (SQLite `mlflow.db`, journal mode delete; artifacts under `mlflow/mlruns`):\n")
    print("| what | value |")
    print("|---|---:|")
    print(
        f"| new database after its first run (schema + 1 experiment + 1 run), median of {COLD_DBS} | {median(cold_db) / 1024:.0f} KiB |"
    )
    print(
        f"| database growth per run, median of {len(growth)} warm runs (SQLite grows in 4 KiB pages) | {median(growth) / 1024:.1f} KiB |"
    )
    print(f"| database growth per run, mean of the same {len(growth)} | {statistics.fmean(growth) / 1024:.1f} KiB |")
    print(
        f"| database before / after {STORAGE_RUNS} more runs ({runs_before} -> {runs_after} runs) | {db_before / 1024:.0f} KiB / {db_after / 1024:.0f} KiB |"
    )
    print(f"| **database growth per 100 runs** | **{per100 / MIB:.2f} MiB** ({per100 / 100 / 1024:.1f} KiB per run) |")
    print(f"| artifact bytes per run, median of {len(art_growth)} | {art_per_run / 1024:.1f} KiB |")
    print(
        f"| `du -sb mlruns` before / after {STORAGE_RUNS} runs | {du_b_before / MIB:.2f} / {du_b_after / MIB:.2f} MiB ({(du_b_after - du_b_before) / max(1, STORAGE_RUNS) / 1024:.1f} KiB per run) |"
    )
    print(
        f"| `du -sk mlruns` (disk, block-rounded) before / after | {du_k_before / 1024:.2f} / {du_k_after / 1024:.2f} MiB ({(du_k_after - du_k_before) / max(1, STORAGE_RUNS):.1f} KiB per run) |"
    )
    total_per_run = per100 / 100 + (du_k_after - du_k_before) * 1024 / max(1, STORAGE_RUNS)
    print(f"| **total per run on disk (database + artifacts)** | **{total_per_run / 1024:.0f} KiB** |")
    print()
    print(
        f"- Guide: ~{GUIDE_MB_PER_RUN:.0f} MB per run expected; aim well under {AIM_MB_PER_RUN:.0f} MB: "
        f"{verdict(total_per_run / 1e6, AIM_MB_PER_RUN)} MB per run (database + artifacts on disk)."
    )
    print(
        f"- At 4 horizons a day, 30 days: {per100 / 100 * 120 / MIB:.1f} MiB of database a month (guide: under 100 MB a month), "
        f"{total_per_run * 120 / MIB:.0f} MiB in all with artifacts."
    )
    return {
        "import_mlflow_s": import_s,
        "first_log_run_s": first_s,
        "cold_s": cold,
        "warm_cached_s": cached,
        "warm_reopened_s": reopened,
        "hundred_s": hundred,
        "db_growth_per_run_bytes": growth,
        "artifact_growth_per_run_bytes": art_growth,
        "db_before": db_before,
        "db_after": db_after,
        "runs_before": runs_before,
        "runs_after": runs_after,
        "fresh_process": fresh_process,
        "du_b": [du_b_before, du_b_after],
        "du_k": [du_k_before, du_k_after],
        "cold_db_bytes": cold_db,
        "warm_median_s": warm_median,
    }


CHILD_LOG_RUN = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import fxcu
import polars, statsforecast.models, matplotlib.pyplot  # loaded by `run` before it tracks
spec = json.loads(Path(sys.argv[2]).read_text())
spec["artifacts"] = tuple(Path(p) for p in spec["artifacts"])
record = fxcu.RunRecord(**spec)
config = fxcu.Config.from_env({"FXCU_DATA_DIR": sys.argv[3], "FXCU_TRACKING_TIMEOUT": "60"})
t0 = time.perf_counter()
import mlflow.entities, mlflow.tracking
t1 = time.perf_counter()
fxcu.log_run(config, record, environ={})
print(json.dumps({"import": t1 - t0, "log_run": time.perf_counter() - t1}))
"""


def _count_runs(data_dir: Path) -> int:
    db = data_dir / "mlflow" / "mlflow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("select count(*) from runs").fetchone()[0]


# -- Issue 6: run and check as the operator calls them --------------------------------------


@dataclasses.dataclass
class Timed:
    seconds: float
    peak_kib: int | None
    code: int
    stdout: str
    stderr: str


def timed(cmd: Sequence[str], *, env: dict[str, str], cwd: Path, ok: Callable[[int], bool] = lambda c: c == 0) -> Timed:
    """Run `cmd` once: wall seconds around the child, its peak RSS, exit code, output."""
    with tempfile.NamedTemporaryFile(prefix="fxcu-time-", suffix=".txt", delete=False) as handle:
        report = Path(handle.name)
    try:
        if GNU_TIME.exists():
            full = [str(GNU_TIME), "-v", "-o", str(report), *cmd]
        else:
            # A fresh small process (through /bin/sh: Linux carries ru_maxrss across fork+exec) runs
            # the command and writes its children's peak RSS (KiB) to the report file.
            waiter = (
                "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
                "open(sys.argv[1], 'w').write(f'Maximum resident set size (kbytes): {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n'); "
                "sys.exit(code)"
            )
            full = ["/bin/sh", "-c", 'exec "$@"', "sh", sys.executable, "-c", waiter, str(report), *cmd]
        t0 = time.perf_counter()
        proc = subprocess.run(full, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read_text() if report.exists() else "")
    finally:
        report.unlink(missing_ok=True)
    if not ok(proc.returncode):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return Timed(seconds, int(found.group(1)) if found else None, proc.returncode, proc.stdout, proc.stderr)


def interleave(commands: dict[str, Callable[[], Timed]], rounds: int, *, warmup: bool = True) -> dict[str, list[Timed]]:
    """Run each command once per round, alternating the order every round; an optional uncounted first round."""
    names = list(commands)
    if warmup:
        for name in names:
            commands[name]()
    results: dict[str, list[Timed]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(commands[name]())
    return results


def stat_row(label: str, runs: Sequence[Timed], reference: Sequence[Timed] | None) -> str:
    secs = [r.seconds for r in runs]
    peaks = [r.peak_kib for r in runs if r.peak_kib is not None]
    peak = f"{median(peaks) / 1024:.0f}" if peaks else "n/a"
    ratio = f"{median(secs) / median([r.seconds for r in reference]):.2f}" if reference else "1.00"
    return f"| {label} | {len(secs)} | {median(secs):.2f} | {min(secs):.2f} | {max(secs):.2f} | {peak} | {ratio} |"


def table_head(ref: str) -> None:
    print(f"| command | n | median s | min s | max s | peak RSS MiB (median) | ratio to {ref} |")
    print("|---|---:|---:|---:|---:|---:|---:|")


def run_ids(stdout: str) -> list[str]:
    return re.findall(r"tracked: yes, run ([0-9a-f]{32})", stdout)


def stage_seconds(data_dir: Path, ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """The seconds_* metrics each run logged (fxcu times its stages and logs them), by run id."""
    db = data_dir / "mlflow" / "mlflow.db"
    found: dict[str, dict[str, float]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for run_id in ids:
            rows = conn.execute(
                "select key, value from latest_metrics where run_uuid = ? and key like 'seconds_%'", (run_id,)
            ).fetchall()
            found[run_id] = {k.removeprefix("seconds_"): v for k, v in rows}
    return found


def import_times(env: dict[str, str], cwd: Path) -> dict[str, float]:
    """`python -X importtime`: cumulative seconds of each top-level import a `run` makes, in the order it makes them."""
    modules = [
        "fxcu",
        "httpx",
        "polars",
        "statsforecast",
        "statsforecast.models",
        "matplotlib.pyplot",
        "mlflow",
        "mlflow.store.tracking.sqlalchemy_store",
    ]
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); " + "; ".join(f"import {m}" for m in modules)
    samples: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(IMPORTTIME_REPEATS):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\S.*)$", line)  # top level: no indent before the name
            if m and m.group(3).strip() in samples:
                samples[m.group(3).strip()].append(int(m.group(2)) / 1e6)
    return {m: median(v) for m, v in samples.items() if v}


def bench_ops() -> dict[str, Any]:
    header("Operations: run and check (issue 6)", "python docs/bench_ops.py ops")
    return in_temp_dir("fxcu-bench-ops-", _bench_ops)


def _bench_ops(root: Path) -> dict[str, Any]:
    data, elsewhere = root / "data", root / "elsewhere"
    elsewhere.mkdir(parents=True)
    write_real_warehouse(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FXCU_", "MLFLOW_"))}
    env |= {"FXCU_DATA_DIR": str(data), "FXCU_TRACKING_TIMEOUT": "60"}
    fx = str(ROOT / "fxcu.py")
    py = sys.executable

    init = timed([py, fx, "init"], env=env, cwd=elsewhere)
    print(
        f"Setup: warm warehouse (real data) in a temp data dir; `fxcu.py init` (schema migration, 4 experiments) took {init.seconds:.1f} s "
        f"(peak RSS {init.peak_kib / 1024 if init.peak_kib else float('nan'):.0f} MiB). Every command runs from another directory "
        f"with FXCU_DATA_DIR, FXCU_TRACKING_TIMEOUT=60; interpreter {py}; peak memory from "
        f"{'`/usr/bin/time -v`' if GNU_TIME.exists() else 'a /bin/sh-wrapped child reading ru_maxrss'}.\n"
    )

    run7 = lambda: timed([py, fx, "run", "7d", "--offline", "--skip-email"], env=env, cwd=elsewhere)  # noqa: E731
    runall = lambda: timed([py, fx, "run", "all", "--offline", "--skip-email"], env=env, cwd=elsewhere)  # noqa: E731
    floor = lambda: timed([py, "-c", "import polars, statsforecast, mlflow"], env=env, cwd=elsewhere)  # noqa: E731
    run_imports = lambda: timed([py, "-c", RUN_IMPORTS], env=env, cwd=elsewhere)  # noqa: E731
    full_imports = lambda: timed([py, "-c", FULL_IMPORTS], env=env, cwd=elsewhere)  # noqa: E731
    check = lambda: timed([py, fx, "check"], env=env, cwd=elsewhere, ok=lambda c: c in (0, 1, 2, 3))  # noqa: E731
    mlflow_import = lambda: timed([py, "-c", "import mlflow"], env=env, cwd=elsewhere)  # noqa: E731

    # (a) run 7d next to its import floor
    a = interleave({"floor": floor, "imports": run_imports, "full": full_imports, "run7": run7}, RUN_REPEATS)
    ratio_a = median([r.seconds for r in a["run7"]]) / median([r.seconds for r in a["floor"]])
    print(
        f"**(a) `run 7d` from a warm warehouse next to its import floor**: {RUN_REPEATS} rounds, interleaved, after 1 uncounted round.\n"
    )
    table_head("the floor")
    print(stat_row('`python -c "import polars, statsforecast, mlflow"` (floor)', a["floor"], None))
    print(
        stat_row(
            f'`python -c "{RUN_IMPORTS}"` (`run`\'s imports without the SQLite store, no work)',
            a["imports"],
            a["floor"],
        )
    )
    print(
        stat_row(
            f'`python -c "{FULL_IMPORTS}"` (every import `run` makes, SQLAlchemy store included, no work: the achievable floor)',
            a["full"],
            a["floor"],
        )
    )
    print(stat_row("`python fxcu.py run 7d --offline --skip-email`", a["run7"], a["floor"]))
    ratio_full = median([r.seconds for r in a["run7"]]) / median([r.seconds for r in a["full"]])
    print(f"| `run 7d` ÷ every-import floor (the row above over the achievable floor) | | | | | | {ratio_full:.2f} |")
    print(f"\n- Target `run 7d` ≤ 2.0× the floor: {verdict(ratio_a, TARGET_RUN_FLOOR)}.")
    ratio_imports = median([r.seconds for r in a["imports"]]) / median([r.seconds for r in a["floor"]])
    print(
        f"- The imports alone (httpx, statsforecast.models with statsmodels and scipy, matplotlib.pyplot on top of the floor) are "
        f"{ratio_imports:.2f}× the floor: they leave {max(0.0, (TARGET_RUN_FLOOR - ratio_imports) * median([r.seconds for r in a['floor']])):.2f} s "
        "for backtest, forecast, report and tracking within the 2.0× target."
    )
    ratio_full_floor = median([r.seconds for r in a["full"]]) / median([r.seconds for r in a["floor"]])
    print(
        f"- Every import `run` makes, the SQLAlchemy store included, is {ratio_full_floor:.2f}× the floor; `run 7d` is {ratio_full:.2f}× that "
        f"({median([r.seconds for r in a['run7']]) - median([r.seconds for r in a['full']]):.2f} s of work on top of the imports)."
    )
    untracked = [r for r in a["run7"] if not run_ids(r.stdout)]
    if untracked:
        print(f"- WARNING: {len(untracked)} runs were not tracked.")

    # (b) run all next to run 7d
    b = interleave({"run7": run7, "runall": runall}, ALL_REPEATS, warmup=False)
    ratio_b = median([r.seconds for r in b["runall"]]) / median([r.seconds for r in b["run7"]])
    print(
        f"\n**(b) `run all` next to `run 7d`**: {ALL_REPEATS} rounds, interleaved (the warehouse and the database were warm from (a)).\n"
    )
    table_head("`run 7d`")
    print(stat_row("`python fxcu.py run 7d --offline --skip-email`", b["run7"], None))
    print(stat_row("`python fxcu.py run all --offline --skip-email`", b["runall"], b["run7"]))
    print(f"\n- Target `run all` ≤ 1.6× `run 7d`: {verdict(ratio_b, TARGET_ALL_7D)}.")

    # Where the time goes: the stage seconds every run logs to MLflow, and the import costs.
    seven = [stage_seconds(data, run_ids(r.stdout)) for r in a["run7"] + b["run7"]]
    seven_rows = [next(iter(s.values())) for s in seven if s]
    walls7 = [r.seconds for r in a["run7"] + b["run7"]]
    alls = [stage_seconds(data, run_ids(r.stdout)) for r in b["runall"]]
    print(
        f"\n**Where the time goes**: the `seconds_*` metrics each run logs to MLflow (medians; `run 7d` over its {len(seven_rows)} runs in (a) and (b), "
        f"`run all` per horizon over {len(alls)} runs). `backtest` includes importing statsforecast.models (statsmodels, scipy); `report` includes importing matplotlib; `tracking` includes importing mlflow. "
        "In `run all`, fetch, features, backtest (`backtest_all`) and forecast (`forecast_all`) run once for the four horizons and every horizon's run logs the same values.\n"
    )
    stages = ["fetch", "features", "backtest", "forecast", "report", "tracking"]
    print(
        "| run | "
        + " | ".join(stages)
        + " | sum of stages | wall (median) | rest: interpreter, imports of httpx, polars, statsforecast core; locks, status file |"
    )
    print("|---|" + "---:|" * (len(stages) + 3))
    if seven_rows:
        med = {s: median([r.get(s, 0.0) for r in seven_rows]) for s in stages}
        total = sum(med.values())
        print(
            "| `run 7d` | "
            + " | ".join(f"{med[s]:.2f}" for s in stages)
            + f" | {total:.2f} | {median(walls7):.2f} | {median(walls7) - total:.2f} |"
        )
    for horizon in fxcu.HORIZONS:
        # each `run all` prints (and logs) its four runs in horizon order
        rows = [list(s.values())[list(fxcu.HORIZONS).index(horizon)] for s in alls if len(s) == len(fxcu.HORIZONS)]
        if rows:
            med = {st: median([r.get(st, 0.0) for r in rows]) for st in stages}
            shared = {"fetch", "features", "backtest", "forecast"}
            cells = [f"({med[s]:.2f})" if s in shared and horizon != "7d" else f"{med[s]:.2f}" for s in stages]
            own = sum(v for k, v in med.items() if k not in shared or horizon == "7d")
            print(f"| `run all`: {horizon} | " + " | ".join(cells) + f" | {own:.2f} | | |")
    if alls and all(len(s) == len(fxcu.HORIZONS) for s in alls):
        walls = [r.seconds for r in b["runall"]]
        sums = []
        for s in alls:
            values = list(s.values())
            once = {"fetch", "features", "backtest", "forecast"}
            sums.append(
                sum(v.get(st, 0.0) for v in values for st in stages if st not in once)
                + sum(values[0].get(st, 0.0) for st in once)
            )
        print(
            f"| `run all`: total | | | | | | | {median(sums):.2f} | {median(walls):.2f} | {median(walls) - median(sums):.2f} |"
        )
    print(
        "\n(fetch, features, backtest and forecast are shared by the four horizons of `run all`: shown in parentheses after the first, counted once in the total.)"
    )

    imports = import_times(env, elsewhere)
    print(
        f"\n**Imports** (`python -X importtime`, cumulative, median of {IMPORTTIME_REPEATS}; in the order `run` imports them, so shared "
        "dependencies such as numpy and pandas count for the first importer):\n"
    )
    print("| module | seconds |")
    print("|---|---:|")
    for module, seconds in imports.items():
        print(f"| {module} | {seconds:.2f} |")
    print(f"| total | {sum(imports.values()):.2f} |")

    # (c) check next to import mlflow
    c = interleave({"mlflow": mlflow_import, "check": check}, CHECK_REPEATS)
    ratio_c = median([r.seconds for r in c["check"]]) / median([r.seconds for r in c["mlflow"]])
    codes = sorted({r.code for r in c["check"]})
    print(
        f"\n**(c) `check` next to `import mlflow`**: {CHECK_REPEATS} rounds, interleaved, after 1 uncounted round, on the same data dir after the runs "
        f"(exit code {', '.join(map(str, codes))}: {c['check'][-1].stdout.strip().splitlines()[0]}).\n"
    )
    table_head("`import mlflow`")
    print(stat_row('`python -c "import mlflow"`', c["mlflow"], None))
    print(stat_row("`python fxcu.py check`", c["check"], c["mlflow"]))
    print(f"\n- Target `check` ≤ 0.33× `import mlflow`: {verdict(ratio_c, TARGET_CHECK_MLFLOW)}.")
    return {
        "init_s": init.seconds,
        "a": {k: [(r.seconds, r.peak_kib) for r in v] for k, v in a.items()},
        "ratio_a": ratio_a,
        "ratio_imports": ratio_imports,
        "ratio_run7_full_imports": ratio_full,
        "b": {k: [(r.seconds, r.peak_kib) for r in v] for k, v in b.items()},
        "ratio_b": ratio_b,
        "c": {k: [(r.seconds, r.peak_kib) for r in v] for k, v in c.items()},
        "ratio_c": ratio_c,
        "stages_7d": seven_rows,
        "stages_all": [list(s.values()) for s in alls],
        "imports": imports,
    }


# -- Profile ----------------------------------------------------------------------------------


def bench_profile() -> None:
    """cProfile of one `run 7d --offline --skip-email` (in a child: a fresh interpreter, as the operator runs it)."""
    header("Profile of `run 7d`", "python docs/bench_ops.py profile")
    root = Path(tempfile.mkdtemp(prefix="fxcu-bench-profile-"))
    try:
        data = root / "data"
        write_real_warehouse(data)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FXCU_", "MLFLOW_"))}
        env |= {"FXCU_DATA_DIR": str(data), "FXCU_TRACKING_TIMEOUT": "60"}
        subprocess.run(
            [sys.executable, str(ROOT / "fxcu.py"), "init"], env=env, cwd=root, check=True, capture_output=True
        )
        out = root / "run.prof"
        # fxcu imported as a module, not run as `-m cProfile fxcu.py`
        main = "fxcu.main(['run', '7d', '--offline', '--skip-email'])"
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import cProfile, sys; sys.path.insert(0, {str(ROOT)!r}); import fxcu; cProfile.run({main!r}, {str(out)!r})",
            ],
            env=env,
            cwd=root,
            check=True,
            capture_output=True,
        )
        import pstats

        stats = pstats.Stats(str(out))
        total = stats.total_tt  # type: ignore[attr-defined]
        print(
            f"Total {total:.1f} s under cProfile (profiling slows Python-heavy code). Cumulative time of selected functions:\n"
        )
        wanted = [
            ("fxcu.py", "backtest_all"),
            ("fxcu.py", "cross_validate"),
            ("fxcu.py", "forecast_all"),
            ("fxcu.py", "write_report"),
            ("fxcu.py", "write_chart"),
            ("fxcu.py", "log_run"),
            ("fxcu.py", "make_forecasts"),
            ("fxcu.py", "fetch_both"),
            ("fxcu.py", "make_client"),
            ("fxcu.py", "write_inputs"),
            ("fxcu.py", "run_record"),
        ]
        print("| function | calls | cumulative s | share |")
        print("|---|---:|---:|---:|")
        entries = stats.stats  # type: ignore[attr-defined]
        for (file, _line, name), (_cc, nc, _tt, ct, _callers) in sorted(entries.items(), key=lambda kv: -kv[1][3]):
            if any(file.endswith(f) and name == n for f, n in wanted):
                print(f"| fxcu.{name} | {nc} | {ct:.2f} | {ct / total:.0%} |")
        print("\nstatsforecast model fits (cumulative):\n")
        print("| function | calls | cumulative s |")
        print("|---|---:|---:|")
        shown = 0
        for (file, _line, name), (_cc, nc, _tt, ct, _callers) in sorted(entries.items(), key=lambda kv: -kv[1][3]):
            if "statsforecast" in file and name in {
                "auto_arima_f",
                "auto_ets",
                "auto_theta",
                "forecast_ets",
                "_fit",
                "fit",
                "forward",
                "forecast",
                "cross_validation",
                "_cross_validation",
            }:
                print(f"| {Path(file).name}:{name} | {nc} | {ct:.2f} |")
                shown += 1
                if shown >= 14:
                    break
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    what = argv[0] if argv else "all"
    if what not in {"tracking", "ops", "all", "profile"}:
        print(__doc__)
        return 2
    results: dict[str, Any] = {}
    if what in {"tracking", "all"}:
        results["tracking"] = bench_tracking()
    if what in {"ops", "all"}:
        results["ops"] = bench_ops()
    if what == "profile":
        bench_profile()
    if results:
        print("\n<details><summary>raw numbers (JSON)</summary>\n")
        print("```json")
        print(json.dumps(results, default=str))
        print("```\n</details>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
