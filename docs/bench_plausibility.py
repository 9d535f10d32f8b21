#!/usr/bin/env python3
"""Issue 10 figures: the jump limits measured on the real histories, and what the plausibility check costs.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/bench_plausibility.py

Data: ../shared/data relative to the repository root, or FXCU_SHARED_DATA, read through the test
benches' shared builders (`benchkit.real_usdclp`, `real_copper`: cleaned as fxcu cleans a fetch).
Timings are medians of 30 calls in one process, shown as ratios to `clean_prices` on the same data.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchkit as t

import fxcu


def moves() -> None:
    print(
        "| series | rows | worst 1-day abs log move (date) | worst k-day move / sqrt(k), k = 1, 2, 5, 10, 20, 60, 250 | 99.9th pct 1-day | limit `jump` |"
    )
    print("|---|---:|---|---|---:|---:|")
    for name, frame, rules in (
        ("USD/CLP (CLP=X)", t.real_usdclp(), fxcu.USDCLP_RULES),
        ("copper (HG=F)", t.real_copper(), fxcu.COPPER_RULES),
    ):
        x = frame[fxcu.CLOSE].log().to_numpy()
        one = np.abs(np.diff(x))
        worst_day = frame[fxcu.DATE][int(np.argmax(one)) + 1]
        scaled = [np.abs(x[k:] - x[:-k]).max() / np.sqrt(k) for k in (1, 2, 5, 10, 20, 60, 250)]
        print(
            f"| {name} | {frame.height} | {one.max():.4f} ({worst_day}) | {', '.join(f'{v:.3f}' for v in scaled)} "
            f"| {np.quantile(one, 0.999):.4f} | {rules.jump} ({rules.jump / one.max():.2f}x the worst) |"
        )


def cost() -> None:
    raw = fxcu.parse_yahoo_chart(t.real_usdclp_payload())
    clean = fxcu.clean_prices(raw).frame
    tail_raw = fxcu.parse_yahoo_chart(t.clpx_tail_payload())
    tail_clean = fxcu.clean_prices(tail_raw).frame
    history, now = t.cached_usdclp(), datetime(2024, 7, 16, 12, tzinfo=UTC)

    def median(fn, n: int = 30) -> float:
        fn()
        runs = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    base = median(lambda: fxcu.clean_prices(raw))
    rows = [
        (f"`clean_prices`, full CLP=X answer ({raw.height} bars): the reference", base),
        (
            "`implausible`, full answer, no cache (first fetch)",
            median(lambda: fxcu.implausible(raw, clean, rules=fxcu.USDCLP_RULES, now=now)),
        ),
        (
            f"`implausible`, 14-bar incremental answer against a {history.height}-row cache",
            median(lambda: fxcu.implausible(tail_raw, tail_clean, rules=fxcu.USDCLP_RULES, now=now, history=history)),
        ),
        (
            f"`repair` on reading a {clean.height}-row cache",
            median(lambda: fxcu.repair(clean, rules=fxcu.USDCLP_RULES, now=now)),
        ),
    ]
    print("\n| step | median ms | ratio to cleaning |")
    print("|---|---:|---:|")
    for what, seconds in rows:
        print(f"| {what} | {seconds * 1e3:.2f} | {seconds / base:.3f} |")


if __name__ == "__main__":
    moves()
    cost()
