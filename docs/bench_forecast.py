#!/usr/bin/env python3
"""Forecast-engine benchmarks for fxcu (issue 4) on the real CLP=X and HG=F histories; prints Markdown.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/bench_forecast.py accuracy   # fxcu.backtest at 7d, 15d, 30d, 90d, with and without copper
    python docs/bench_forecast.py speed      # fxcu.forecast vs statsforecast refit=True at the same 60 origins
                                             # (7d and 90d), what refitting changes in accuracy, peak RSS
    python docs/bench_forecast.py all        # both

Data directory: ../shared/data relative to the repository root, or FXCU_SHARED_DATA. The inputs are
cleaned exactly as fxcu_test.real_usdclp() / real_copper() do (the CSV as a Yahoo chart body through
fxcu.parse_yahoo_chart + fxcu.clean_prices; HG=F through fxcu.clean_prices).

Timings are wall clock on a shared machine: compare the ratio measured in the same run, not the
absolute seconds. fxcu.forecast is timed 3 times (after 1 warm-up, the third run after the baseline)
and the median is reported; the statsforecast refit=True baseline runs once (it takes minutes).
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

import fxcu  # noqa: E402  (after the sys.path change)

SHARED = Path(os.environ.get("FXCU_SHARED_DATA") or ROOT.parent / "shared" / "data")
HGF_CSV = "copper_hgf_daily_2000_2026.csv"
CLP_CSV = "usdclp_clpx_daily_2006_2024.csv"

ACCURACY_HORIZONS = ("7d", "15d", "30d", "90d")
SPEED_HORIZONS = ("7d", "90d")
FORECAST_RUNS = 3
RSS_REPEATS = 3
SPEED_TARGET = 0.15
RATIO_TARGET = 1.00
COVER_80 = (0.75, 0.85)
COVER_95 = (0.91, 0.98)
MIB = 1024 * 1024


# -- Inputs: as fxcu_test.real_usdclp() and real_copper() ------------------------------------------


def real_usdclp() -> Any:
    import polars as pl

    raw = pl.read_csv(SHARED / CLP_CSV)
    stamps = raw["Date"].str.to_datetime("%Y-%m-%d %H:%M:%S%z").dt.epoch("s").to_list()
    quote = {"close": raw["Close"].to_list(), "open": raw["Open"].to_list()}
    meta = {"symbol": "CLP=X", "exchangeTimezoneName": "Europe/London"}
    payload = {"chart": {"result": [{"meta": meta, "timestamp": stamps, "indicators": {"quote": [quote]}}], "error": None}}
    return fxcu.clean_prices(fxcu.parse_yahoo_chart(payload)).frame


def real_copper() -> Any:
    import polars as pl

    raw = pl.read_csv(SHARED / HGF_CSV)
    frame = raw.select(pl.col("Date").str.to_date().alias(fxcu.DATE), pl.col("Close").alias(fxcu.CLOSE))
    return fxcu.clean_prices(frame).frame


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
    names = [*bt.weights, fxcu.ENSEMBLE]
    rows = []
    for name in names:
        s = bt.models[name]
        weight = f"{bt.weights[name]:.3f}" if name in bt.weights else "—"
        rows.append([name, f"{s.rmse:.2f}", f"{s.ratio:.4f}", f"{s.mae:.2f}", f"{s.mape:.2f}", pct(s.coverage_80), pct(s.coverage_95), pct(s.direction), weight])
    return table(["model", "RMSE CLP", "ratio to Naive", "MAE CLP", "MAPE %", "80% coverage", "95% coverage", "direction hit rate", "final weight"], rows)


def section_accuracy() -> list[dict[str, Any]]:
    usdclp, copper = real_usdclp(), real_copper()
    print("## Accuracy: `fxcu.backtest(usdclp, copper, h)` on the real CLP=X + HG=F histories\n")
    print(
        f"CLP=X {usdclp[fxcu.DATE].min()} .. {usdclp[fxcu.DATE].max()} ({usdclp.height} rows after cleaning), "
        f"HG=F {copper[fxcu.DATE].min()} .. {copper[fxcu.DATE].max()} ({copper.height} rows). "
        f"{fxcu.WINDOWS} origins {fxcu.STEP} trading days apart, expanding window over the last {fxcu.HISTORY} rows, "
        "errors at the horizon date, in CLP per USD. Direction: share of origins where the model's sign of "
        "(forecast − last close) matched the outcome's, among origins where it called a move (— = never calls one).\n"
    )
    results = []
    for horizon in ACCURACY_HORIZONS:
        start = time.perf_counter()
        bt = fxcu.backtest(usdclp, copper, horizon)
        seconds = time.perf_counter() - start
        bt0 = fxcu.backtest(usdclp, None, horizon)
        naive = bt.models["Naive"].rmse
        ens, ens0 = bt.ensemble, bt0.ensemble
        print(f"### {horizon} ({bt.steps} trading days ahead)\n")
        print(
            f"Naive RMSE **{naive:.2f} CLP**; {len(bt.origins)} origins, {bt.origins[0]} .. {bt.origins[-1]} "
            f"(horizon dates up to {bt.predictions['target'].max()}); backtest took {seconds:.1f} s.\n"
        )
        print(accuracy_table(bt))
        rule_cells = ", ".join(f"{r} {bt.rule_rmse[r] / naive:.4f}" for r in fxcu.RULES)
        print(f"\n- Ensemble rule chosen: **{bt.rule}**. RMSE ratio to Naive of every rule: {rule_cells}.")
        print(
            f"- Copper ablation (ensemble with vs without AutoARIMA_copper, same origins): {signed(bt.copper_ablation_pct)}; "
            f"AutoARIMA with lagged copper vs AutoARIMA alone: {signed(bt.copper_model_pct)} (negative: copper helped)."
        )
        rmse0_from_ablation = ens.rmse / (1 + bt.copper_ablation_pct / 100) if bt.copper_ablation_pct is not None else None
        same_origins = bt0.origins == bt.origins
        same_models = all(abs(bt0.models[m].rmse - bt.models[m].rmse) < 1e-9 for m in fxcu.MODELS)
        rule0 = ", ".join(f"{r} {bt0.rule_rmse[r] / bt0.models['Naive'].rmse:.4f}" for r in fxcu.RULES)
        print(
            f"- Same backtest with `copper=None`: rule **{bt0.rule}** ({rule0}); ensemble RMSE {ens0.rmse:.2f} "
            f"(ratio {ens0.ratio:.4f}), 80%/95% coverage {pct(ens0.coverage_80)}/{pct(ens0.coverage_95)}, "
            f"direction {pct(ens0.direction)}. The ablation implies {rmse0_from_ablation:.2f} for the no-copper ensemble; "
            f"origins identical: {same_origins}; the 4 univariate models' RMSEs identical: {same_models}."
        )
        if bt.notes:
            print(f"- Notes from fxcu: {'; '.join(bt.notes)}.")
        print(
            f"- Targets (ensemble): ratio ≤ {RATIO_TARGET:.2f}: {met(ens.ratio <= RATIO_TARGET)} ({ens.ratio:.4f}); "
            f"80% coverage {COVER_80[0]:.0%}–{COVER_80[1]:.0%}: {met(COVER_80[0] <= ens.coverage_80 <= COVER_80[1])} ({pct(ens.coverage_80)}); "
            f"95% coverage {COVER_95[0]:.0%}–{COVER_95[1]:.0%}: {met(COVER_95[0] <= ens.coverage_95 <= COVER_95[1])} ({pct(ens.coverage_95)}).\n"
        )
        results.append({"horizon": horizon, "bt": bt, "bt0": bt0})
    print("### Summary across horizons (ensemble)\n")
    rows = []
    for r in results:
        bt, e = r["bt"], r["bt"].ensemble
        rows.append([
            r["horizon"], f"{bt.models['Naive'].rmse:.2f}", f"{e.ratio:.4f}", bt.rule, pct(e.coverage_80), pct(e.coverage_95),
            signed(bt.copper_ablation_pct), signed(bt.copper_model_pct), f"{r['bt0'].ensemble.ratio:.4f}",
        ])
    print(table(["horizon", "Naive RMSE", "ensemble ratio", "rule", "80% cov", "95% cov", "copper ablation", "copper model vs AutoARIMA", "no-copper ensemble ratio"], rows, "lrrlrrrrr"))
    print()
    return results


# -- Speed ------------------------------------------------------------------------------------------


def at_horizon_scores(cv: Any, uni: Any, steps: int, names: list[str]) -> tuple[dict[str, fxcu.Score], Any]:
    """Score each model at the horizon date exactly as fxcu.backtest does; plus the ensemble re-chosen by fxcu's rules."""
    import numpy as np
    import polars as pl

    at_h = cv.filter(pl.col("ds") == pl.col("cutoff") + steps).sort("cutoff")
    cutoffs = at_h["cutoff"].to_numpy()
    last = np.exp(uni.join(at_h.select(pl.col("cutoff").alias("ds")), on="ds", how="semi").sort("ds")["y"].to_numpy())
    actual = np.exp(at_h["y"].to_numpy())
    naive_rmse = float(np.sqrt(np.mean((np.exp(at_h["Naive"].to_numpy()) - actual) ** 2)))
    scores = {}
    for name in names:
        bounds = {f"{side}-{lv}": np.exp(at_h[f"{name}-{side}-{lv}"].to_numpy()) for lv in fxcu.LEVELS for side in ("lo", "hi")}
        scores[name] = fxcu.score(np.exp(at_h[name].to_numpy()), actual, last, bounds, naive_rmse)
    rule, w, _, _ = fxcu._ensemble(names, at_h, cutoffs, steps, actual)
    logs = lambda suffix: np.column_stack([at_h[f"{n}{suffix}"].to_numpy() for n in names])  # noqa: E731
    bounds = {f"{side}-{lv}": np.exp(fxcu._combine(logs(f"-{side}-{lv}"), w)) for lv in fxcu.LEVELS for side in ("lo", "hi")}
    scores[fxcu.ENSEMBLE] = fxcu.score(np.exp(fxcu._combine(logs(""), w)), actual, last, bounds, naive_rmse)
    return scores, (rule, cutoffs)


