#!/usr/bin/env python3
"""Benchmarks for fxcu on the real histories in ../shared/data; prints Markdown tables.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/benchmarks.py data        # parse + clean the full HG=F and CLP=X histories
    python docs/benchmarks.py help        # `python fxcu.py --help` next to `python -c "import mlflow"`
    python docs/benchmarks.py features    # the 11 copper features: fxcu (polars) next to pandas
    python docs/benchmarks.py all         # all of the above, plus the 2010-2024 correlation distribution

Data directory: ../shared/data relative to the repository root, or FXCU_SHARED_DATA.
Timings are medians (with the 25%-75% range) after a warm-up run: the numbers to compare are the
ratios, not the absolute milliseconds, on a shared machine. Memory is measured twice:
tracemalloc's peak (Python and numpy allocations only; polars allocates in Rust, invisible to it)
and the growth of ru_maxrss in a fresh subprocess that only loads its input and does the work once.
"""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fxcu  # noqa: E402  (after the sys.path change)

SHARED = Path(os.environ.get("FXCU_SHARED_DATA") or ROOT.parent / "shared" / "data")
HGF_CSV = "copper_hgf_daily_2000_2026.csv"
CLP_CSV = "usdclp_clpx_daily_2006_2024.csv"

DATA_RUNS, FEATURE_RUNS, HELP_RUNS, RSS_REPEATS = 25, 30, 7, 3
TOLERANCE = 1e-9  # relative, on the values both implementations give as non-null
MIB = 1024 * 1024


# -- Inputs: Yahoo chart bodies built from the real CSVs (stdlib only, no polars peak) -----------


def _body(symbol: str, tz: str, stamps: list[int], closes: list[float | None]) -> dict[str, Any]:
    meta = {"symbol": symbol, "exchangeTimezoneName": tz}
    result = {"meta": meta, "timestamp": stamps, "indicators": {"quote": [{"close": closes}]}}
    return {"chart": {"result": [result], "error": None}}


def _float(text: str) -> float | None:
    return float(text) if text not in ("", "null") else None


def hgf_body() -> dict[str, Any]:
    """The full HG=F history as a Yahoo chart body: each bar stamped at New York midnight of its date."""
    ny = ZoneInfo("America/New_York")
    stamps, closes = [], []
    with open(SHARED / HGF_CSV, newline="") as handle:
        for row in csv.DictReader(handle):
            day = date.fromisoformat(row["Date"])
            stamps.append(int(datetime(day.year, day.month, day.day, tzinfo=ny).timestamp()))
            closes.append(_float(row["Close"]))
    return _body("HG=F", "America/New_York", stamps, closes)


def clp_body() -> dict[str, Any]:
    """The full CLP=X history as a Yahoo chart body: the CSV's UTC stamps (London midnight), as fxcu_test does."""
    stamps, closes = [], []
    with open(SHARED / CLP_CSV, newline="") as handle:
        for row in csv.DictReader(handle):
            stamps.append(int(datetime.fromisoformat(row["Date"]).timestamp()))
            closes.append(_float(row["Close"]))
    return _body("CLP=X", "Europe/London", stamps, closes)


BODIES: dict[str, Callable[[], dict[str, Any]]] = {"HG=F": hgf_body, "CLP=X": clp_body}


def parse_and_clean(body: dict[str, Any]) -> Any:
    return fxcu.clean_prices(fxcu.parse_yahoo_chart(body))


def cleaned_inputs() -> tuple[Any, Any]:
    """Cleaned copper (USD/lb) and USD/CLP polars frames, through the same path as `fetch`."""
    return parse_and_clean(hgf_body()).frame, parse_and_clean(clp_body()).frame


# -- The 11 features with pandas ---------------------------------------------------------------


