#!/usr/bin/env python3
"""Range (density) benchmarks for fxcu (issue 9) on the real CLP=X and HG=F histories; prints Markdown.

Usage (from the repository root):
    python docs/bench_density.py accuracy        # weekly density backtest 2014-01..2024-06, two periods
    python docs/bench_density.py speed           # density_backtest_all (4 horizons) vs backtest_all, in-process
    python docs/bench_density.py run BASE_DIR    # `run all --offline` here vs a checkout of the release at BASE_DIR
    python docs/bench_density.py all BASE_DIR    # all three

The accuracy section calls the code a run uses (`fxcu.density_frame`, `fxcu.choose_interval_model`,
`fxcu.score_density`) with every weekly origin from 2014-01 on, and GARCH_t as an extra candidate
(the run leaves it out for speed; it is scored, never served). The served column is chosen online
over all those origins with the run's candidate set; each period is then scored separately
(volatility terciles cut within the period). Timings are wall clock on a shared machine: compare
the ratios measured in the same run, not the seconds.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_ops import interleave, timed
from benchkit import real_copper, real_usdclp, write_real_warehouse

import fxcu

FIRST = date(2014, 1, 1)
PERIODS = {
    "2014-01..2019-09": (date(2014, 1, 1), date(2019, 9, 30)),
    "2019-10..2024-06": (date(2019, 10, 1), date(2024, 6, 30)),
}
CANDIDATES = (*fxcu.RUN_INTERVAL_MODELS, "GARCH_t")
SPEED_ROUNDS, RUN_ROUNDS = 3, 3
SPEED_TARGET = 0.2


def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.0%}"


def ratio(r: fxcu.Ratio) -> str:
    return f"{r.value:.3f} [{r.lo:.3f}, {r.hi:.3f}]"


RUN = "Run"  # what a run on each origin's day would have served, its Naive fallback included


def served_as_run(sub, steps: int):
    """At each origin, the range a run on that day serves: `choose_interval_model(...).live` over the last
    DENSITY_ORIGINS origins whose longest horizon was known by then (the run's own density backtest)."""
    import numpy as np

    longest = fxcu.horizon_steps(max(fxcu.HORIZONS.values()))
    ds = sub["ds"].to_numpy()
    sigma, served = [], []
    for i, origin in enumerate(ds):
        past = np.flatnonzero(ds + longest <= origin)[-fxcu.DENSITY_ORIGINS :]
        live = (
            fxcu.choose_interval_model(sub[past], list(fxcu.RUN_INTERVAL_MODELS), steps).live if len(past) else "Naive"
        )
        served.append(live)
        sigma.append(sub[live][i])
    return np.array(sigma), served


def section_accuracy() -> None:
    import polars as pl

    usdclp, copper = real_usdclp(), real_copper()
    started = time.perf_counter()
    frame = fxcu.density_frame(usdclp, copper, first=FIRST, models=CANDIDATES)
    seconds = time.perf_counter() - started
    print("### Weekly density backtest, 2014-01..2024-06 (`python docs/bench_density.py accuracy`)\n")
    print(
        f"Origins every {fxcu.DENSITY_EVERY} trading days from {frame['origin'].min()} to {frame['origin'].max()} "
        f"({frame.filter(pl.col('horizon') == '7d').height} per horizon), the same for every horizon; every model refitted "
        f"at every origin on the last {fxcu.HISTORY} trading days (built in {seconds:.0f} s, GARCH_t included). Ratios are "
        "mean score / Naive's mean score with 95% circular block bootstrap CIs; coverage is of the 80% (95%) interval. "
        "`Served` is the run's choice at each origin: from the run's candidates, on the outcomes known by then among "
        f"the last {fxcu.DENSITY_ORIGINS} origins (what a run on that day backtests). `Run` is what a run on that day "
        "would have served: its whole decision, repeated at each origin on the density backtest it would have run "
        f"(the last {fxcu.DENSITY_ORIGINS} origins whose 90d outcome was known), Naive fallback included.\n"
    )
    for horizon in fxcu.HORIZONS:
        sub = frame.filter(pl.col("horizon") == horizon).sort("ds")
        steps = int(sub["steps"][0])
        # a run on an origin's day backtests the DENSITY_ORIGINS weekly origins before it, so it chooses from those
        choice = fxcu.choose_interval_model(sub, list(fxcu.RUN_INTERVAL_MODELS), steps, window=fxcu.DENSITY_ORIGINS)
        run_sigma, run_served = served_as_run(sub, steps)
        sub = sub.with_columns(
            pl.Series(fxcu.SERVED, choice.served_sigma), pl.Series("pick", choice.picks), pl.Series(RUN, run_sigma)
        )
        picks = {m: choice.picks.count(m) for m in fxcu.RUN_INTERVAL_MODELS if choice.picks.count(m)}
        runs = {m: run_served.count(m) for m in fxcu.RUN_INTERVAL_MODELS if run_served.count(m)}
        print(
            f"#### {horizon} ({steps} trading days)\n\n`Served` picks over all origins: "
            + ", ".join(f"{m} {n}" for m, n in picks.items())
            + f"; live choice at the end: {choice.live}. `Run` served: "
            + ", ".join(f"{m} {n}" for m, n in runs.items())
            + ".\n"
        )
        for period, (a, b) in PERIODS.items():
            part = sub.filter(pl.col("origin").is_between(a, b))
            scores = fxcu.score_density(part, [*CANDIDATES, fxcu.SERVED, RUN], steps)
            print(f"{period}, {part.height} origins:\n")
            print(
                "| model | CRPS ratio [CI] | IS80 ratio [CI] | IS95 ratio [CI] | 80% cover [CI] | 95% cover | 80% calm | 80% middle | 80% turbulent | 80% / 95% in 2022 | 80% in 2019-10..2020-06 |"
            )
            print("|---|---|---|---|---|---:|---:|---:|---:|---|---:|")
            for name, s in scores.items():
                by = s.coverage_by
                print(
                    f"| {name} | {ratio(s.crps_ratio)} | {ratio(s.is80_ratio)} | {ratio(s.is95_ratio)} | {pct(s.coverage_80)} "
                    f"[{pct(s.coverage_80_ci[0])}, {pct(s.coverage_80_ci[1])}] | {pct(s.coverage_95)} | {pct(by['calm'][0])} | "
                    f"{pct(by['middle'][0])} | {pct(by['turbulent'][0])} | {pct(by['2022'][0])} / {pct(by['2022'][1])} | {pct(by['2019-10..2020-06'][0])} |"
                )
            ablation = fxcu.copper_variance_ablation(scores)
            print(f"\nCopper as a variance signal (Recal_copper vs Recal, CRPS): {ablation:+.2f}%.\n")


def section_speed() -> None:
    usdclp, copper = real_usdclp(), real_copper()
    horizons = list(fxcu.HORIZONS)
    fxcu.density_backtest_all(usdclp, copper, horizons)  # warm-up: imports, caches
    fxcu.backtest_all(usdclp, copper, horizons)
    point, density = [], []
    for i in range(SPEED_ROUNDS):
        for which in ("point", "density") if i % 2 == 0 else ("density", "point"):
            started = time.perf_counter()
            if which == "point":
                fxcu.backtest_all(usdclp, copper, horizons)
                point.append(time.perf_counter() - started)
            else:
                fxcu.density_backtest_all(usdclp, copper, horizons)
                density.append(time.perf_counter() - started)
    r = statistics.median(density) / statistics.median(point)
    print("### Speed: density backtest vs point backtest (`python docs/bench_density.py speed`)\n")
    print(
        f"In one process, after one warm-up each, {SPEED_ROUNDS} rounds interleaved (order alternating), four horizons:\n"
    )
    print("| call | median s | min–max s |\n|---|---:|---|")
    print(
        f"| `fxcu.backtest_all(usdclp, copper)` (60 origins, 5 statsforecast models + Naive_copper) | {statistics.median(point):.2f} | {min(point):.2f}–{max(point):.2f} |"
    )
    print(
        f"| `fxcu.density_backtest_all(usdclp, copper)` ({fxcu.DENSITY_ORIGINS} weekly origins, {len(fxcu.RUN_INTERVAL_MODELS)} interval models, CIs) | {statistics.median(density):.2f} | {min(density):.2f}–{max(density):.2f} |"
    )
    print(
        f"\nRatio density / point: **{r:.2f}** (target ≤ {SPEED_TARGET}: {'met' if r <= SPEED_TARGET else 'not met'}).\n"
    )


def section_run(base: Path) -> None:
    import shutil

    root = Path(tempfile.mkdtemp(prefix="fxcu-bench-density-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FXCU_", "MLFLOW_"))}
        commands = {}
        for name, checkout in (("release", base), ("this", ROOT)):
            data = root / name / "data"
            write_real_warehouse(data)
            run_env = env | {"FXCU_DATA_DIR": str(data), "FXCU_TRACKING_TIMEOUT": "60"}
            timed([sys.executable, str(checkout / "fxcu.py"), "init"], env=run_env, cwd=root)
            cmd = [sys.executable, str(checkout / "fxcu.py"), "run", "all", "--offline", "--skip-email"]
            commands[name] = lambda cmd=cmd, run_env=run_env: timed(cmd, env=run_env, cwd=root)
        results = interleave(commands, RUN_ROUNDS)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {name: statistics.median(t.seconds for t in runs) for name, runs in results.items()}
    print("### Speed: `run all --offline` against the release (`python docs/bench_density.py run /tmp/base`)\n")
    print(
        f"Release: a `git worktree` of 4f1cd23 at {base}; each command as a subprocess with its own warm warehouse and "
        f"migrated database, {RUN_ROUNDS} rounds interleaved after one uncounted round, same interpreter.\n"
    )
    print("| command | median s | min–max s |\n|---|---:|---|")
    for name, runs in results.items():
        secs = [t.seconds for t in runs]
        print(
            f"| {name}: `python fxcu.py run all --offline --skip-email` | {med[name]:.2f} | {min(secs):.2f}–{max(secs):.2f} |"
        )
    print(f"\nRatio this / release: **{med['this'] / med['release']:.2f}**.\n")


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else "all"
    if what in ("accuracy", "all"):
        section_accuracy()
    if what in ("speed", "all"):
        section_speed()
    if what in ("run", "all"):
        if len(argv) < 3:
            print("bench_density: `run` needs the release checkout's directory", file=sys.stderr)
            return 2
        section_run(Path(argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
