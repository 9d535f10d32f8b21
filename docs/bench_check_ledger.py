#!/usr/bin/env python3
"""`fxcu check` with and without a forecast ledger, next to `import mlflow` (issue 13); prints Markdown.

Usage (from anywhere):
    python docs/bench_check_ledger.py                       # this checkout's fxcu.py
    FXCU_BENCH_BEFORE=/tmp/fxcu_before.py python docs/bench_check_ledger.py   # and an older fxcu.py beside it
    (e.g. `git show cc534ea:fxcu.py > /tmp/fxcu_before.py`: check with scipy.stats)

Two data dirs are built in a temporary folder with public fxcu functions only: each warehouse holds the
shipped seed (`read_seed`: the real CLP=X and HG=F histories in data/seed, to 2024-07-15), and one of them
gets the ten-year ledger of docs/bench_track.py: one live row per trading day and horizon over the last
ten years of closes (point = last close, ranges of a 0.6%-a-day random walk), stored unscored as a run
would leave it. Every command is a fresh subprocess run from another directory; the commands alternate
(order reversed every round), 9 rounds after 1 uncounted; medians. Two import floors show what
`scipy.special` alone would add. FXCU_BENCH_QUICK=1 runs 2 rounds (a smoke test; its numbers mean nothing).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fxcu  # noqa: E402  (after the sys.path change)

ROUNDS = 2 if os.environ.get("FXCU_BENCH_QUICK", "") not in {"", "0"} else 9
TARGET = 0.33  # issue 6: check <= 0.33x `import mlflow`


def ten_year_ledger(prices):
    """One live row per trading day and horizon over the last ten years of `prices` (unscored, as stored)."""
    import polars as pl

    days = prices.sort(fxcu.DATE).filter(pl.col(fxcu.DATE) >= pl.col(fxcu.DATE).max() - pl.duration(days=3653))
    rows = []
    for origin, close in days.select(fxcu.DATE, fxcu.CLOSE).iter_rows():
        for horizon, n in fxcu.HORIZONS.items():
            sd = 0.006 * math.sqrt(fxcu.horizon_steps(n))
            row = {"horizon": horizon, "origin": origin, "target": fxcu.trading_dates(origin, n)[-1], "kind": "live"}
            row |= {"last_close": close, "forecast": close, "point_model": "Naive", "interval_model": "Naive"}
            for prefix in ("", "rw_"):
                for level, z in ((80, 1.2816), (95, 1.96)):
                    row[f"{prefix}lo_{level}"] = close * math.exp(-z * sd)
                    row[f"{prefix}hi_{level}"] = close * math.exp(z * sd)
            row |= {"sources": "copper=yahoo,usdclp=yahoo", "degraded": "", "backtest_ratio": 1.0}
            row |= {"recorded_at": datetime(2024, 7, 16, tzinfo=UTC), "backtest_coverage_80": 0.8}
            rows.append(row | {"backtest_coverage_95": 0.95})
    return fxcu.upsert_ledger(fxcu.empty_ledger(), rows)


def make_data_dirs(root: Path) -> dict[str, dict[str, str]]:
    """Two data dirs filled from the seed, one with the ten-year ledger; their environments for `check`."""
    import polars as pl

    envs = {}
    for name in ("plain", "ledger"):
        for series, file in (("usdclp", fxcu.USDCLP_CACHE), ("copper", fxcu.COPPER_CACHE)):
            fxcu.write_parquet_atomic(fxcu.read_seed(fxcu.SEED_DIR, series).frame, root / name / "warehouse" / file)
        envs[name] = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        envs[name]["FXCU_DATA_DIR"] = str(root / name)
    ledger = ten_year_ledger(pl.read_parquet(root / "ledger" / "warehouse" / fxcu.USDCLP_CACHE))
    fxcu.write_ledger(ledger, root / "ledger" / "warehouse" / fxcu.LEDGER)
    print(f"Ledger: {ledger.height} rows; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    return envs


def wall(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), check=False, capture_output=True)  # check exits 1-2
    return time.perf_counter() - started


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="fxcu-bench-check-"))
    try:
        envs = make_data_dirs(root)
        py, plain, ledger = sys.executable, envs["plain"], envs["ledger"]
        commands = {
            '`python -c "import mlflow"`': ([py, "-c", "import mlflow"], plain),
            '`python -c "import polars"` (floor)': ([py, "-c", "import polars"], plain),
            '`python -c "import polars, scipy.special"`': ([py, "-c", "import polars, scipy.special"], plain),
        }
        versions = {"after": ROOT / "fxcu.py"}
        if os.environ.get("FXCU_BENCH_BEFORE"):
            versions["before"] = Path(os.environ["FXCU_BENCH_BEFORE"])
        for label, path in versions.items():
            commands[f"`fxcu check`, no ledger ({label})"] = ([py, str(path), "-q", "check"], plain)
            commands[f"`fxcu check`, ten-year ledger ({label})"] = ([py, str(path), "-q", "check"], ledger)
        times: dict[str, list[float]] = {label: [] for label in commands}
        for r in range(ROUNDS + 1):
            order = list(commands) if r % 2 else list(reversed(commands))
            for label in order:
                elapsed = wall(*commands[label])
                if r:  # the first round warms the page cache, uncounted
                    times[label].append(elapsed)
        med = {label: statistics.median(values) for label, values in times.items()}
        mlflow = med['`python -c "import mlflow"`']
        print(f"{ROUNDS} rounds after 1 uncounted, load {os.getloadavg()[0]:.1f}\n")
        print("| command | median s | min-max s | ratio to `import mlflow` |")
        print("|---|---:|---|---:|")
        for label, values in times.items():
            print(f"| {label} | {med[label]:.3f} | {min(values):.3f}-{max(values):.3f} | {med[label] / mlflow:.2f} |")
        ratio = med["`fxcu check`, ten-year ledger (after)"] / mlflow
        print(f"\nTarget `check` with a ledger <= {TARGET}x `import mlflow`: {'met' if ratio <= TARGET else 'NOT met'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