def speed_one(usdclp: Any, copper: Any, horizon: str) -> dict[str, Any]:
    steps = fxcu.horizon_steps(fxcu.parse_horizon(horizon))
    uni, exog, _ = fxcu.model_frames(usdclp, copper, steps)
    names = [*fxcu.MODELS, fxcu.COPPER_MODEL]

    def run_fxcu() -> tuple[float, Any]:
        start = time.perf_counter()
        fc = fxcu.forecast(usdclp, copper, horizon)
        return time.perf_counter() - start, fc

    run_fxcu()  # warm-up: lazy imports, polars set-up, caches
    times = []
    for _ in range(FORECAST_RUNS - 1):
        t, fc = run_fxcu()
        times.append(t)

    start = time.perf_counter()
    cv_uni = fxcu.cross_validate(uni, fxcu._models(), steps, fxcu.WINDOWS, fxcu.STEP, refit=True)
    base_uni = time.perf_counter() - start
    start = time.perf_counter()
    cv_exog = fxcu.cross_validate(exog, fxcu._copper_models(), steps, fxcu.WINDOWS, fxcu.STEP, refit=True)
    base_exog = time.perf_counter() - start

    t, fc = run_fxcu()
    times.append(t)
    start = time.perf_counter()
    fxcu.forecast(usdclp, copper, horizon, backtest_result=fc.backtest)
    final_fit = time.perf_counter() - start

    refit_cv = cv_uni.join(cv_exog.drop("y"), on=["unique_id", "ds", "cutoff"], how="inner")
    refit_scores, (refit_rule, refit_cutoffs) = at_horizon_scores(refit_cv, uni, steps, names)
    bt = fc.backtest
    # The same scoring applied to fxcu's own refit=False predictions must reproduce bt (checks the helper).
    own_cv = fxcu.cross_validate(uni, fxcu._models(), steps, fxcu.WINDOWS, fxcu.STEP).join(
        fxcu.cross_validate(exog, fxcu._copper_models(), steps, fxcu.WINDOWS, fxcu.STEP).drop("y"), on=["unique_id", "ds", "cutoff"], how="inner"
    )
    own, (own_rule, own_cutoffs) = at_horizon_scores(own_cv, uni, steps, names)
    mismatch = [n for n in own if abs(own[n].rmse - bt.models[n].rmse) > 1e-6 or own[n].coverage_80 != bt.models[n].coverage_80]
    if mismatch or own_rule != bt.rule:
        raise RuntimeError(f"re-scoring fxcu's own cross-validation does not reproduce its backtest: {mismatch}, {own_rule} vs {bt.rule}")
    return {
        "horizon": horizon,
        "steps": steps,
        "rows": uni.height,
        "times": times,
        "final_fit": final_fit,
        "base_uni": base_uni,
        "base_exog": base_exog,
        "refit": refit_scores,
        "refit_rule": refit_rule,
        "same_origins": list(refit_cutoffs) == list(own_cutoffs),
        "bt": bt,
    }


