#!/usr/bin/env python3
"""Track-record benchmarks (issue 11) on the real CLP=X history in ../shared/data; prints Markdown.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/bench_track.py            # both parts
    python docs/bench_track.py commands   # part 2 only

1. The time a run spends on the ledger when it holds ten years of daily runs: a ledger of one row per
   trading day and horizon over 2014-07-15 .. 2024-07-15 (2,521 origins x 4 horizons), built from the
   real closes (point = last close, ranges from a 0.6%-a-day random walk). A run does what `cmd_run`
   does: `update_ledger` once (read, score, write), then per horizon the live numbers, the track chart
   and `update_ledger` again to add its row. Timed in
   the process, next to `python fxcu.py run 7d --offline --skip-email` as a subprocess on the same
   warehouse (the run's `seconds_score` is the same work, logged to MLflow).
2. `python fxcu.py track` (all horizons, the same ledger) next to `python -c "import mlflow"`, and
   `python fxcu.py check` (which now grades that ledger), as fresh subprocesses, interleaved, after one
   uncounted round.
FXCU_BENCH_QUICK=1 cuts the repeat counts to a smoke test (its numbers mean nothing).
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

from benchkit import write_real_warehouse  # noqa: E402

import fxcu  # noqa: E402  (after the sys.path change)

QUICK = os.environ.get("FXCU_BENCH_QUICK", "") not in {"", "0"}
LEDGER_REPEATS, RUN_REPEATS, TRACK_REPEATS = (2, 1, 2) if QUICK else (9, 3, 7)
TARGET_RUN_SHARE = 0.05


def ten_year_ledger(prices):
    """One live row per trading day and horizon for the last ten years of `prices` (unscored, as stored)."""
    import polars as pl

    days = prices.sort(fxcu.DATE).filter(pl.col(fxcu.DATE) >= pl.col(fxcu.DATE).max() - pl.duration(days=3653))
    frames = []
    for horizon, n in fxcu.HORIZONS.items():
        sd = 0.006 * math.sqrt(fxcu.horizon_steps(n))
        last = pl.col(fxcu.CLOSE)
        frames.append(days.select(
            pl.lit(horizon).alias("horizon"), pl.col(fxcu.DATE).alias("origin"),
            pl.col(fxcu.DATE).map_batches(lambda s, n=n: pl.Series([fxcu.trading_dates(d, n)[-1] for d in s])).alias("target"),
            pl.lit("live").alias("kind"), last.alias("last_close"), last.alias("forecast"),
            *((last * math.exp(sign * z * sd)).alias(f"{p}{side}_{lv}") for p in ("", "rw_")
              for lv, z in ((80, 1.2816), (95, 1.96)) for side, sign in (("lo", -1), ("hi", 1))),
            pl.lit("Naive").alias("point_model"), pl.lit("Naive").alias("interval_model"),
            pl.lit("copper=yahoo,usdclp=yahoo").alias("sources"), pl.lit("").alias("degraded"),
            pl.lit(datetime(2024, 7, 16, tzinfo=UTC)).alias("recorded_at"), pl.lit(1.0).alias("backtest_ratio"),
            pl.lit(0.8).alias("backtest_coverage_80"), pl.lit(0.95).alias("backtest_coverage_95"),
        ))  # fmt: skip
    rows = pl.concat(frames).to_dicts()
    return fxcu.upsert_ledger(fxcu.empty_ledger(), rows)


def wall(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        cmd, env=env, cwd=tempfile.gettempdir(), check=False, capture_output=True
    )  # check exits 1-2 on old data
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    import polars as pl

    root = Path(tempfile.mkdtemp(prefix="fxcu-bench-track-"))
    try:
        data = root / "data"
        write_real_warehouse(data)
        prices = pl.read_parquet(data / "warehouse" / fxcu.USDCLP_CACHE)
        ledger = ten_year_ledger(prices)
        path = data / "warehouse" / fxcu.LEDGER
        fxcu.write_ledger(ledger, path)
        env = {**os.environ, "FXCU_DATA_DIR": str(data), "FXCU_TRACKING_TIMEOUT": "60"}
        env.pop("MLFLOW_TRACKING_URI", None)
        print(f"Ledger: {ledger.height} rows ({ledger.height // 4} origins x 4 horizons), "
              f"{path.stat().st_size / 1e6:.2f} MB on disk; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")  # fmt: skip
        if argv[:1] != ["commands"]:
            in_run(root, env, ledger, prices)
        commands(env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def in_run(root: Path, env: dict[str, str], ledger, prices) -> None:
    """Part 1: the track-record work a run adds, next to a whole `run 7d`."""
    import polars as pl

    config = fxcu.Config.from_env(env)
    entry = ledger.filter(pl.col("horizon") == "7d").tail(1).to_dicts()[0]

    def run_work(horizons: int) -> float:
        # what cmd_run and _track_horizon add: score once, then per horizon the numbers, the chart and the row
        started = time.perf_counter()
        scored = fxcu.update_ledger(config, prices)
        for horizon in list(fxcu.HORIZONS)[:horizons]:
            fxcu.live_metrics(fxcu.track_record(scored, [horizon])[horizon])
            fxcu.write_track_chart(scored, prices, horizon, root / f"track_{horizon}.png")
            fxcu.update_ledger(config, prices, [entry])
        return time.perf_counter() - started

    run_work(1)  # warm-up (imports, page cache)
    one = [run_work(1) for _ in range(LEDGER_REPEATS)]
    four = [run_work(4) for _ in range(LEDGER_REPEATS)]
    score_only = []
    for _ in range(LEDGER_REPEATS):
        started = time.perf_counter()
        fxcu.score_ledger(ledger, prices)
        score_only.append(time.perf_counter() - started)
    run_cmd = [sys.executable, str(ROOT / "fxcu.py"), "-q", "run", "7d", "--offline", "--skip-email"]
    wall(run_cmd, env)
    runs = [wall(run_cmd, env) for _ in range(RUN_REPEATS)]
    med, r = statistics.median, statistics.median(runs)
    print("| what | n | median s | min-max s | share of `run 7d` |")
    print("|---|---|---|---|---|")
    for label, times in (
        ("`score_ledger` alone (10-year ledger, in memory)", score_only),
        ("track-record work of a `run 7d`: score, live numbers, chart, add its row", one),
        ("track-record work of a `run all` (4 horizons)", four),
        ("`python fxcu.py run 7d --offline --skip-email` (subprocess)", runs),
    ):
        print(
            f"| {label} | {len(times)} | {med(times):.3f} | {min(times):.3f}-{max(times):.3f} | {med(times) / r:.3f} |"
        )
    print(f"\nTarget: ledger work <= {TARGET_RUN_SHARE}x the run: {'met' if med(one) / r <= TARGET_RUN_SHARE else 'NOT met'} "
          f"({med(one) / r:.3f}x for 7d).\n")  # fmt: skip


def commands(env: dict[str, str]) -> None:
    """Part 2: `track` and `check` next to `import mlflow`, as fresh interleaved subprocesses."""
    track_cmd = [sys.executable, str(ROOT / "fxcu.py"), "-q", "track"]
    mlflow_cmd = [sys.executable, "-c", "import mlflow"]
    check_cmd = [sys.executable, str(ROOT / "fxcu.py"), "-q", "check"]
    wall(track_cmd, env), wall(mlflow_cmd, env), wall(check_cmd, env)
    tracks, mlflows, checks = [], [], []
    for _ in range(TRACK_REPEATS):
        tracks.append(wall(track_cmd, env))
        mlflows.append(wall(mlflow_cmd, env))
        checks.append(wall(check_cmd, env))
    med = statistics.median
    print(f"load {os.getloadavg()[0]:.1f}\n")
    print("| command | n | median s | min-max s | ratio to `import mlflow` |")
    print("|---|---|---|---|---|")
    rows = (("`python fxcu.py track` (10-year ledger)", tracks), ('`python -c "import mlflow"`', mlflows),
            ("`python fxcu.py check` (grades the same ledger)", checks))  # fmt: skip
    for label, times in rows:
        print(
            f"| {label} | {len(times)} | {med(times):.3f} | {min(times):.3f}-{max(times):.3f} | {med(times) / med(mlflows):.2f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