def pandas_features(copper: Any, usdclp: Any) -> Any:
    """The 11 copper features with pandas, following fxcu's definitions.

    `copper` and `usdclp` are pandas frames with `date`, `close`. Features are computed on
    copper's own calendar, then each USD/CLP date takes the row of the last copper date strictly
    before it; the 90-row correlation of daily log returns is computed on that aligned frame.
    """
    import numpy as np
    import pandas as pd

    c = copper[["date", "close"]].sort_values("date", kind="stable").reset_index(drop=True)
    x = c["close"]
    row = np.arange(len(c))
    own = pd.DataFrame({"copper_date": c["date"]})
    for n in (1, 5, 20):
        own[f"copper_returns_{n}d"] = np.log(x / x.shift(n))
    r1 = own["copper_returns_1d"]
    for n in (20, 60):
        own[f"copper_volatility_{n}d"] = r1.rolling(n, min_periods=n).std(ddof=1) * math.sqrt(252)
    sma20, sma50 = x.rolling(20, min_periods=20).mean(), x.rolling(50, min_periods=50).mean()
    own["copper_sma_20"], own["copper_sma_50"] = sma20, sma50
    gap = sma20 - sma50
    flat = gap.abs() <= 1e-9 * sma50.abs()  # same ulp guard as fxcu.trend_signal
    own["copper_trend_signal"] = np.sign(gap).where(~flat, 0.0).fillna(0.0).astype("int8")

    change = x.diff()

    def wilder(moves: pd.Series, n: int = 14) -> pd.Series:
        # Seed row n with the simple mean of changes 1..n, then y_t = y_{t-1} + (x_t - y_{t-1}) / n.
        seed = moves.rolling(n, min_periods=n).mean()
        seeded = pd.Series(np.where(row == n, seed, np.where(row > n, moves, np.nan)))
        return seeded.ewm(alpha=1 / n, adjust=False, ignore_na=True).mean()

    gain, loss = wilder(change.clip(lower=0)), wilder((-change).clip(lower=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where((gain == 0) & (loss == 0), 50.0, np.where(loss == 0, 100.0, 100 - 100 / (1 + gain / loss)))
    own["copper_rsi_14"] = pd.Series(value).where(row >= 14)

    mean, std = x.rolling(252, min_periods=252).mean(), x.rolling(252, min_periods=252).std(ddof=1)
    own["copper_price_normalized"] = ((x - mean) / std).where(std != 0, 0.0)

    left = usdclp[["date", "close"]].sort_values("date", kind="stable").reset_index(drop=True)
    joined = pd.merge_asof(
        left[["date"]], own, left_on="date", right_on="copper_date", direction="backward", allow_exact_matches=False
    )
    aligned = pd.merge_asof(
        left.rename(columns={"close": "usdclp"}),
        c.rename(columns={"date": "copper_date", "close": "copper"}),
        left_on="date",
        right_on="copper_date",
        direction="backward",
        allow_exact_matches=False,
    )
    ra = np.log(aligned["copper"] / aligned["copper"].shift(1))
    rb = np.log(aligned["usdclp"] / aligned["usdclp"].shift(1))
    joined["copper_usdclp_correlation_90d"] = ra.rolling(90, min_periods=90).corr(rb).to_numpy()
    return joined[["date", *fxcu.FEATURES]]


def compare(polars_frame: Any, pandas_frame: Any) -> dict[str, dict[str, float]]:
    """Per feature: rows, non-null rows, whether the null masks agree, max abs and max relative difference."""
    import numpy as np

    if polars_frame.height != len(pandas_frame):
        raise AssertionError(f"row counts differ: {polars_frame.height} vs {len(pandas_frame)}")
    pl_days = polars_frame[fxcu.DATE].to_numpy().astype("datetime64[D]")
    pd_days = pandas_frame["date"].to_numpy().astype("datetime64[D]")
    if not (pl_days == pd_days).all():
        raise AssertionError("dates differ")
    out = {}
    for name in fxcu.FEATURES:
        a = polars_frame[name].cast(float).to_numpy()
        b = pandas_frame[name].to_numpy(dtype=float)
        na, nb = np.isnan(a), np.isnan(b)
        both = ~na & ~nb
        diff = np.abs(a[both] - b[both])
        scale = np.maximum(np.abs(a[both]), np.abs(b[both]))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / scale)
        out[name] = {
            "rows": int(len(a)),
            "non_null": int(both.sum()),
            "same_nulls": bool((na == nb).all()),
            "max_abs": float(diff.max()) if diff.size else 0.0,
            "max_rel": float(rel.max()) if rel.size else 0.0,
        }
    return out


# -- Measuring ----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], runs: int, warmup: int = 1) -> list[float]:
    """Wall times in ms of `runs` calls after `warmup` unmeasured ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(times: list[float]) -> tuple[float, float, float]:
    q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return med, q1, q3


def traced_peak(fn: Callable[[], Any]) -> int:
    """tracemalloc's peak (bytes) during one call: Python objects and numpy buffers, not Rust allocations."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _vm_rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_child(kind: str, warm: bool) -> None:
    """Run in a fresh process: load the input, then do the work once; print ru_maxrss before and after (KiB).

    `warm` first does the same work on a small slice (30 bars, or 300 rows of features), so the
    delta leaves out the library's one-time set-up (polars' thread pool and the like).
    """
    if kind in BODIES:
        body = BODIES[kind]()
        import polars  # noqa: F401  (the import's own memory is not the work's)

        work: Callable[[], Any] = lambda: parse_and_clean(body)  # noqa: E731
        result = body["chart"]["result"][0]
        small = _body(
            kind,
            result["meta"]["exchangeTimezoneName"],
            result["timestamp"][:30],
            result["indicators"]["quote"][0]["close"][:30],
        )
        warmup: Callable[[], Any] = lambda: parse_and_clean(small)  # noqa: E731
    elif kind == "features-polars":
        copper, usdclp = cleaned_inputs()
        work = lambda: fxcu.copper_features(copper, usdclp)  # noqa: E731
        warmup = lambda: fxcu.copper_features(copper.tail(300), usdclp.tail(300))  # noqa: E731
    elif kind == "features-pandas":
        copper_pl, usdclp_pl = cleaned_inputs()
        copper, usdclp = copper_pl.to_pandas(), usdclp_pl.to_pandas()
        del copper_pl, usdclp_pl
        work = lambda: pandas_features(copper, usdclp)  # noqa: E731
        warmup = lambda: pandas_features(copper.tail(300), usdclp.tail(300))  # noqa: E731
    else:
        raise SystemExit(f"unknown rss kind {kind!r}")
    if warm:
        warmup()
    gc.collect()
    before, current = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _vm_rss_kib()
    out = work()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del out
    print(json.dumps({"maxrss_before_kib": before, "rss_before_kib": current, "maxrss_after_kib": after}))


def rss_delta(kind: str, warm: bool) -> dict[str, float]:
    """Median over fresh subprocesses of the ru_maxrss growth during the work (MiB), and the process peak.

    The child is started through /bin/sh, not directly: Linux carries a process's ru_maxrss over
    fork and exec, so a direct child of this (large) process would start with our peak as its own.
    """
    samples = []
    argv = [sys.executable, str(Path(__file__).resolve()), "_rss", kind, "warm" if warm else "cold"]
    for _ in range(RSS_REPEATS):
        proc = subprocess.run(
            ["/bin/sh", "-c", '"$@"; exit $?', "sh", *argv],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "FXCU_SHARED_DATA": str(SHARED)},
        )
        sample = json.loads(proc.stdout.strip().splitlines()[-1])
        if sample["maxrss_before_kib"] - sample["rss_before_kib"] > 4096:
            raise RuntimeError(f"child's ru_maxrss did not start at its own RSS: {sample}")
        samples.append(sample)
    return {
        "delta_mib": statistics.median((s["maxrss_after_kib"] - s["maxrss_before_kib"]) / 1024 for s in samples),
        "peak_mib": statistics.median(s["maxrss_after_kib"] / 1024 for s in samples),
    }