def rss_child(horizon: str) -> None:
    """In a fresh process: import, load the data, take RSS; run fxcu.forecast once; print ru_maxrss (KiB)."""
    import polars  # noqa: F401
    import statsforecast  # noqa: F401
    from statsforecast.models import AutoARIMA  # noqa: F401

    usdclp, copper = real_usdclp(), real_copper()
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before_rss = _vm_rss_kib()
    fxcu.forecast(usdclp, copper, horizon)
    after_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"maxrss_before_kib": before_max, "rss_before_kib": before_rss, "maxrss_after_kib": after_max, "rss_after_kib": _vm_rss_kib()}))


def _vm_rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss(horizon: str) -> dict[str, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), "_rss", horizon]
    samples = []
    for _ in range(RSS_REPEATS):
        proc = subprocess.run(
            ["/bin/sh", "-c", '"$@"; exit $?', "sh", *argv],
            capture_output=True, text=True, check=True, env={**os.environ, "FXCU_SHARED_DATA": str(SHARED)},
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


def section_speed() -> None:
    usdclp, copper = real_usdclp(), real_copper()
    print("## Speed: `fxcu.forecast` vs statsforecast `cross_validation(refit=True)` at the same 60 origins\n")
    print(
        f"Both on the last {fxcu.HISTORY} rows from `fxcu.model_frames` (log prices), n_jobs=1. fxcu.forecast = its "
        f"{fxcu.WINDOWS}-origin backtest (models fitted once before the first origin, then `forward`ed; refit=False) "
        f"+ the final fit; median of {FORECAST_RUNS} after 1 warm-up (the third run after the baseline). Baseline = "
        f"`cross_validation(h=steps, n_windows={fxcu.WINDOWS}, step_size={fxcu.STEP}, level=[80, 95], refit=True)` "
        "for Naive, AutoETS, AutoARIMA, AutoTheta on the univariate frame plus AutoARIMA with `copper_lag` on the "
        "exog frame, run once.\n"
    )
    results = [speed_one(usdclp, copper, h) for h in SPEED_HORIZONS]
    rows = []
    for r in results:
        med = statistics.median(r["times"])
        base = r["base_uni"] + r["base_exog"]
        rows.append([
            f"{r['horizon']} ({r['steps']} steps)", f"{med:.2f}", f"[{min(r['times']):.2f}, {max(r['times']):.2f}]", f"{r['final_fit']:.2f}",
            f"{base:.1f}", f"{r['base_uni']:.1f} + {r['base_exog']:.1f}", f"**{med / base:.3f}**", met(med / base <= SPEED_TARGET),
        ])
    print(table(
        ["horizon", "fxcu.forecast median s", "[min, max] s", "final fit only s", "refit=True baseline s", "univariate + copper s", "ratio fxcu/baseline", f"≤ {SPEED_TARGET}"],
        rows, "lrlrrlrl",
    ))
    print()
    print("### What the refit schedule costs in accuracy (same origins, RMSE at the horizon date, CLP)\n")
    for r in results:
        bt, refit = r["bt"], r["refit"]
        print(f"**{r['horizon']}** — origins identical: {r['same_origins']}; fxcu rule {bt.rule}, refit=True rule {r['refit_rule']}.\n")
        rows = []
        for name in [*fxcu.MODELS, fxcu.COPPER_MODEL, fxcu.ENSEMBLE]:
            a, b = bt.models[name], refit[name]
            rows.append([
                name, f"{a.rmse:.2f}", f"{b.rmse:.2f}", signed((a.rmse / b.rmse - 1) * 100), f"{a.ratio:.4f}", f"{b.ratio:.4f}",
                f"{pct(a.coverage_80)} / {pct(b.coverage_80)}", f"{pct(a.coverage_95)} / {pct(b.coverage_95)}",
            ])
        print(table(
            ["model", "RMSE refit=False (fxcu)", "RMSE refit=True", "fxcu vs refit", "ratio to Naive, fxcu", "ratio to Naive, refit", "80% cov fxcu / refit", "95% cov fxcu / refit"],
            rows,
        ))
        print()
    print("### Peak memory of one `fxcu.forecast` (backtest + final fit) in a fresh process\n")
    rows = []
    for h in SPEED_HORIZONS:
        m = rss(h)
        rows.append([h, f"{m['before_mib']:.0f}", f"{m['peak_mib']:.0f}", f"{m['delta_mib']:.0f}", ", ".join(map(str, m["peaks"]))])
    print(table(["horizon", "RSS after imports + data MiB", "peak RSS (ru_maxrss) MiB", "delta MiB", "peaks of the runs MiB"], rows, "lrrrl"))
    print(
        f"\nMedian of {RSS_REPEATS} children started via /bin/sh. Each imports fxcu, polars and statsforecast, loads and "
        "cleans both CSVs, reads its RSS, runs `fxcu.forecast(usdclp, copper, h)` once, then reads ru_maxrss "
        "(statsforecast 2.x fits in its compiled extension, no numba JIT; repeating the forecast in one process "
        "does not raise the peak).\n"
    )


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
