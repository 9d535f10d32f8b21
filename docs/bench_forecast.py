#!/usr/bin/env python3
"""Forecast-engine benchmarks for fxcu (issue 4) on the real CLP=X and HG=F histories; prints Markdown.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/bench_forecast.py accuracy   # fxcu.backtest_all at 7d, 15d, 30d, 90d (one shared set of
                                             # origins), with and without copper
    python docs/bench_forecast.py speed      # fxcu.forecast (7d, 90d) and fxcu.forecast_all (all four) vs
                                             # statsforecast refit=True at the same 60 origins, what refitting
                                             # changes in accuracy, peak RSS
    python docs/bench_forecast.py all        # both

Data directory: ../shared/data relative to the repository root, or FXCU_SHARED_DATA. The inputs are
cleaned by benchkit.real_usdclp() / real_copper() (the CSV as a Yahoo chart body through
fxcu.parse_yahoo_chart + fxcu.clean_prices; HG=F through fxcu.clean_prices).

Timings are wall clock on a shared machine: compare the ratio measured in the same run, not the
absolute seconds. fxcu.forecast / forecast_all are timed 3 times (after 1 warm-up, the third run after the
baseline) and the median is reported; the statsforecast refit=True baseline runs once (it takes minutes): the
univariate models once at h=65 (the shared origins, read at each horizon's step), the copper model
(Naive_copper, ARIMA(0,1,0) on lagged log copper) per horizon: fxcu.backtest_all with refit=True.
Peak memory is ru_maxrss in a fresh child started through /bin/sh (Linux carries ru_maxrss over
fork and exec, so a direct child of this process would inherit our peak).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchkit import CLP_CSV, HGF_CSV, SHARED, real_copper, real_usdclp, vm_rss_kib  # noqa: E402  (docs/ is on sys.path)

import fxcu  # noqa: E402  (after the sys.path change)

ACCURACY_HORIZONS = ("7d", "15d", "30d", "90d")
SPEED_HORIZONS = ("7d", "90d")
FORECAST_RUNS = 3
RSS_REPEATS = 3
SPEED_TARGET = 0.15
RATIO_TARGET = 1.00
COVER_80 = (0.75, 0.85)
COVER_95 = (0.91, 0.98)
MIB = 1024 * 1024


# -- Formatting -------------------------------------------------------------------------------------


def pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x * 100:.{digits}f}%"


def signed(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:+.{digits}f}%"


def table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def machine() -> str:
    import numpy as np
    import polars as pl
    import statsforecast

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; nproc {cpus}; Python {platform.python_version()}; "
        f"statsforecast {statsforecast.__version__}; polars {pl.__version__}; numpy {np.__version__}; "
        f"{platform.machine()} {platform.system()}"
    )


# -- Accuracy ---------------------------------------------------------------------------------------


def accuracy_table(bt: fxcu.Backtest) -> str:
    names = [
        *bt.weights,
        *(n for n in bt.models if n not in bt.weights and n != fxcu.ENSEMBLE),
        fxcu.ENSEMBLE,
    ]  # any extra rows fxcu scores
    rows = []
    for name in names:
        s = bt.models[name]
        weight = f"{bt.weights[name]:.3f}" if name in bt.weights else "—"
        rows.append(
            [
                name,
                f"{s.rmse:.2f}",
                f"{s.ratio:.4f}",
                f"{s.mae:.2f}",
                f"{s.mape:.2f}",
                pct(s.coverage_80),
                pct(s.coverage_95),
                pct(s.direction),
                weight,
            ]
        )
    return table(
        [
            "model",
            "RMSE CLP",
            "ratio to Naive",
            "MAE CLP",
            "MAPE %",
            "80% coverage",
            "95% coverage",
            "direction hit rate",
            "final weight",
        ],
        rows,
    )


def online_picks(bt: fxcu.Backtest) -> tuple[dict[str, int], bool]:
    """How often each rule was the Combination's per-origin choice (fxcu.online_rule on the backtest's predictions),
    and whether recombining those picks reproduces the Combination column fxcu returned."""
    import numpy as np

    names = list(bt.weights)
    pred = bt.predictions.sort("cutoff")
    cutoffs, actual = pred["cutoff"].to_numpy(), np.exp(pred["y"].to_numpy())
    logs = np.column_stack([pred[n].to_numpy() for n in names])
    sq = (np.exp(logs) - actual[:, None]) ** 2
    # each rule's combination: its online weights (one row per origin) applied to the models' log predictions
    per_rule = {r: (logs * fxcu.online_weights(sq, cutoffs, bt.steps, r, names)).sum(axis=1) for r in fxcu.RULES}
    picks = fxcu.online_rule({r: (np.exp(v) - actual) ** 2 for r, v in per_rule.items()}, cutoffs, bt.steps)
    combo = np.array([per_rule[r][i] for i, r in enumerate(picks)])
    return {r: picks.count(r) for r in fxcu.RULES}, bool(np.allclose(combo, pred[fxcu.COMBINATION].to_numpy()))


def same_backtest(a: fxcu.Backtest, b: fxcu.Backtest) -> bool:
    return (
        a.origins == b.origins
        and a.rule == b.rule
        and all(abs(a.models[m].rmse - b.models[m].rmse) < 1e-9 for m in a.models)
    )


def section_accuracy() -> dict[str, Any]:
    usdclp, copper = real_usdclp(), real_copper()
    print("## Accuracy: `fxcu.backtest_all(usdclp, copper, horizons)` on the real CLP=X + HG=F histories\n")
    start = time.perf_counter()
    bts = fxcu.backtest_all(usdclp, copper, ACCURACY_HORIZONS)
    seconds_all = time.perf_counter() - start
    bts0 = fxcu.backtest_all(usdclp, None, ACCURACY_HORIZONS)
    start = time.perf_counter()
    one = fxcu.backtest(usdclp, copper, "7d")
    seconds_one = time.perf_counter() - start
    shared = all(bts[h].origins == bts[ACCURACY_HORIZONS[0]].origins for h in ACCURACY_HORIZONS)
    first = bts[ACCURACY_HORIZONS[0]]
    print(
        f"CLP=X {usdclp[fxcu.DATE].min()} .. {usdclp[fxcu.DATE].max()} ({usdclp.height} rows after cleaning), "
        f"HG=F {copper[fxcu.DATE].min()} .. {copper[fxcu.DATE].max()} ({copper.height} rows). "
        f"{fxcu.WINDOWS} origins {fxcu.STEP} trading days apart, expanding window over the last {fxcu.HISTORY} rows, "
        "errors at the horizon date, in CLP per USD. Direction: share of origins where the model's sign of "
        "(forecast − last close) matched the outcome's, among origins where it called a move (— = never calls one). "
        "Ensemble interval: Naive's 80%/95% interval width in log space around the ensemble point.\n"
    )
    print(
        f"- One shared set of origins for every horizon: {shared} ({len(first.origins)} origins, {first.origins[0]} .. {first.origins[-1]}; "
        f"the last origin is {fxcu.horizon_steps(90)} trading days before the data ends).\n"
        f'- `backtest_all` over the four horizons took {seconds_all:.1f} s; `fxcu.backtest(usdclp, copper, "7d")` alone {seconds_one:.1f} s '
        f"and reproduces `backtest_all`'s 7d: {same_backtest(one, first)}.\n"
    )
    for horizon in ACCURACY_HORIZONS:
        bt, bt0 = bts[horizon], bts0[horizon]
        naive = bt.models["Naive"].rmse
        ens, ens0 = bt.ensemble, bt0.ensemble
        print(f"### {horizon} ({bt.steps} trading days ahead)\n")
        print(
            f"Naive RMSE **{naive:.2f} CLP**; {len(bt.origins)} origins, {bt.origins[0]} .. {bt.origins[-1]} "
            f"(horizon dates {bt.predictions['target'].min()} .. {bt.predictions['target'].max()}).\n"
        )
        print(accuracy_table(bt))
        rule_cells = ", ".join(f"{r} {bt.rule_rmse[r]:.2f} CLP ({bt.rule_rmse[r] / naive:.4f})" for r in fxcu.RULES)
        picks, reproduced = online_picks(bt)
        combo = bt.models[fxcu.COMBINATION]
        print(
            f"\n- Live ensemble rule: **{bt.rule}**. RMSE of each rule with its online weights, applied to all origins (so picked in hindsight; ratio to Naive in parentheses): {rule_cells}."
        )
        print(
            f"- Combination (rule chosen per origin from realised outcomes only): RMSE {combo.rmse:.2f} CLP, ratio {combo.ratio:.4f}; "
            f"origins on which each rule was chosen: "
            + ", ".join(f"{r} {n}" for r, n in picks.items())
            + f" (recomputed with fxcu.online_rule; reproduces fxcu's Combination: {reproduced})."
        )
        print(
            f"- Copper ablation (ensemble with vs without {fxcu.COPPER_MODEL}, same origins): {signed(bt.copper_ablation_pct)}; "
            f"`copper_model_pct`, {fxcu.COPPER_MODEL} (random walk + lagged log copper) vs Naive: {signed(bt.copper_model_pct)} (negative: copper helped)."
        )
        rmse0_from_ablation = (
            ens.rmse / (1 + bt.copper_ablation_pct / 100) if bt.copper_ablation_pct is not None else None
        )
        same_origins = bt0.origins == bt.origins
        same_models = all(abs(bt0.models[m].rmse - bt.models[m].rmse) < 1e-9 for m in fxcu.MODELS)
        rule0 = ", ".join(f"{r} {bt0.rule_rmse[r] / bt0.models['Naive'].rmse:.4f}" for r in fxcu.RULES)
        implied = "—" if rmse0_from_ablation is None else f"{rmse0_from_ablation:.2f}"
        print(
            f"- Same backtest with `copper=None`: rule **{bt0.rule}** ({rule0}); ensemble RMSE {ens0.rmse:.2f} "
            f"(ratio {ens0.ratio:.4f}), 80%/95% coverage {pct(ens0.coverage_80)}/{pct(ens0.coverage_95)}, "
            f"direction {pct(ens0.direction)}. The ablation implies {implied} for the no-copper ensemble; "
            f"origins identical: {same_origins}; the 4 univariate models' RMSEs identical: {same_models}."
        )
        if bt.notes:
            print(f"- Notes from fxcu: {'; '.join(bt.notes)}.")
        print(
            f"- Targets (ensemble): ratio ≤ {RATIO_TARGET:.2f}: {met(ens.ratio <= RATIO_TARGET)} ({ens.ratio:.4f}); "
            f"80% coverage {COVER_80[0]:.0%}–{COVER_80[1]:.0%}: {met(COVER_80[0] <= ens.coverage_80 <= COVER_80[1])} ({pct(ens.coverage_80)}); "
            f"95% coverage {COVER_95[0]:.0%}–{COVER_95[1]:.0%}: {met(COVER_95[0] <= ens.coverage_95 <= COVER_95[1])} ({pct(ens.coverage_95)}).\n"
        )
    print("### Summary across horizons (ensemble)\n")
    rows = []
    for h in ACCURACY_HORIZONS:
        bt, e = bts[h], bts[h].ensemble
        combo = bt.models.get(getattr(fxcu, "COMBINATION", ""))
        rows.append(
            [
                h,
                f"{bt.models['Naive'].rmse:.2f}",
                f"{e.ratio:.4f}",
                "—" if combo is None else f"{combo.ratio:.4f}",
                bt.rule,
                pct(e.coverage_80),
                pct(e.coverage_95),
                pct(e.direction),
                signed(bt.copper_ablation_pct),
                signed(bt.copper_model_pct),
                f"{bts0[h].ensemble.ratio:.4f}",
            ]
        )
    print(
        table(
            [
                "horizon",
                "Naive RMSE",
                "ensemble ratio",
                "combination ratio (online rule)",
                "live rule",
                "80% cov",
                "95% cov",
                "direction",
                "copper ablation",
                f"{fxcu.COPPER_MODEL} vs Naive (copper_model_pct)",
                "no-copper ensemble ratio",
            ],
            rows,
            "lrrrlrrrrrr",
        )
    )
    print()
    return {"bts": bts, "bts0": bts0}


# -- Speed ------------------------------------------------------------------------------------------


def refit_backtests(
    usdclp: Any, copper: Any, horizons: tuple[str, ...]
) -> tuple[dict[str, fxcu.Backtest], float, dict[str, float]]:
    """`fxcu.backtest_all` with statsforecast refitting at every origin, and the seconds each cross-validation took.

    fxcu's own frames, origins, models and scoring: only the refit schedule differs (`cross_validate` is
    wrapped with refit=True for the call). backtest_all cross-validates the univariate models once, then
    the copper model once per horizon, in the order of `horizons`.
    """
    real, seconds = fxcu.cross_validate, []

    def refitting(frame, models, steps, windows, step_size, *, refit=False):
        start = time.perf_counter()
        out = real(frame, models, steps, windows, step_size, refit=True)
        seconds.append(time.perf_counter() - start)
        return out

    fxcu.cross_validate = refitting
    try:
        bts = fxcu.backtest_all(usdclp, copper, horizons)
    finally:
        fxcu.cross_validate = real
    return bts, seconds[0], dict(zip(horizons, seconds[1:], strict=True))


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def section_speed() -> dict[str, Any]:
    usdclp, copper = real_usdclp(), real_copper()
    horizons = tuple(fxcu.HORIZONS)
    span = fxcu.horizon_steps(max(fxcu.HORIZONS.values()))
    print(
        "## Speed: `fxcu.forecast` / `fxcu.forecast_all` vs statsforecast `cross_validation(refit=True)` at the same 60 origins\n"
    )
    print(
        f"Both on the frames `fxcu.backtest_all` builds (last {fxcu.HISTORY} rows, log prices), n_jobs=1. fxcu = "
        f"`fxcu.forecast(usdclp, copper, h)` (7d, 90d) or `fxcu.forecast_all(usdclp, copper, all four)`: the shared "
        f"{fxcu.WINDOWS}-origin backtest (models fitted once before the first origin, then `forward`ed; refit=False) + the final fit; "
        f"median of {FORECAST_RUNS} after 1 warm-up (the third run after the baseline). Baseline, run once, on the same origins: "
        f"`cross_validation(h={span}, n_windows={fxcu.WINDOWS}, step_size={fxcu.STEP}, level=[80, 95], refit=True)` for Naive, AutoETS, "
        f"AutoARIMA, AutoTheta on the univariate frame (read at each horizon's step), plus, per horizon, {fxcu.COPPER_MODEL} "
        "(ARIMA(0,1,0) with `copper_lag`, `h=steps`) on the exog frame cut as `backtest_all` cuts it: `fxcu.backtest_all` "
        "itself, with `fxcu.cross_validate` wrapped to pass refit=True.\n"
    )
    jobs = {
        "7d": lambda: fxcu.forecast(usdclp, copper, "7d"),
        "90d": lambda: fxcu.forecast(usdclp, copper, "90d"),
        "all": lambda: fxcu.forecast_all(usdclp, copper, horizons),
    }
    times: dict[str, list[float]] = {k: [] for k in jobs}
    outputs: dict[str, Any] = {}
    for fn in jobs.values():
        fn()  # warm-up: lazy imports, polars set-up, caches
    for _ in range(FORECAST_RUNS - 1):
        for key, fn in jobs.items():
            t, outputs[key] = timed(fn)
            times[key].append(t)

    refit, base_uni, base_exog = refit_backtests(usdclp, copper, horizons)

    for key, fn in jobs.items():
        t, outputs[key] = timed(fn)
        times[key].append(t)
    bts = {h: outputs["all"][h].backtest for h in horizons}
    final_fit = {
        "7d": timed(lambda: fxcu.forecast(usdclp, copper, "7d", backtest_result=outputs["7d"].backtest))[0],
        "90d": timed(lambda: fxcu.forecast(usdclp, copper, "90d", backtest_result=outputs["90d"].backtest))[0],
        "all": timed(lambda: fxcu.forecast_all(usdclp, copper, horizons, backtests=bts))[0],
    }

    same_7d_90d = (
        outputs["7d"].backtest.origins == bts["7d"].origins and outputs["90d"].backtest.origins == bts["90d"].origins
    )

    baseline = {
        "7d": base_uni + base_exog["7d"],
        "90d": base_uni + base_exog["90d"],
        "all": base_uni + sum(base_exog.values()),
    }
    rows = []
    for key in jobs:
        med = statistics.median(times[key])
        split = (
            f"{base_uni:.1f} + {base_exog[key]:.1f}"
            if key != "all"
            else f"{base_uni:.1f} + " + " + ".join(f"{base_exog[h]:.1f}" for h in horizons)
        )
        label = {
            "7d": f"7d ({fxcu.horizon_steps(7)} steps): `forecast`",
            "90d": f"90d ({span} steps): `forecast`",
            "all": "7d+15d+30d+90d: `forecast_all`",
        }[key]
        rows.append(
            [
                label,
                f"{med:.2f}",
                f"[{min(times[key]):.2f}, {max(times[key]):.2f}]",
                f"{final_fit[key]:.2f}",
                f"{baseline[key]:.1f}",
                split,
                f"**{med / baseline[key]:.3f}**",
                met(med / baseline[key] <= SPEED_TARGET),
            ]
        )
    print(
        table(
            [
                "what",
                "fxcu median s",
                "[min, max] s",
                "final fit only s",
                "refit=True baseline s",
                "univariate + copper s",
                "ratio fxcu/baseline",
                f"≤ {SPEED_TARGET}",
            ],
            rows,
            "lrlrrlrl",
        )
    )
    print(f"\n- Origins: the one-horizon `forecast` backtests use the same origins as `forecast_all`'s: {same_7d_90d}.")
    print()
    print("### What the refit schedule costs in accuracy (same origins, RMSE at the horizon date, CLP)\n")
    for h in horizons:
        bt, rf = bts[h], refit[h]
        print(
            f"**{h}** — origins identical: {bt.origins == rf.origins}; fxcu rule {bt.rule}, refit=True rule {rf.rule}.\n"
        )
        rows = []
        for name in [*(n for n in bt.models if n != fxcu.ENSEMBLE), fxcu.ENSEMBLE]:
            a, b = bt.models[name], rf.models[name]
            rows.append(
                [
                    name,
                    f"{a.rmse:.2f}",
                    f"{b.rmse:.2f}",
                    signed((a.rmse / b.rmse - 1) * 100),
                    f"{a.ratio:.4f}",
                    f"{b.ratio:.4f}",
                    f"{pct(a.coverage_80)} / {pct(b.coverage_80)}",
                    f"{pct(a.coverage_95)} / {pct(b.coverage_95)}",
                ]
            )
        print(
            table(
                [
                    "model",
                    "RMSE refit=False (fxcu)",
                    "RMSE refit=True",
                    "fxcu vs refit",
                    "ratio to Naive, fxcu",
                    "ratio to Naive, refit",
                    "80% cov fxcu / refit",
                    "95% cov fxcu / refit",
                ],
                rows,
            )
        )
        rules = ", ".join(f"{r} {rf.rule_rmse[r] / rf.models['Naive'].rmse:.4f}" for r in fxcu.RULES)
        print(f"\nrefit=True rule RMSE ratios to Naive: {rules}.\n")
    print("### Peak memory in a fresh process\n")
    rows = []
    for h in (*SPEED_HORIZONS, "all"):
        m = rss(h)
        label = f"`forecast` {h}" if h != "all" else "`forecast_all` (four horizons)"
        rows.append(
            [
                label,
                f"{m['before_mib']:.0f}",
                f"{m['peak_mib']:.0f}",
                f"{m['delta_mib']:.0f}",
                ", ".join(map(str, m["peaks"])),
            ]
        )
    print(
        table(
            ["what", "RSS after imports + data MiB", "peak RSS (ru_maxrss) MiB", "delta MiB", "peaks of the runs MiB"],
            rows,
            "lrrrl",
        )
    )
    print(
        f"\nMedian of {RSS_REPEATS} children started via /bin/sh. Each imports fxcu, polars and statsforecast, loads and "
        "cleans both CSVs, reads its RSS, runs `fxcu.forecast(usdclp, copper, h)` (or `fxcu.forecast_all` over the four "
        "horizons) once, then reads ru_maxrss.\n"
    )
    return {"times": times, "final_fit": final_fit, "base_uni": base_uni, "base_exog": base_exog}


def rss_child(horizon: str) -> None:
    """In a fresh process: import, load the data, take RSS; run fxcu.forecast (or forecast_all for "all") once; print ru_maxrss (KiB)."""
    import polars  # noqa: F401
    import statsforecast  # noqa: F401
    from statsforecast.models import ARIMA, AutoARIMA  # noqa: F401

    usdclp, copper = real_usdclp(), real_copper()
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before_rss = vm_rss_kib()
    if horizon == "all":
        fxcu.forecast_all(usdclp, copper, tuple(fxcu.HORIZONS))
    else:
        fxcu.forecast(usdclp, copper, horizon)
    after_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "maxrss_before_kib": before_max,
                "rss_before_kib": before_rss,
                "maxrss_after_kib": after_max,
                "rss_after_kib": vm_rss_kib(),
            }
        )
    )


def rss(horizon: str) -> dict[str, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), "_rss", horizon]
    samples = []
    for _ in range(RSS_REPEATS):
        proc = subprocess.run(
            ["/bin/sh", "-c", '"$@"; exit $?', "sh", *argv],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "FXCU_SHARED_DATA": str(SHARED)},
        )
        sample = json.loads(proc.stdout.strip().splitlines()[-1])
        if sample["maxrss_before_kib"] - sample["rss_before_kib"] > 16384:
            raise RuntimeError(f"child's ru_maxrss did not start near its own RSS: {sample}")
        samples.append(sample)
    return {
        "before_mib": statistics.median(s["rss_before_kib"] / 1024 for s in samples),
        "before_max_mib": statistics.median(s["maxrss_before_kib"] / 1024 for s in samples),
        "peak_mib": statistics.median(s["maxrss_after_kib"] / 1024 for s in samples),
        "delta_mib": statistics.median((s["maxrss_after_kib"] - s["maxrss_before_kib"]) / 1024 for s in samples),
        "peaks": [round(s["maxrss_after_kib"] / 1024) for s in samples],
    }


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    if what == "_rss" and len(argv) == 2:
        rss_child(argv[1])
        return 0
    if what not in {"accuracy", "speed", "all"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    missing = [name for name in (HGF_CSV, CLP_CSV) if not (SHARED / name).is_file()]
    if missing:
        print(f"bench_forecast: {', '.join(missing)} not found in {SHARED} (set FXCU_SHARED_DATA)", file=sys.stderr)
        return 2
    print(f"_{machine()}; data {SHARED}_\n")
    start = time.perf_counter()
    if what in ("accuracy", "all"):
        section_accuracy()
    if what in ("speed", "all"):
        section_speed()
    print(f"_total {time.perf_counter() - start:.0f} s_")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