# -- Sections -------------------------------------------------------------------------------------


def machine() -> str:
    import pandas as pd
    import polars as pl

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; nproc {cpus}; Python {platform.python_version()}; "
        f"polars {pl.__version__}; pandas {pd.__version__}; {platform.machine()} {platform.system()}"
    )


def section_data() -> None:
    print("### Parse + clean the full histories: `fxcu.clean_prices(fxcu.parse_yahoo_chart(body))`\n")
    print(
        f"Median of {DATA_RUNS} runs after 1 warm-up (25%-75% in brackets); RSS: median of {RSS_REPEATS} fresh processes.\n"
    )
    print(
        "| series | bars in | rows out | removed | median ms | [25%, 75%] | tracemalloc peak MiB "
        "| ru_maxrss delta MiB, first call | ru_maxrss delta MiB, after 30-bar warm-up | child peak RSS MiB |"
    )
    print("|---|---:|---:|---|---:|---|---:|---:|---:|---:|")
    for symbol, build in BODIES.items():
        body = build()
        cleaned = parse_and_clean(body)
        removed = "; ".join(f"{len(days)} {reason}" for reason, days in cleaned.removed.items()) or "none"
        med, q1, q3 = summary(timed(lambda: parse_and_clean(body), DATA_RUNS))
        peak = traced_peak(lambda: parse_and_clean(body))
        cold, warm = rss_delta(symbol, False), rss_delta(symbol, True)
        bars = len(body["chart"]["result"][0]["timestamp"])
        print(
            f"| {symbol} | {bars} | {cleaned.frame.height} | {removed} | {med:.2f} | [{q1:.2f}, {q3:.2f}] | "
            f"{peak / MIB:.2f} | {cold['delta_mib']:.1f} | {warm['delta_mib']:.1f} | {cold['peak_mib']:.0f} |"
        )
    print(
        "\nChild: a fresh process that builds the body with the csv module, imports polars, takes ru_maxrss, "
        "parses + cleans once, takes ru_maxrss again. The first-call delta includes polars' one-time set-up "
        "(thread pool, allocator arenas); the warm-up column first runs the same call on 30 bars, so it is "
        "the full history's own cost. tracemalloc sees only Python objects, not polars' Rust buffers.\n"
    )


