#!/usr/bin/env python3
"""Issue 14 benchmarks: what Yahoo's browser-fingerprint transport costs; prints Markdown tables.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/bench_http.py import    # `import httpx_curl_cffi` in a fresh process, next to `import httpx`
    python docs/bench_http.py request   # one HG=F chart request against a local HTTPS server, chrome vs off
    python docs/bench_http.py all       # both

The local server is benchkit's (`benchkit.FakeSources` with a certificate from
`benchkit.make_tls_pair`), serving the real HG=F history (2000-2026, `benchkit.good_routes`) as a
Yahoo chart body. Timings are medians with the 25%-75% range over interleaved rounds, after one
uncounted round: compare the ratios, not the milliseconds, on a shared machine.
FXCU_BENCH_QUICK=1 cuts the rounds to a smoke test (its numbers mean nothing).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchkit  # noqa: E402  (the shared builders of the benches)

import fxcu  # noqa: E402  (after the sys.path change)

QUICK = os.environ.get("FXCU_BENCH_QUICK") == "1"
IMPORT_ROUNDS, REQUEST_ROUNDS = (2, 2) if QUICK else (15, 40)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """Median, 25th and 75th percentile."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return statistics.median(values), q[0], q[2]


def fmt(values: list[float], scale: float = 1000.0) -> str:
    med, lo, hi = quartiles(values)
    return f"{med * scale:.1f} | {lo * scale:.1f}–{hi * scale:.1f}"


def timed_import(module: str) -> float:
    """Seconds `import module` takes in a fresh interpreter that has already imported httpx (as fxcu has)."""
    code = f"import time, httpx\nt = time.perf_counter()\nimport {module}\nprint(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def bench_import() -> None:
    modules = {"httpx_curl_cffi (curl_cffi included)": "httpx_curl_cffi", "polars (reference)": "polars"}
    times: dict[str, list[float]] = {name: [] for name in modules}
    base: list[float] = []
    for round_ in range(IMPORT_ROUNDS + 1):
        for name, module in modules.items():
            seconds = timed_import(module)
            if round_:
                times[name].append(seconds)
        code = "import time\nt = time.perf_counter()\nimport httpx\nprint(time.perf_counter() - t)"
        seconds = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        if round_:
            base.append(seconds)
    print(f"\n**(a) Import cost**: {IMPORT_ROUNDS} interleaved rounds, each import in a fresh process.\n")
    print("| import | median ms | 25%–75% ms | ratio to `import httpx` |")
    print("|---|---:|---|---:|")
    print(f"| `import httpx` | {fmt(base)} | 1.00 |")
    for name, values in times.items():
        print(
            f"| `import {name}` (after httpx) | {fmt(values)} | {statistics.median(values) / statistics.median(base):.2f} |"
        )


def bench_request() -> None:
    folder = Path(tempfile.mkdtemp(prefix="fxcu-bench-http-"))
    cafile, context = benchkit.make_tls_pair(folder)
    os.environ["SSL_CERT_FILE"] = str(cafile)  # both transports trust the local certificate, as httpx does
    route = benchkit.good_routes()[benchkit.YAHOO_HG]
    params = {"interval": "1d", "range": "max"}
    times: dict[str, dict[str, list[float]]] = {mode: {"new": [], "warm": []} for mode in fxcu.IMPERSONATE}
    with benchkit.FakeSources({benchkit.YAHOO_HG: route}, tls=context) as api:
        url = f"{api.url}{benchkit.YAHOO_HG}"
        base = fxcu.Config(data_dir=folder, yahoo_url=api.url)
        configs = {mode: dataclasses.replace(base, impersonate=mode) for mode in fxcu.IMPERSONATE}
        warm = {mode: fxcu.make_client(config) for mode, config in configs.items()}
        for round_ in range(REQUEST_ROUNDS + 1):
            for mode, config in configs.items():
                started = time.perf_counter()
                with fxcu.make_client(config) as client:  # a new connection: TCP + TLS handshake + request
                    size = len(client.get(url, params=params).raise_for_status().content)
                new = time.perf_counter() - started
                started = time.perf_counter()
                warm[mode].get(url, params=params).raise_for_status()  # the connection kept from the last round
                if round_:
                    times[mode]["new"].append(new)
                    times[mode]["warm"].append(time.perf_counter() - started)
        for client in warm.values():
            client.close()
    print(f"\n**(b) One HG=F chart request** ({size / 1e3:.0f} kB body, 6399 daily bars) against a local HTTPS server")
    print(f"on 127.0.0.1: {REQUEST_ROUNDS} interleaved rounds, after one uncounted round (which loads curl_cffi).\n")
    print("| transport | connection | median ms | 25%–75% ms | ratio to off |")
    print("|---|---|---:|---|---:|")
    for kind in ("new", "warm"):
        off = statistics.median(times["off"][kind])
        for mode in ("off", "chrome"):
            label = "plain httpx (`off`)" if mode == "off" else "curl_cffi, Chrome fingerprint (`chrome`)"
            ratio = statistics.median(times[mode][kind]) / off
            print(f"| {label} | {'new client' if kind == 'new' else 'kept'} | {fmt(times[mode][kind])} | {ratio:.2f} |")


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else "all"
    print(
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; "
        f"curl_cffi {__import__('curl_cffi').__version__}, httpx {__import__('httpx').__version__}"
    )
    if what in {"import", "all"}:
        bench_import()
    if what in {"request", "all"}:
        bench_request()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
