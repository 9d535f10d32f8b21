#!/usr/bin/env python3
"""fxcu's benchmarks, one subcommand per area; each prints Markdown tables to paste into docs/BENCHMARKS.md.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/bench.py forecast [--quick]   # point accuracy: RMSE ratios to Naive with CIs, copper's ablation
    python docs/bench.py density [--quick]    # range accuracy: CRPS, WIS, interval scores and coverage vs Naive's range
    python docs/bench.py calibration [--quick]  # the served odds: PIT, 98% coverage, Brier skill; `fxcu odds` speed
    python docs/bench.py data                 # the real histories: jump limits, copper-USD/CLP correlation
    python docs/bench.py guards [--rounds N]  # issue 21's guards: run, check and --help against their import floors
    python docs/bench.py faults [--quick]     # hostile HTTP answers on both transports: peak RSS and wall time
    python docs/bench.py team [--quick]       # a tracking server on PostgreSQL: run time, four at once, 1,000 runs
    python docs/bench.py SUBCOMMAND --help    # what it measures, its options

The inputs are the test suite's: the real CLP=X and HG=F histories in data/real (with their provenance),
the real warehouse, the local fake sources, the self-signed certificate and the gzip bomb are fxcu_test's
builders, imported from the repository root, so a benchmark and a test see the same numbers. Timings are wall
clock on whatever machine runs this: compare the ratios measured in one run, not the seconds across runs.
`--quick` is a smoke test (fewer origins, rounds or resamples): its numbers are not for the page.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import inspect
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import polars as pl

import fxcu
import fxcu_test as t  # the test suite's builders: real histories, warehouse, fake sources, TLS pair, gzip bomb

PY, FXCU = sys.executable, str(ROOT / "fxcu.py")
PIPES = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}


# -- Shared: Markdown, machine, timing ---------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; `align` has one letter per column, l or r (default: first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]) + "\n"


def pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.0%}"


def signed(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}%"


def with_ci(value: float, lo: float, hi: float) -> str:
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def machine(command: str) -> str:
    """One line: when, which commit, the machine and the versions that move the figures."""
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("polars", "statsforecast", "mlflow", "arch", "scoringrules", "curl_cffi", "httpx")
    )
    return (
        f"_`python docs/bench.py {command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit "
        f"{commit.stdout.strip() or '?'}; nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; "
        f"Python {platform.python_version()}, {versions}_\n"
    )


def spread(values: Sequence[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def interleaved(
    commands: dict[str, tuple[list[str], dict[str, str]]], rounds: int, cwd: Path, must_pass: Sequence[str] = ()
) -> dict[str, list[float]]:
    """Wall seconds of each command (a fresh subprocess) per round, after one uncounted round.

    The order rotates every round, so a slow moment of the machine is shared out. Commands named in
    `must_pass` must exit 0 (`check` exits 1 or 2 on the seed's old data, which is what it should say).
    """
    names, times = list(commands), {name: [] for name in commands}
    for index in range(rounds + 1):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            cmd, env = commands[name]
            started = time.perf_counter()
            done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
            seconds = time.perf_counter() - started
            if name in must_pass and done.returncode:
                raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
            if index:
                times[name].append(seconds)
    return times


# -- forecast: point accuracy --------------------------------------------------------------------


def rmse_ratio_cis(bt: fxcu.Backtest, names: Sequence[str], reps: int) -> dict[str, tuple[float, float, float]]:
    """Each model's RMSE over Naive's on the backtest's origins, with a 95% circular block bootstrap interval.

    arch's CircularBlockBootstrap resamples the origins in blocks spanning the ones whose outcomes
    overlap (steps / STEP trading days between origins), plus one; a resample's ratio is the square
    root of the models' mean squared errors (CLP) over Naive's, for every model on the same draw.
    """
    from arch.bootstrap import CircularBlockBootstrap

    pred = bt.predictions.sort("cutoff")
    actual = np.exp(pred["y"].to_numpy())
    sq = np.column_stack([(np.exp(pred[name].to_numpy()) - actual) ** 2 for name in ["Naive", *names]])
    ratio = lambda x: np.sqrt(x.mean(axis=0) / x[:, 0].mean())  # noqa: E731
    block = math.ceil(bt.steps / fxcu.STEP) + 1
    lo, hi = CircularBlockBootstrap(block, sq, seed=0).conf_int(ratio, reps=reps, method="percentile")
    value = ratio(sq)
    return {name: (value[j], lo[j], hi[j]) for j, name in enumerate(["Naive", *names])}


def cmd_forecast(args: argparse.Namespace) -> None:
    """Point accuracy: `fxcu.backtest_all` on the real histories, every model's RMSE ratio to Naive with a 95% CI.

    The run's own backtest (the shared rolling origins, errors at the horizon date in CLP) with
    copper and again without it (`copper=None`): RMSE ratios to Naive with 95% circular block
    bootstrap CIs (arch), the served ensemble and the honest online Combination, coverage of the
    80% and 95% intervals, and copper's ablation (ensemble with vs without Naive_copper) and
    Naive_copper vs Naive (`copper_model_pct`). `--quick`: 20 origins, 7d only, 100 resamples.
    """
    usdclp, copper = t.real_usdclp(), t.real_copper()
    horizons = ("7d",) if args.quick else tuple(fxcu.HORIZONS)
    windows, reps = (20, 100) if args.quick else (fxcu.WINDOWS, 500)
    started = time.perf_counter()
    bts = fxcu.backtest_all(usdclp, copper, horizons, windows)
    seconds = time.perf_counter() - started
    bts0 = fxcu.backtest_all(usdclp, None, horizons, windows)
    first = bts[horizons[0]]
    print("### Point accuracy: `fxcu.backtest_all` on the real CLP=X and HG=F histories\n")
    print(
        f"CLP=X {usdclp[fxcu.DATE].min()} .. {usdclp[fxcu.DATE].max()} ({usdclp.height} rows after cleaning), HG=F "
        f"{copper[fxcu.DATE].min()} .. {copper[fxcu.DATE].max()}. {len(first.origins)} origins {fxcu.STEP} trading "
        f"days apart, {first.origins[0]} .. {first.origins[-1]}, the same at every horizon; the last {fxcu.HISTORY} "
        f"rows modelled; errors at the horizon date in CLP per USD; backtest with copper {seconds:.1f} s. Ratio = "
        f"RMSE / Naive's RMSE on the same origins, [95% circular block bootstrap CI, {reps} resamples, blocks of "
        f"⌈steps/{fxcu.STEP}⌉ + 1 origins]. `Combination` is the combination chosen per origin from outcomes "
        "known by then; `Ensemble` is what fxcu serves (the Combination if it beat Naive, else Naive).\n"
    )
    names = [*fxcu.MODELS[1:], fxcu.COPPER_MODEL, fxcu.COMBINATION, fxcu.ENSEMBLE]
    cis = {h: rmse_ratio_cis(bts[h], [n for n in names if n in bts[h].models], reps) for h in horizons}
    rows = [["Naive RMSE (CLP)", *(f"{bts[h].models['Naive'].rmse:.2f}" for h in horizons)]]
    rows += [[name, *(with_ci(*cis[h][name]) if name in cis[h] else "—" for h in horizons)] for name in names]
    print(table(["RMSE ratio to Naive [CI]", *horizons], rows))
    cells = lambda s: "—" if s is None else f"{pct(s.coverage_80)} / {pct(s.coverage_95)}"  # noqa: E731
    cover = [[name, *(cells(bts[h].models.get(name)) for h in horizons)] for name in ["Naive", *names]]
    print(table(["80% / 95% coverage", *horizons], cover))
    rows = []
    for h in horizons:
        bt, bt0 = bts[h], bts0[h]
        rows.append(
            [h, bt.steps, bt.rule, signed(bt.copper_ablation_pct), signed(bt.copper_model_pct)]
            + [f"{bt0.ensemble.ratio:.4f}", "; ".join(bt.notes) or "—"]
        )
    header = ["horizon", "steps", "live rule", "copper ablation (ensemble)", "Naive_copper vs Naive"]
    print(table([*header, "ensemble ratio without copper", "notes"], rows, "lrlrrrl"))
    print("Copper ablation and `Naive_copper vs Naive`: RMSE change in percent, negative when copper helped.\n")


# -- density: range accuracy ---------------------------------------------------------------------

GARCH = "GARCH_t"  # arch's GARCH(1,1) with Student-t errors: a candidate the bench scores and a run never serves
RUN = "Run"  # what a run on each origin's day would have served, its Naive fallback included
PERIODS = {
    "2014-01..2019-09": (date(2014, 1, 1), date(2019, 9, 30)),
    "2019-10..2024-06": (date(2019, 10, 1), date(2024, 6, 30)),
}


def garch_sigmas(logp: np.ndarray, rows: Sequence[int], longest: int) -> dict[int, np.ndarray]:
    """Per origin row, the sd of the k-day log return (k = 1..longest) from a GARCH(1,1)-t fitted up to that row.

    arch's `arch_model(..., vol="GARCH", dist="t")` with a zero mean on the last HISTORY daily log
    returns, as a run's interval models see them; the k-day variance is the sum of the daily
    variance forecasts. Returns are fitted in percent, the scale arch's optimiser is tuned for.
    """
    from arch import arch_model

    out = {}
    for i in rows:
        daily = np.diff(logp[max(0, i + 1 - fxcu.HISTORY) : i + 1]) * 100
        fit = arch_model(daily, mean="Zero", vol="GARCH", p=1, q=1, dist="t").fit(disp="off", show_warning=False)
        out[i] = np.sqrt(np.cumsum(fit.forecast(horizon=longest, reindex=False).variance.to_numpy()[-1]) / 1e4)
    return out


def served_as_run(sub: pl.DataFrame, steps: int) -> pl.DataFrame:
    """`sub` with `RUN` (the scale a run on each origin's day serves), its shape (FHS's, else null) and its name.

    `fxcu.choose_interval_model(...).live` over the last DENSITY_ORIGINS origins whose longest
    horizon was known by then: the run's own density backtest, choice and Naive fallback.
    """
    longest = fxcu.horizon_steps(max(fxcu.HORIZONS.values()))
    ds, models = sub["ds"].to_numpy(), [m for m in fxcu.RUN_INTERVAL_MODELS if m in sub.columns]
    shapes = fxcu.frame_shapes(sub, fxcu.FHS) or [None] * sub.height
    sigma, shape, served = [], [], []
    for i, origin in enumerate(ds):
        past = np.flatnonzero(ds + longest <= origin)[-fxcu.DENSITY_ORIGINS :]
        live = fxcu.choose_interval_model(sub[past], models, steps).live if len(past) else "Naive"
        served.append(live)
        sigma.append(sub[live][i])
        shape.append(shapes[i] if live == fxcu.FHS else None)
    return sub.with_columns(
        pl.Series(RUN, sigma),
        pl.Series(fxcu.shape_column(RUN), shape, pl.List(pl.Float64)),
        pl.Series("served", served),
    )


def cmd_density(args: argparse.Namespace) -> None:
    """Range accuracy: the weekly density backtest on every origin from 2014-01, each range scored against Naive's.

    `fxcu.density_frame` (every interval model refitted at every weekly origin, no look-ahead) over
    all weekly origins, plus GARCH(1,1)-t (arch) as an extra candidate, and `Run`: what a run on
    each origin's day would have served (its own 252-origin backtest and choice). Each period is
    scored by `fxcu.score_density`: CRPS, WIS and the 80%/95% interval scores as ratios to Naive's
    range (the random walk's), with 95% block bootstrap CIs, and coverage overall and by volatility
    tercile. `--quick`: origins from 2023-07 only, 100 resamples.
    """
    usdclp, copper = t.real_usdclp(), t.real_copper()
    periods = {"2023-07..2024-06": (date(2023, 7, 1), date(2024, 6, 30))} if args.quick else PERIODS
    first, reps = min(a for a, _ in periods.values()), 100 if args.quick else fxcu.BOOTSTRAP_REPS
    started = time.perf_counter()
    frame = fxcu.density_frame(usdclp, copper, origins=10**6)  # every weekly origin with 500 days before it
    logp = np.log(usdclp.sort(fxcu.DATE)[fxcu.CLOSE].to_numpy())
    rows = frame.filter(pl.col("origin") >= first)["ds"].unique().sort().to_list()
    longest = fxcu.horizon_steps(max(fxcu.HORIZONS.values()))
    garch = garch_sigmas(logp, rows, longest)
    seconds = time.perf_counter() - started
    candidates = [m for m in fxcu.RUN_INTERVAL_MODELS if m in frame.columns]
    print("### Range accuracy: the weekly density backtest, scored against Naive's range\n")
    print(
        f"Origins every {fxcu.DENSITY_EVERY} trading days, {len(rows)} from {first} on (each horizon's outcome known), "
        f"every model refitted at every origin on the last {fxcu.HISTORY} trading days (built in {seconds:.0f} s, "
        f"{GARCH} included). Scores on log prices; ratio = mean score / Naive's [95% circular block bootstrap CI, "
        f"{reps} resamples]; coverage of the 80% (95%) interval, by tercile of trailing 20-day volatility cut "
        f"within the period. {GARCH}: arch's GARCH(1,1) with Student-t errors (scored, never served). {RUN}: what a "
        f"run on that day would have served (its own last {fxcu.DENSITY_ORIGINS} origins, choice and Naive fallback).\n"
    )
    for horizon in fxcu.HORIZONS:
        sub = frame.filter(pl.col("horizon") == horizon).sort("ds")
        steps = int(sub["steps"][0])
        garch_col = [garch[i][steps - 1] if i in garch else math.nan for i in sub["ds"].to_list()]
        sub = served_as_run(sub, steps).with_columns(pl.Series(GARCH, garch_col))
        counts = sub.filter(pl.col("origin") >= first)["served"].value_counts(sort=True).iter_rows()
        print(f"#### {horizon} ({steps} trading days)\n\n`{RUN}` served: {', '.join(f'{m} {n}' for m, n in counts)}.\n")
        for period, (a, b) in periods.items():
            part = sub.filter(pl.col("origin").is_between(a, b))
            scores = fxcu.score_density(part, [*candidates, GARCH, RUN], steps, reps=reps)
            print(f"{period}, {part.height} origins:\n")
            header = ["model", "CRPS ratio [CI]", "WIS ratio [CI]", "IS80 ratio [CI]", "IS95 ratio [CI]"]
            header += ["80% cover [CI]", "95% cover", "80% calm", "80% middle", "80% turbulent"]
            body = [
                [name, *(with_ci(r.value, r.lo, r.hi) for r in (s.crps_ratio, s.wis_ratio, s.is80_ratio, s.is95_ratio))]
                + [f"{pct(s.coverage_80)} [{pct(s.coverage_80_ci[0])}, {pct(s.coverage_80_ci[1])}]"]
                + [pct(s.coverage_95), *(pct(s.coverage_by[g][0]) for g in fxcu.REGIMES)]
                for name, s in scores.items()
            ]
            print(table(header, body, "l" + "l" * 5 + "r" * 4))
            ablation = fxcu.copper_variance_ablation(scores)
            print(f"Copper as a variance signal (Recal_copper vs Recal, CRPS): {signed(ablation)}.\n")


# -- calibration: are the served odds right? -------------------------------------------------------


def pit_grid(panels: dict[tuple[str, str], fxcu.DensityScore], path: Path) -> None:
    """One PNG: the served range's PIT deciles per horizon (rows) and period (columns), against 10% each."""
    from matplotlib.figure import Figure

    horizons, periods = list(dict.fromkeys(h for h, _ in panels)), list(dict.fromkeys(p for _, p in panels))
    fig = Figure(figsize=(4.2 * len(periods), 2.4 * len(horizons)), dpi=100, layout="constrained")
    axes = fig.subplots(len(horizons), len(periods), sharex=True, sharey=True, squeeze=False)
    for (horizon, period), s in panels.items():
        ax = axes[horizons.index(horizon)][periods.index(period)]
        ax.bar(np.arange(10) / 10, s.pit_deciles, width=0.1, align="edge", color="tab:blue", alpha=0.7, ec="white")
        ax.axhline(0.1, color="black", ls="--", lw=1)
        ax.set_title(
            f"{horizon}, {period}: p = {s.pit_p:.3f}, 98% cover {s.coverage_98:.1%}, {s.origins} origins", fontsize=8
        )
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[-1]:
        ax.set_xlabel("PIT of the served range (dashed: calibrated)", fontsize=8)
    for row in axes:
        row[0].set_ylabel("share of origins", fontsize=8)
    fig.suptitle("USD/CLP: PIT deciles of the range a run would have served, weekly origins", fontsize=10)
    fig.savefig(path, format="png")


def cmd_calibration(args: argparse.Namespace) -> None:
    """Calibration of the served odds (issue 25): PIT deciles, uniformity, 98% coverage, Brier skill; odds' speed.

    The weekly density frame of `density` (every origin from 2014-01, every model refitted at each),
    `Run` the range a run on each origin's day would have served. Per horizon and period,
    `fxcu.score_density` gives each model's PIT deciles, the block-bootstrap uniformity p-value, the
    98% central coverage and the Brier skill of the events "above the last close x (1 + move)"
    against Naive's range (95% block-bootstrap CIs). Then FHS (the run's filtered-historical-simulation
    candidate) alone, and how often the run's rule served it. Writes docs/img/pit_histograms.png. Then
    `fxcu odds 30d 950 880` on a ten-year ledger (2,600 days x 4 horizons, rows without a stored scale)
    against `python -c "import mlflow"`, interleaved rounds, medians. `--quick`: 2023-07 on, 100 resamples, 1 round.
    """
    usdclp, copper = t.real_usdclp(), t.real_copper()
    periods = {"2023-07..2024-06": (date(2023, 7, 1), date(2024, 6, 30))} if args.quick else PERIODS
    reps = 100 if args.quick else fxcu.BOOTSTRAP_REPS
    frame = fxcu.density_frame(usdclp, copper, origins=10**6)
    candidates = [m for m in fxcu.RUN_INTERVAL_MODELS if m in frame.columns]
    print("### Calibration of the served odds\n")
    print(
        f"PIT = the served range's CDF at the outcome; deciles of `{RUN}` (the range a run would have served); "
        f"p = uniformity of the deciles against a circular block bootstrap over origins ({reps} resamples); "
        "98% = coverage of the central 98% interval; Brier skill = 1 - Brier / Naive's range's Brier for the event "
        "'ends above the last close x (1 + move)', [95% block-bootstrap CI].\n"
    )
    panels, rows, skills, fhs_rows = {}, [], [], []
    for horizon in fxcu.HORIZONS:
        sub = frame.filter(pl.col("horizon") == horizon).sort("ds")
        steps = int(sub["steps"][0])
        sub = served_as_run(sub, steps)
        for period, (a, b) in periods.items():
            part = sub.filter(pl.col("origin").is_between(a, b))
            scores = fxcu.score_density(part, [*candidates, RUN], steps, reps=reps)
            run, naive, fhs = scores[RUN], scores["Naive"], scores[fxcu.FHS]
            panels[(horizon, period)] = run
            fhs_rows.append(
                [horizon, period, f"{(part['served'] == fxcu.FHS).mean():.0%}"]
                + [with_ci(fhs.crps_ratio.value, fhs.crps_ratio.lo, fhs.crps_ratio.hi), f"{fhs.coverage_98:.1%}"]
                + [f"{fhs.pit_p:.3f}", with_ci(run.crps_ratio.value, run.crps_ratio.lo, run.crps_ratio.hi)]
            )
            best = min(candidates, key=lambda m: abs(scores[m].coverage_98 - 0.98))
            rows.append(
                [horizon, period, part.height, " ".join(f"{v:.0%}" for v in run.pit_deciles), f"{run.pit_p:.3f}"]
                + [f"{run.coverage_98:.1%}", f"{naive.coverage_98:.1%}", f"{naive.pit_p:.3f}"]
                + [f"{best} {scores[best].coverage_98:.1%}"]
            )
            skills.append([horizon, period, *(with_ci(r.value, r.lo, r.hi) for r in run.brier_skill.values())])
    header = ["horizon", "period", "origins", f"{RUN} PIT deciles", f"{RUN} p", f"{RUN} 98%", "Naive 98%", "Naive p"]
    print(table([*header, "candidate nearest 98%"], rows, "llrlrrrrl"))
    events = [fxcu.move_label(m) for m in fxcu.BRIER_MOVES]
    print(f"Brier skill of `{RUN}` against Naive's range:\n")
    print(table(["horizon", "period", *events], skills, "ll" + "l" * len(events)))
    print(
        f"{fxcu.FHS} (filtered historical simulation) is one of the run's candidates: how often the run's rule "
        f"served it, and {fxcu.FHS} alone; CRPS ratios to Naive's range [95% CI]:\n"
    )
    header = ["horizon", "period", f"origins {RUN} served {fxcu.FHS}", f"{fxcu.FHS} CRPS", f"{fxcu.FHS} 98%"]
    print(table([*header, f"{fxcu.FHS} p", f"{RUN} CRPS"], fhs_rows, "llrlrrl"))
    path = ROOT / "docs" / "img" / "pit_histograms.png"
    pit_grid(panels, path)
    print(f"PIT histograms: `{path.relative_to(ROOT)}`.\n")
    rounds = 1 if args.quick else args.rounds
    root = Path(tempfile.mkdtemp(prefix="fxcu-bench-odds-"))
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FXCU_", "MLFLOW_"))}
        prices = fxcu.read_seed(fxcu.SEED_DIR, "usdclp").frame
        ledger = ten_year_ledger(prices)
        fxcu.write_ledger(ledger, root / "warehouse" / fxcu.LEDGER)
        commands = {
            "odds": ([PY, FXCU, "odds", "30d", "950", "880"], base | {"FXCU_DATA_DIR": str(root)}),
            "floor": ([PY, "-c", FLOOR_CHECK], base),
        }
        times = interleaved(commands, rounds, root, ("odds",))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"`fxcu odds` speed: {rounds} interleaved rounds after 1 uncounted, medians\n")
    body = [
        [f"`python fxcu.py odds 30d 950 880`, ten-year ledger ({ledger.height} rows)", f"{med['odds']:.2f}"]
        + [spread(times["odds"])],
        [f'`python -c "{FLOOR_CHECK}"`', f"{med['floor']:.2f}", spread(times["floor"])],
    ]
    print(table(["command", "median s", "min–max s"], body))
    print(f"`fxcu odds` / `import mlflow`: {med['odds'] / med['floor']:.2f}x.\n")


# -- data: what the real histories say -----------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> None:
    """The real histories: the jump limits against the worst real moves, and copper's correlation with USD/CLP.

    Worst k-day absolute log moves over sqrt(k) (a move over k trading days is held to jump x sqrt(k))
    next to each series' `jump` limit; then `copper_usdclp_correlation_90d` from
    `fxcu.copper_features` over 2010-2024: its distribution and its median by year.
    """
    usdclp, copper = t.real_usdclp(), t.real_copper()
    print("### The jump limits against the real histories (cleaned as a fetch cleans them)\n")
    ks, rows = (1, 2, 5, 10, 20, 60, 250), []
    for name, frame, rules in (("USD/CLP", usdclp, fxcu.USDCLP_RULES), ("copper", copper, fxcu.COPPER_RULES)):
        x = frame[fxcu.CLOSE].log().to_numpy()
        one = np.abs(np.diff(x))
        worst = f"{one.max():.4f} ({frame[fxcu.DATE][int(np.argmax(one)) + 1]})"
        scaled = ", ".join(f"{np.abs(x[k:] - x[:-k]).max() / math.sqrt(k):.3f}" for k in ks)
        rows.append([name, frame.height, worst, scaled, f"{np.quantile(one, 0.999):.4f}"])
        rows[-1].append(f"{rules.jump} ({rules.jump / one.max():.2f}x the worst)")
    header = ["series", "rows", "worst 1-day move (date)", f"worst k-day move / sqrt(k), k = {', '.join(map(str, ks))}"]
    print(table([*header, "99.9th pct 1-day", "limit `jump`"], rows, "lrllrr"))
    name = "copper_usdclp_correlation_90d"
    features = fxcu.copper_features(copper, usdclp)
    window = features.filter(pl.col(fxcu.DATE).dt.year().is_between(2010, 2024) & pl.col(name).is_not_null())
    values = window[name].to_numpy()
    print(f"### `{name}`, {window[fxcu.DATE].min()} .. {window[fxcu.DATE].max()} ({len(values)} USD/CLP dates)\n")
    quantiles = [f"{q:+.3f}" for q in np.percentile(values, [0, 25, 50, 75, 100])]
    print(
        table(["min", "25%", "median", "75%", "max", "share < 0"], [[*quantiles, pct((values < 0).mean())]], "rrrrrr")
    )
    yearly = window.group_by(pl.col(fxcu.DATE).dt.year().alias("year")).agg(
        pl.len(),
        pl.col(name).median().alias("median"),
        pl.col(name).min().alias("min"),
        pl.col(name).max().alias("max"),
    )
    rows = [[y, n, *(f"{v:+.3f}" for v in (med, lo, hi))] for y, n, med, lo, hi in yearly.sort("year").iter_rows()]
    print(table(["year", "dates", "median", "min", "max"], rows))


# -- guards: run, check and --help against their floors ------------------------------------------

FLOOR_RUN, FLOOR_CHECK = "import polars, statsforecast, mlflow", "import mlflow"
GUARD_RUN, GUARD_CHECK, GUARD_HELP = 3.5, 1.0, 0.5  # issue 21: ratios to the floors, and seconds


def ten_year_ledger(prices: pl.DataFrame) -> pl.DataFrame:
    """One live row per trading day and horizon over the last ten years of `prices`, unscored as a run stores it.

    The point is the last close and the ranges a 0.6%-a-day random walk's, built by the test suite's `ledger_row`.
    """
    days = prices.sort(fxcu.DATE).filter(pl.col(fxcu.DATE) >= pl.col(fxcu.DATE).max() - pl.duration(days=3653))
    rows = []
    for origin, close in days.select(fxcu.DATE, fxcu.CLOSE).iter_rows():
        for horizon, n in fxcu.HORIZONS.items():
            sd = 0.006 * math.sqrt(fxcu.horizon_steps(n))
            half = {"half80": close * 1.2816 * sd, "half95": close * 1.96 * sd}
            half |= {"rw_half80": half["half80"], "rw_half95": half["half95"]}
            target = fxcu.trading_dates(origin, n)[-1]
            rows.append(t.ledger_row(origin, target, horizon=horizon, forecast=close, last=close, **half))
    return fxcu.upsert_ledger(fxcu.empty_ledger(), rows)


def store_bytes(mlflow_dir: Path) -> tuple[int, int]:
    """Bytes of the MLflow database and of everything else in the store's folder (artifacts)."""
    files = [p for p in mlflow_dir.rglob("*") if p.is_file()]
    db = sum(p.stat().st_size for p in files if p.name == "mlflow.db")
    return db, sum(p.stat().st_size for p in files) - db


def cmd_guards(args: argparse.Namespace) -> None:
    """Issue 21's guards, in one interleaved run: `run 7d --offline`, `check` and `--help` against their floors.

    Fresh subprocesses from another directory, the order rotating each round, one uncounted round
    first; medians. `run 7d --offline` (a data dir with `fxcu.py init` and the warehouse the first run
    builds from the shipped seed) against `python -c "import polars, statsforecast, mlflow"`:
    at most 3.5x. `check` (the seed's warehouse, a ten-year ledger of 2,600 days x 4 horizons, a store with a run)
    against `python -c "import mlflow"`: at most 1.0x. `python fxcu.py --help`: at most 0.5 s.
    Also the MLflow store's growth per counted run (database and artifacts).
    """
    rounds = 1 if args.quick else args.rounds
    root = Path(tempfile.mkdtemp(prefix="fxcu-bench-guards-"))
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FXCU_", "MLFLOW_"))}
        run_env = base | {"FXCU_DATA_DIR": str(root / "run"), "FXCU_TRACKING_TIMEOUT": "60"}
        check_env = base | {"FXCU_DATA_DIR": str(root / "check")}
        for series, file in (("usdclp", fxcu.USDCLP_CACHE), ("copper", fxcu.COPPER_CACHE)):
            fxcu.write_parquet_atomic(fxcu.read_seed(fxcu.SEED_DIR, series).frame, root / "check" / "warehouse" / file)
        ledger = ten_year_ledger(pl.read_parquet(root / "check" / "warehouse" / fxcu.USDCLP_CACHE))
        fxcu.write_ledger(ledger, root / "check" / "warehouse" / fxcu.LEDGER)
        run = [PY, FXCU, "run", "7d", "--offline"]
        interleaved({"init": ([PY, FXCU, "init"], run_env), "run": (run, run_env)}, 0, root, ("init", "run"))
        before = store_bytes(root / "run" / "mlflow")
        shutil.copytree(root / "run" / "mlflow", root / "check" / "mlflow")  # check also reads a store with a run
        commands = {
            "floor_run": ([PY, "-c", FLOOR_RUN], base),
            "run": (run, run_env),
            "floor_check": ([PY, "-c", FLOOR_CHECK], base),
            "check": ([PY, FXCU, "-q", "check"], check_env),
            "help": ([PY, FXCU, "--help"], base),
        }
        times = interleaved(commands, rounds, root, ("run", "help"))
        after = store_bytes(root / "run" / "mlflow")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {name: statistics.median(values) for name, values in times.items()}
    labels = {
        "floor_run": f'`python -c "{FLOOR_RUN}"`',
        "run": "`python fxcu.py run 7d --offline`",
        "floor_check": f'`python -c "{FLOOR_CHECK}"`',
        "check": f"`python fxcu.py -q check`, ten-year ledger ({ledger.height} rows)",
        "help": "`python fxcu.py --help`",
    }
    print(f"### Guards: {rounds} interleaved rounds after 1 uncounted, medians\n")
    rows = [[labels[k], f"{med[k]:.2f}", spread(v)] for k, v in times.items()]
    print(table(["command", "median s", "min–max s"], rows))
    guards = [
        ["`run 7d --offline` / floor", f"{med['run'] / med['floor_run']:.2f}x", f"≤ {GUARD_RUN}x"],
        ["`check` / `import mlflow`", f"{med['check'] / med['floor_check']:.2f}x", f"≤ {GUARD_CHECK}x"],
        ["`--help`", f"{med['help']:.2f} s", f"≤ {GUARD_HELP} s"],
    ]
    ok = [med["run"] / med["floor_run"] <= GUARD_RUN, med["check"] / med["floor_check"] <= GUARD_CHECK]
    ok.append(med["help"] <= GUARD_HELP)
    print(table(["guard", "figure", "limit", "met"], [[*g, met(m)] for g, m in zip(guards, ok, strict=True)], "lrrl"))
    runs = rounds + 1
    print(
        f"MLflow store growth per `run 7d` (the {runs} runs after the first, their total over {runs}): database "
        f"{(after[0] - before[0]) / runs / 1024:.1f} KiB, artifacts {(after[1] - before[1]) / runs / 1024:.1f} KiB.\n"
    )


# -- faults: hostile HTTP answers on both transports ---------------------------------------------


def compressed(reply: t.Reply) -> t.Reply:
    """`reply` as a CDN answers Chrome: the body gzip-compressed, with Content-Encoding: gzip."""
    body = reply.body if isinstance(reply.body, bytes) else str(reply.body).encode()
    return dataclasses.replace(reply, body=t.compress(body, "gzip"), encoding="gzip")


def fault_routes() -> dict[str, dict[str, t.Reply]]:
    """Per fault, the Yahoo chart answers (USD/CLP and copper); mindicador and FRED answer normally."""
    good = t.good_routes()
    clp, hg = good[t.YAHOO_CLP], good[t.YAHOO_HG]
    bomb, big = t.Reply(body=t.gzip_bomb(), encoding="gzip"), t.Reply(body=b"[" + b" " * (33 * 2**20) + b"]")
    return {
        "healthy, gzip": {"clp": compressed(clp), "hg": compressed(hg)},
        "gzip bomb (1 MB inflating to 1 GiB)": {"clp": bomb, "hg": bomb},
        "body over 32 MB, not compressed": {"clp": big, "hg": big},
        "body trickles 1 byte/s": dict.fromkeys(("clp", "hg"), dataclasses.replace(clp, trickle=1.0, chunk=1)),
        "headers trickle 1 byte/s": dict.fromkeys(
            ("clp", "hg"), dataclasses.replace(clp, trickle=1.0, chunk=1, slow_headers=True)
        ),
    }


RSS_WRAPPER = t.RSS_WRAPPER  # the test suite's: a small parent reads the peak (RUSAGE_CHILDREN)


def cli_peak(args: list[str], env: dict[str, str], cwd: Path, limit: float) -> tuple[t.Outcome | None, float]:
    """`python fxcu.py ARGS` in a fresh process: its outcome (None if killed at `limit` s) and its peak RSS in MB.

    The peak is RUSAGE_CHILDREN of a small wrapper process: Linux carries ru_maxrss over fork and exec, so a
    direct child of this (large) process would report this process's peak as its own.
    """
    started = time.monotonic()
    cmd = [PY, "-c", RSS_WRAPPER, PY, FXCU, *args]
    proc = subprocess.Popen(cmd, env=t.clean_environ() | env, cwd=cwd, text=True, start_new_session=True, **PIPES)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the wrapper and the fxcu process it started, nothing else
        proc.communicate()
        return None, 0.0
    err, _, peak = err.rpartition("peak_rss_kb=")
    return t.Outcome(proc.returncode, out, err, time.monotonic() - started), int(peak or 0) / 1024


def yahoo_line(outcome: t.Outcome) -> str:
    """What happened to Yahoo's USD/CLP: its failure as logged, or where USD/CLP came from."""
    failed = [
        line.split("fetch failed ", 1)[1].removeprefix("(").removesuffix(")")
        for line in outcome.err.splitlines()
        if "USD/CLP fetch failed" in line
    ]
    used = [line.strip() for line in outcome.out.splitlines() if line.strip().startswith("usdclp:")]
    return (failed or used or [outcome.err.strip().splitlines()[-1] if outcome.err.strip() else "?"])[0][:110]


def healthy_fetch_ms(api_url: str, folder: Path, rounds: int) -> dict[str, tuple[list[float], str]]:
    """Per transport, the milliseconds of one gzip-compressed HG=F chart fetch with a new client, and the outcome.

    `fxcu.make_fetch_json` (the run's capped, retried reader) through `fxcu.make_client`: TCP and TLS
    handshake, request, decompression and JSON parse; interleaved rounds after one uncounted round.
    """
    url, params = f"{api_url}{t.YAHOO_HG}", {"interval": "1d", "range": "max"}
    out: dict[str, tuple[list[float], str]] = {mode: ([], "") for mode in fxcu.IMPERSONATE}
    for index in range(rounds + 1):
        for mode in fxcu.IMPERSONATE:
            config = fxcu.Config(data_dir=folder, yahoo_url=api_url, impersonate=mode)
            fetch_json, started = fxcu.make_fetch_json(config), time.perf_counter()
            try:
                with fxcu.make_client(config) as client:
                    bars = len(fetch_json(client, url, params)["chart"]["result"][0]["timestamp"])
                outcome = f"{bars} bars"
            except Exception as exc:  # noqa: BLE001 -- a failed fetch is a figure too
                outcome = fxcu.describe_error(exc, None)[:110]
            if index:
                out[mode][0].append((time.perf_counter() - started) * 1000)
            out[mode] = (out[mode][0], outcome)
    return out


def cmd_faults(args: argparse.Namespace) -> None:
    """Hostile HTTP answers: peak RSS and wall time of `python fxcu.py fetch` (or `run 7d`) per fault and transport.

    A local HTTPS server (fxcu_test's FakeSources, a self-signed certificate trusted through
    SSL_CERT_FILE) plays Yahoo's two chart answers with each fault; mindicador and FRED answer with
    their real bodies, and the warehouse holds the real history. Each command runs once per fault
    with FXCU_HTTP_IMPERSONATE=chrome (curl_cffi) and =off (plain httpx), its peak RSS read by the
    child itself (ru_maxrss). Then the time of one healthy gzip chart fetch on each transport.
    `--quick`: a 3 s request timeout, a 10 s network budget and 3 fetch rounds.
    """
    timeout, budget, rounds = (3, 10, 3) if args.quick else (args.timeout, args.budget, 20)
    command = ["fetch"] if args.command == "fetch" else ["run", "7d", "--skip-email"]
    root = Path(tempfile.mkdtemp(prefix="fxcu-bench-faults-"))
    try:
        cafile, context = t.make_tls_pair(root)
        os.environ["SSL_CERT_FILE"] = str(cafile)  # for the in-process fetches; the children get it in their env
        t.write_real_warehouse(root / "template")
        if args.command == "run":
            env = t.clean_environ() | {"FXCU_DATA_DIR": str(root / "template")}
            subprocess.run([PY, FXCU, "init"], env=env, cwd=root, capture_output=True, check=True)
        print(f"### Hostile answers: `python fxcu.py {' '.join(command)}`, Yahoo's chart requests faulted\n")
        print(
            f"FXCU_TIMEOUT={timeout}, FXCU_NETWORK_BUDGET={budget}; one run each; the cache and the backups answer "
            "in the end. Peak RSS: ru_maxrss of the fxcu process, read by its parent (a small wrapper).\n"
        )
        rows = []
        for fault, changes in fault_routes().items():
            for mode in fxcu.IMPERSONATE:
                data = root / f"data-{len(rows)}"
                shutil.copytree(root / "template", data)
                with t.FakeSources(t.routes(**changes), tls=context) as api:
                    env = t.fault_env(data, api.url, FXCU_HTTP_IMPERSONATE=mode, SSL_CERT_FILE=str(cafile))
                    env |= {"FXCU_TIMEOUT": str(timeout), "FXCU_NETWORK_BUDGET": str(budget)}
                    limit = budget * 4 + 120
                    outcome, rss = cli_peak(command, env, root, limit)
                    code = "killed" if outcome is None else outcome.code
                    seconds = f"> {limit}" if outcome is None else f"{outcome.seconds:.1f}"
                    what = "still running" if outcome is None else yahoo_line(outcome)
                    rows.append([fault, mode, code, seconds, f"{rss:.0f}" if rss else "?", what])
                shutil.rmtree(data, ignore_errors=True)
        header = ["Yahoo answers", "transport", "exit", "wall s", "peak RSS MB", "Yahoo USD/CLP"]
        print(table(header, rows, "llrrrl"))
        with t.FakeSources({t.YAHOO_HG: compressed(t.good_routes()[t.YAHOO_HG])}, tls=context) as api:
            fetches = healthy_fetch_ms(api.url, root, rounds)
        off = statistics.median(fetches["off"][0])
        print(f"### One healthy gzip HG=F chart fetch, new client each time: {rounds} interleaved rounds\n")
        body = [
            [mode, f"{statistics.median(ms):.1f}", f"{np.quantile(ms, 0.25):.1f}–{np.quantile(ms, 0.75):.1f}"]
            + [f"{statistics.median(ms) / off:.2f}", outcome]
            for mode, (ms, outcome) in fetches.items()
        ]
        print(table(["transport", "median ms", "25%–75% ms", "ratio to off", "outcome"], body, "lrrrl"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- team: a tracking server on PostgreSQL --------------------------------------------------------


def timed_run(env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds of one `run 7d --offline` subprocess and its tracking stage (its `Stage times` log line)."""
    started = time.perf_counter()
    done = subprocess.run([PY, FXCU, "run", "7d", "--offline", "--skip-email"], env=env, cwd=cwd, **PIPES, text=True)
    seconds = time.perf_counter() - started
    tracked = re.search(r"; tracked: yes, run \w+$", done.stdout, re.M)
    stage = re.search(r"Stage times: .*tracking ([\d.]+) s", done.stderr)
    if done.returncode or not tracked or not stage:
        raise SystemExit(f"run 7d failed or was not tracked: {done.stdout[-1000:]} {done.stderr[-2000:]}")
    return seconds, float(stage[1])


def timed(call: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def fill_store(uri: str, runs: int) -> None:
    """Copy the store's newest real `run 7d` (params, ~250 metrics, tags) until it holds `runs` runs in all.

    `uri` is the server's database (MLflow's SQL store): filling it through the server's REST API takes minutes.
    """
    from mlflow.entities import Metric, Param, RunTag

    client = fxcu.mlflow_client(fxcu.TrackingStore(uri))
    seven = client.get_experiment_by_name("forecaster_7d").experiment_id
    (model,) = client.search_runs([seven], max_results=1)
    ids = [fxcu.ensure_experiment(client, "forecaster_" + h, None)[0] for h in fxcu.HORIZONS]
    stamp = int(time.time() * 1000)
    metrics = [Metric(k, v, stamp, 0) for k, v in model.data.metrics.items()]
    params = [Param(k, v) for k, v in model.data.params.items()]
    tags = [RunTag(k, v) for k, v in model.data.tags.items() if not k.startswith("mlflow.")]
    for index in range(runs - len(client.search_runs(ids, max_results=5000))):
        run = client.create_run(ids[index % 4], start_time=stamp - index * 60_000, run_name=f"copy {index}")
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run.info.run_id, end_time=stamp - index * 60_000 + 20_000)


def cmd_team(args: argparse.Namespace) -> None:
    """A team's tracking server: `mlflow server` on a throwaway PostgreSQL (fxcu_test's `team_server_up`), 127.0.0.1.

    1. `run 7d --offline` tracked to the server against the same run tracked to local SQLite (a store made by
       `fxcu init`), interleaved, fresh subprocesses, one uncounted round first; medians of the wall time and of
       the run's own tracking stage. 2. Four `run 7d` from four data dirs started at the same moment against the
       server, against one alone just before: each run's wall and tracking stage over the one alone's (the
       issue's target: at most 1.5x); the same with four local SQLite stores, where only the machine's cores are
       shared. 3. The server filled to 1,000 runs (copies of a real run's params, metrics and tags, 250 per
       experiment): one `search_runs` (newest run, as `check` asks), a horizon's 250 runs, and the
       commands `check`, `runs`, `compare` and `stats` through the server (fresh subprocesses, once each).
    """
    rounds, runs = (1, 100) if args.quick else (args.rounds, 1000)
    root = Path(tempfile.mkdtemp(prefix="fxcu-bench-team-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FXCU_", "MLFLOW_"))}

    def data_env(name: str, uri: str | None = None) -> dict[str, str]:
        env = base | {"FXCU_DATA_DIR": str(root / name), "FXCU_TRACKING_TIMEOUT": "60"}
        return env | ({"MLFLOW_TRACKING_URI": uri} if uri else {})

    try:
        with t.team_server_up(root) as team:
            for name in ("local", "alone-local", *(f"local{i}" for i in range(4))):  # migrated before they are timed
                subprocess.run([PY, FXCU, "init"], env=data_env(name), cwd=root, check=True, capture_output=True)
            server, local = data_env("server", team.url), data_env("local")
            times: dict[str, list[tuple[float, float]]] = {"local": [], "server": []}
            for index in range(rounds + 1):
                for name in ("local", "server") if index % 2 else ("server", "local"):
                    timing = timed_run(server if name == "server" else local, root)
                    if index:
                        times[name].append(timing)
            alone, four = {}, {}
            for kind, uri in (("server", team.url), ("local", None)):  # four at once, against the server and not
                alone[kind] = timed_run(data_env(f"alone-{kind}", uri), root)
                with ThreadPoolExecutor(4) as pool:  # each thread waits on its own subprocess
                    four[kind] = list(
                        pool.map(lambda i, k=kind, u=uri: timed_run(data_env(f"{k}{i}", u), root), range(4))
                    )
            fill_store(team.backend, runs)
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=team.url)
            ids = [client.get_experiment_by_name("forecaster_" + h).experiment_id for h in fxcu.HORIZONS]
            newest = [
                timed(lambda: client.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"]))
                for _ in range(21)
            ][1:]
            horizon = [timed(lambda: client.search_runs(ids[:1], max_results=5000)) for _ in range(4)][1:]
            total = sum(len(client.search_runs([i], max_results=5000)) for i in ids)
            dash = {  # one round each: `stats` alone takes minutes
                name: timed(lambda name=name: subprocess.run([PY, FXCU, "-q", name], env=server, cwd=root, **PIPES))
                for name in ("check", "runs", "compare", "stats")
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"### A tracking server on PostgreSQL: {rounds} interleaved rounds after 1 uncounted, medians\n")
    rows = [
        [label, f"{statistics.median(w for w, _ in times[k]):.2f}", f"{statistics.median(s for _, s in times[k]):.2f}"]
        for k, label in (("local", "local SQLite (`fxcu init`)"), ("server", "`mlflow server` on PostgreSQL 15"))
    ]
    print(table(["`run 7d --offline` tracked to", "run s", "tracking stage s"], rows))
    print("Four `run 7d` started at the same moment from four data dirs, against one alone just before; the same")
    print("with four local SQLite stores (nothing shared but this machine's two cores):\n")
    rows = []
    for kind, label in (("server", "the server"), ("local", "local SQLite")):
        (w1, s1), runs4 = alone[kind], four[kind]
        rows.append([f"{label}: alone", f"{w1:.2f}", f"{s1:.2f}", "1.00x", "1.00x"])
        rows += [
            [f"{label}: {i + 1} of 4", f"{w:.2f}", f"{s:.2f}", f"{w / w1:.2f}x", f"{s / s1:.2f}x"]
            for i, (w, s) in enumerate(runs4)
        ]
    print(table(["run", "run s", "tracking stage s", "run / alone", "tracking / alone"], rows))
    print(f"With {total} runs in the server (the searches: medians of {len(newest)} and {len(horizon)}):\n")
    rows = [
        ["`search_runs` newest run of the four experiments (what `check` times)", f"{statistics.median(newest):.3f}"],
        [f"`search_runs` one horizon's {total // 4} runs, all metrics", f"{statistics.median(horizon):.3f}"],
        *[[f"`fxcu {name}` (a subprocess, once)", f"{seconds:.2f}"] for name, seconds in dash.items()],
    ]
    print(table(["through the server", "median s"], rows))


# -- CLI -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the subcommand, print the machine line, run it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command_name", required=True)
    for name, func in (
        ("forecast", cmd_forecast),
        ("density", cmd_density),
        ("calibration", cmd_calibration),
        ("data", cmd_data),
        ("guards", cmd_guards),
        ("faults", cmd_faults),
        ("team", cmd_team),
    ):
        doc = inspect.cleandoc(func.__doc__ or "")
        first = doc.splitlines()[0].replace("%", "%%")  # argparse formats a subcommand's help with %
        sub = subs.add_parser(name, help=first, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(func=func)
        if name != "data":
            sub.add_argument("--quick", action="store_true", help="a smoke test: its numbers are not for the page")
        if name in ("guards", "calibration", "team"):
            rounds = 3 if name == "team" else 5
            sub.add_argument("--rounds", type=int, default=rounds, help=f"counted rounds (default {rounds})")
        if name == "faults":
            sub.add_argument("--command", choices=("fetch", "run"), default="fetch", help="fetch, or run 7d")
            sub.add_argument("--timeout", type=int, default=5, help="FXCU_TIMEOUT for the children (default 5)")
            sub.add_argument("--budget", type=int, default=30, help="FXCU_NETWORK_BUDGET (default 30)")
    args = parser.parse_args(argv)
    print(machine(" ".join(sys.argv[1:] if argv is None else argv)))
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