def section_help() -> None:
    commands = {
        "`python fxcu.py --help`": [sys.executable, str(ROOT / "fxcu.py"), "--help"],
        '`python -c "import mlflow"`': [sys.executable, "-c", "import mlflow"],
        "`python -c pass` (interpreter start-up)": [sys.executable, "-c", "pass"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(HELP_RUNS + 1):  # round 0 warms the page cache and is dropped
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
            if round_:
                times[name].append((time.perf_counter() - start) * 1000)
    base = statistics.median(times["`python fxcu.py --help`"])
    print(f"### Start-up: fresh subprocesses, interleaved, median of {HELP_RUNS} runs each (1 dropped warm-up round)\n")
    print("| command | median ms | min ms | max ms | ratio to `fxcu.py --help` |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.0f} | {min(values):.0f} | {max(values):.0f} | {med / base:.2f} |")
    print()


def section_features() -> tuple[Any, Any]:
    import pandas as pd  # noqa: F401  (loaded before timing)

    copper, usdclp = cleaned_inputs()
    copper_pd, usdclp_pd = copper.to_pandas(), usdclp.to_pandas()
    polars_out = fxcu.copper_features(copper, usdclp)
    pandas_out = pandas_features(copper_pd, usdclp_pd)
    checks = compare(polars_out, pandas_out)
    worst_rel = max(c["max_rel"] for c in checks.values())
    worst_abs = max(c["max_abs"] for c in checks.values())
    same_nulls = all(c["same_nulls"] for c in checks.values())
    agree = same_nulls and worst_rel <= TOLERANCE

    # Interleave the two so a noisy neighbour hits both alike.
    run_pl = lambda: fxcu.copper_features(copper, usdclp)  # noqa: E731
    run_pd = lambda: pandas_features(copper_pd, usdclp_pd)  # noqa: E731
    run_pl(), run_pd()
    t_pl, t_pd = [], []
    for _ in range(FEATURE_RUNS):
        for fn, sink in ((run_pl, t_pl), (run_pd, t_pd)):
            start = time.perf_counter()
            fn()
            sink.append((time.perf_counter() - start) * 1000)
    (m_pl, q1_pl, q3_pl), (m_pd, q1_pd, q3_pd) = summary(t_pl), summary(t_pd)
    peak_pl, peak_pd = traced_peak(run_pl), traced_peak(run_pd)
    cold_pl, warm_pl = rss_delta("features-polars", False), rss_delta("features-polars", True)
    cold_pd, warm_pd = rss_delta("features-pandas", False), rss_delta("features-pandas", True)

    print(
        f"### 11 features, full HG=F history ({copper.height} copper rows) on {usdclp.height} USD/CLP dates "
        f"({usdclp[fxcu.DATE].min()} .. {usdclp[fxcu.DATE].max()})\n"
    )
    print(
        f"Median of {FEATURE_RUNS} runs each after 1 warm-up, polars and pandas interleaved (25%-75% in brackets); "
        f"inputs already in each library's frame; RSS: median of {RSS_REPEATS} fresh processes.\n"
    )
    print(
        "| implementation | median ms | [25%, 75%] | tracemalloc peak MiB | ru_maxrss delta MiB, first call "
        "| ru_maxrss delta MiB, after 300-row warm-up | child peak RSS MiB |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    rows = (
        ("fxcu.copper_features (polars)", m_pl, q1_pl, q3_pl, peak_pl, cold_pl, warm_pl),
        ("pandas (docs/benchmarks.py)", m_pd, q1_pd, q3_pd, peak_pd, cold_pd, warm_pd),
    )
    for label, med, q1, q3, peak, cold, warm in rows:
        print(
            f"| {label} | {med:.2f} | [{q1:.2f}, {q3:.2f}] | {peak / MIB:.2f} | {cold['delta_mib']:.1f} "
            f"| {warm['delta_mib']:.1f} | {cold['peak_mib']:.0f} |"
        )
    print(f"\n**Ratio pandas / polars (medians): {m_pd / m_pl:.2f}x**\n")
    print(
        "Child: a fresh process that loads both cleaned histories (and converts them to pandas for the pandas "
        "row), takes ru_maxrss, computes the features once, takes ru_maxrss again; the peak RSS column is "
        "mostly the imports (pandas + pyarrow for the pandas row).\n"
    )
    print(
        f"Same result: {'yes' if agree else 'NO'}: null masks {'identical' if same_nulls else 'DIFFER'}; "
        f"max relative difference {worst_rel:.2e} (tolerance {TOLERANCE:g}), max absolute difference {worst_abs:.2e}.\n"
    )
    print("| feature | non-null rows | max abs diff | max rel diff |")
    print("|---|---:|---:|---:|")
    for name, c in checks.items():
        print(f"| {name} | {c['non_null']} | {c['max_abs']:.2e} | {c['max_rel']:.2e} |")
    print()
    if not agree:
        raise SystemExit("pandas and polars features disagree: the timing comparison is not apples-to-apples")
    return polars_out, usdclp


def section_correlation(features: Any | None = None) -> None:
    import numpy as np
    import polars as pl

    if features is None:
        copper, usdclp = cleaned_inputs()
        features = fxcu.copper_features(copper, usdclp)
    name = "copper_usdclp_correlation_90d"
    window = features.filter(pl.col(fxcu.DATE).dt.year().is_between(2010, 2024) & pl.col(name).is_not_null())
    values = window[name].to_numpy()
    qs = np.percentile(values, [0, 25, 50, 75, 100])
    first, last = window[fxcu.DATE].min(), window[fxcu.DATE].max()
    print(f"### {name}, {first} .. {last} ({len(values)} USD/CLP dates; numpy linear percentiles)\n")
    print("| min | 25% | median | 75% | max | share < 0 |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(" | ".join(["", *(f"{q:+.3f}" for q in qs), f"{(values < 0).mean():.0%}", ""]).strip())
    print("\n| year | dates | median | min | max |")
    print("|---|---:|---:|---:|---:|")
    yearly = (
        window.group_by(pl.col(fxcu.DATE).dt.year().alias("year"))
        .agg(
            pl.len().alias("n"),
            pl.col(name).median().alias("median"),
            pl.col(name).min().alias("min"),
            pl.col(name).max().alias("max"),
        )
        .sort("year")
    )
    for r in yearly.iter_rows(named=True):
        print(f"| {r['year']} | {r['n']} | {r['median']:+.3f} | {r['min']:+.3f} | {r['max']:+.3f} |")
    print()


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    if what == "_rss" and len(argv) == 3:
        rss_child(argv[1], argv[2] == "warm")
        return 0
    if what not in {"data", "help", "features", "all"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    missing = [name for name in (HGF_CSV, CLP_CSV) if not (SHARED / name).is_file()]
    if missing and what != "help":
        print(f"benchmarks: {', '.join(missing)} not found in {SHARED} (set FXCU_SHARED_DATA)", file=sys.stderr)
        return 2
    print(f"_{machine()}; data {SHARED}_\n")
    if what in ("data", "all"):
        section_data()
    if what in ("help", "all"):
        section_help()
    if what in ("features", "all"):
        features, _ = section_features()
        if what == "all":
            section_correlation(features)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
