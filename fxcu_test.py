"""Tests for fxcu: the shared builders, then one section per banner of fxcu.py, in the module's order.

The HTTP section ends with the cassettes, the CLI section with the fault matrix (docs/RELIABILITY.md).

Offline: cassettes, httpx.MockTransport and local servers on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email
import email.policy
import errno
import functools
import glob
import gzip
import hashlib
import http.server
import io
import ipaddress
import json
import logging
import math
import multiprocessing
import os
import pickle
import random
import re
import shutil
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from statistics import NormalDist
from types import SimpleNamespace

import httpx
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import fxcu

HERE = Path(__file__).resolve().parent
SHARED = HERE / "data" / "real"  # real public data and recorded bodies, copied with their provenance (PROVENANCE.md)
CASSETTES = HERE / "cassettes"
FRED_KEY = "abcdefghijklmnopqrstuvwxyz012345"  # fake, 32 lower-case alphanumerics like a real key
CLP_END = datetime(2024, 7, 16, 12, tzinfo=UTC)  # the day after the last real CLP=X bar


# -- Builders --------------------------------------------------------------------------


def make_prices(n: int, *, start: date = date(2020, 1, 1), seed: int = 0, level: float = 800.0) -> pl.DataFrame:
    """A weekday random-walk price frame with `date`, `close`."""
    rng = np.random.default_rng(seed)
    days = pl.date_range(start, start + timedelta(days=n * 2), eager=True)
    days = days.filter(days.dt.weekday() < 6).head(n)
    closes = level * np.exp(np.cumsum(rng.normal(0, 0.006, n)))
    return pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: closes})


def scaled_after(frame: pl.DataFrame, origin: date, factor, *, inclusive: bool = False) -> pl.DataFrame:
    """Every close after `origin` (from it, when inclusive) times `factor`: a look-ahead probe."""
    later = pl.col(fxcu.DATE) >= origin if inclusive else pl.col(fxcu.DATE) > origin
    scaled = pl.when(later).then(pl.col(fxcu.CLOSE) * factor).otherwise(pl.col(fxcu.CLOSE))
    return frame.with_columns(scaled.alias(fxcu.CLOSE))


def make_config(tmp_path: Path, **changes) -> fxcu.Config:
    base = fxcu.Config(
        data_dir=tmp_path / "data",
        yahoo_url="https://query1.finance.yahoo.com",
        fred_url="https://api.stlouisfed.org",
        mindicador_url="https://mindicador.cl",
        fred_api_key=FRED_KEY,
        max_age_days=10,
        lock_timeout=5,
    )
    return dataclasses.replace(base, **changes)


def without_sleep(fetch_json, slept: list[float]):
    """Swap a retried call's sleep (tenacity's `Retrying.sleep`) for one that records the seconds asked for."""
    fetch_json.retry.sleep = lambda seconds: slept.append(float(seconds))
    return fetch_json


def no_wait_fetch(config: fxcu.Config, *, deadline: float | None = None, slept: list[float] | None = None):
    """`make_fetch_json` as production builds it, with tenacity's sleep hook recording each wait instead of sleeping."""
    return without_sleep(fxcu.make_fetch_json(config, deadline=deadline), [] if slept is None else slept)


def source_named(series: str, name: str) -> fxcu.Source:
    """The description of `series`' source called `name`, as `fxcu.SOURCES` holds it."""
    (source,) = [s for s in fxcu.SOURCES[series] if s.name == name]
    return source


def load_json(*parts: str) -> dict:
    return json.loads((SHARED.joinpath(*parts)).read_text())


def yahoo_body(name: str) -> dict:
    wrapped = load_json("yahoo", name)
    return wrapped["response"]["bodyJson"]


def real_usdclp_payload() -> dict:
    """The real CLP=X history (data/real) in the shape of a Yahoo chart body."""
    raw = pl.read_csv(SHARED / "usdclp_clpx_daily_2006_2024.csv")
    stamps = raw["Date"].str.to_datetime("%Y-%m-%d %H:%M:%S%z").dt.epoch("s").to_list()
    quote = {"close": raw["Close"].to_list(), "open": raw["Open"].to_list()}
    meta = {"symbol": "CLP=X", "currency": "CLP", "exchangeTimezoneName": "Europe/London"}
    return {"chart": {"result": [{"meta": meta, "timestamp": stamps, "indicators": {"quote": [quote]}}], "error": None}}


def real_copper() -> pl.DataFrame:
    """The real HG=F history (USD/lb), cleaned."""
    raw = pl.read_csv(SHARED / "copper_hgf_daily_2000_2026.csv")
    frame = raw.select(pl.col("Date").str.to_date().alias(fxcu.DATE), pl.col("Close").alias(fxcu.CLOSE))
    return fxcu.clean_prices(frame).frame


def real_usdclp() -> pl.DataFrame:
    return fxcu.clean_prices(fxcu.parse_yahoo_chart(real_usdclp_payload())).frame


def mock_client(handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler), headers={"User-Agent": fxcu.USER_AGENT})


def chart_payload(
    frame: pl.DataFrame, tz: str = "America/New_York", symbol: str = "HG=F", currency: str = "USD"
) -> dict:
    """A Yahoo chart body (HG=F unless told) for a frame of New York (or London) dates, stamped at local midnight."""
    stamps = (
        frame[fxcu.DATE]
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone(tz)
        .dt.convert_time_zone("UTC")
        .dt.epoch("s")
        .to_list()
    )
    meta = {"symbol": symbol, "currency": currency, "exchangeTimezoneName": tz}
    quote = {"close": frame[fxcu.CLOSE].to_list()}
    return {"chart": {"result": [{"meta": meta, "timestamp": stamps, "indicators": {"quote": [quote]}}], "error": None}}


def provenance(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    return fxcu.with_provenance(frame, source, datetime(2024, 1, 1, tzinfo=UTC))


NOW = datetime(2024, 1, 10, tzinfo=UTC)
fresh = make_prices(5, start=date(2024, 1, 3))
stale = make_prices(5, start=date(2023, 6, 1))

# The hostile answers are the real CLP=X bars 2024-06-26 .. 2024-07-15 (data/real) in Yahoo's
# chart shape, changed one way each; the cached history is the real one up to 2024-07-04.

CACHE_END = date(2024, 7, 4)  # the real CLP=X file has no 2024-07-05
FETCH_DAY = datetime(2024, 7, 16, 12, tzinfo=UTC)


@functools.cache
def clpx_tail_json() -> str:
    """The last 14 real CLP=X bars (2024-06-26 .. 2024-07-15) as a Yahoo chart body."""
    body = real_usdclp_payload()
    result = body["chart"]["result"][0]
    result["timestamp"] = result["timestamp"][-14:]
    result["indicators"]["quote"][0] = {k: v[-14:] for k, v in result["indicators"]["quote"][0].items()}
    return json.dumps(body)


def hostile_chart(mode: str) -> dict:
    """A CLP=X chart body gone wrong the way `mode` says.

    json.dumps writes `Infinity` as Yahoo's JSON would carry it.
    """
    if mode == "copper-under-clp":  # the real HG=F bars of the same days, with HG=F's meta
        return chart_payload(real_copper().filter(pl.col(fxcu.DATE).is_between(date(2024, 6, 26), date(2024, 7, 15))))
    body = json.loads(clpx_tail_json())
    result = body["chart"]["result"][0]
    stamps, closes = result["timestamp"], result["indicators"]["quote"][0]["close"]
    if mode == "1e308":
        closes[-1] = 1e308
    elif mode == "infinity":
        closes[-1] = math.inf
    elif mode == "last-x10":
        closes[-1] *= 10
    elif mode == "last-three-1.0":
        closes[-3:] = [1.0, 1.0, 1.0]
    elif mode == "last+50%":
        closes[-1] *= 1.5
    elif mode == "duplicated+50%":
        result["timestamp"] = stamps + stamps
        result["indicators"]["quote"][0] = {"close": closes + [c * 1.5 for c in closes]}
    elif mode == "dated-2099":
        stamps[-1] = int(datetime(2099, 1, 5, 23, tzinfo=UTC).timestamp())
    elif mode == "year-33658":
        stamps[-1] = 10**12  # 33658-09-27
    elif mode == "negative-year":
        stamps[-1] = -62201779200  # -0002-11-26
    elif mode != "good":
        raise ValueError(mode)
    return body


def walk(n: int, level: float, moves: list[float], start: date = date(2024, 1, 1)) -> pl.DataFrame:
    days = [d for d in (start + timedelta(days=k) for k in range(3 * n)) if d.weekday() < 5][:n]
    return pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: level * np.exp(np.cumsum([0.0, *moves[: n - 1]]))})


# Yahoo's answers that ask for a cookie and crumb: the 401 body is the one public logs quote verbatim,
# the 429 body is the 19-byte text of data/real/yahoo/ERRORS_AND_429.md.
INVALID_CRUMB = '{"finance":{"result":null,"error":{"code":"Unauthorized","description":"Invalid Crumb"}}}'


@pytest.fixture
def vcr_config():
    # record mode: --record-mode=none in pyproject; a re-record keeps no key, crumb or cookie
    return {"filter_query_parameters": ["api_key", "crumb"], "filter_headers": ["cookie"]}


@pytest.fixture
def vcr_cassette_dir():
    return str(CASSETTES)


def counting(handler):
    calls = []

    def wrapped(request):
        calls.append(request)
        return handler(request)

    return wrapped, calls


def _hold_lock(path, ready, release):
    with fxcu.file_lock(Path(path), timeout=5):
        ready.set()
        release.wait(20)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """One MLflow SQLite database, migrated once (about 1.5 s) and copied by each test."""
    folder = tmp_path_factory.mktemp("mlflow-template")
    config = fxcu.Config(data_dir=folder)
    fxcu.mlflow_client(fxcu.tracking_store(config, {})).search_experiments()
    return folder / "mlflow" / "mlflow.db"


@pytest.fixture
def data_dir(tmp_path, migrated_db) -> Path:
    """A data dir with the real warehouse (CLP=X 2006-2024, HG=F to 2024-07-15) and a migrated MLflow database."""
    folder = tmp_path / "data"
    write_real_warehouse(folder)
    (folder / "mlflow").mkdir(parents=True)
    shutil.copy(migrated_db, folder / "mlflow" / "mlflow.db")
    return folder


def write_real_warehouse(data_dir: Path) -> None:
    fetched = datetime(2024, 7, 16, tzinfo=UTC)
    fxcu.write_parquet_atomic(
        provenance(real_usdclp(), "yahoo").with_columns(pl.lit(fetched).alias(fxcu.FETCHED_AT)),
        data_dir / "warehouse" / fxcu.USDCLP_CACHE,
    )
    copper = real_copper().filter(pl.col(fxcu.DATE) <= date(2024, 7, 15))
    fxcu.write_parquet_atomic(provenance(copper, "yahoo"), data_dir / "warehouse" / fxcu.COPPER_CACHE)


@pytest.fixture(scope="module")
def real_forecast_7d():
    return fxcu.forecast(real_usdclp(), real_copper(), "7d")


@pytest.fixture(scope="session")
def model_memo() -> dict:
    """Backtests, ranges and forecasts by their inputs, kept for the whole session (see `shared_models`)."""
    return {}


def frame_key(frame: pl.DataFrame | None) -> tuple | None:
    """A frame's identity by content: columns and a hash of every row."""
    return None if frame is None else (tuple(frame.columns), frame.height, hash(tuple(frame.hash_rows().to_list())))


@pytest.fixture
def shared_models(monkeypatch, model_memo):
    """In-process runs on the same inputs reuse one backtest, range backtest and forecast (about 8 s each).

    For tests of what a run does around the models (writes, tracking, email, faults): each result is
    fxcu's own, computed by the real function the first time its exact inputs (frames by content,
    horizons, options; the forecast's backtests by identity, held in the memo) are seen.
    """
    real = {name: getattr(fxcu, name) for name in ("backtest_all", "density_backtest_all", "forecast_all")}

    def memoized(name: str):
        def call(usdclp, copper=None, horizons=tuple(fxcu.HORIZONS), *args, **kwargs):
            given = tuple((k, tuple(map(id, v.values())) if isinstance(v, dict) else v) for k, v in kwargs.items())
            key = (name, frame_key(usdclp), frame_key(copper), tuple(horizons), args, given)
            if key not in model_memo:  # the kwargs are kept too, so the ids in the key stay unique
                model_memo[key] = (real[name](usdclp, copper, horizons, *args, **kwargs), kwargs)
            return model_memo[key][0]

        return call

    for name in real:
        monkeypatch.setattr(fxcu, name, memoized(name))


def run_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {"FXCU_DATA_DIR": str(data_dir), "FXCU_TRACKING_TIMEOUT": "30", **extra}


def read_runs(data_dir: Path, horizon: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"forecaster_{horizon}")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, migrated_db):
    """`fxcu run 7d --offline` once on the real warehouse, started from an unrelated working directory."""
    folder = tmp_path_factory.mktemp("run") / "data"
    write_real_warehouse(folder)
    (folder / "mlflow").mkdir(parents=True)
    shutil.copy(migrated_db, folder / "mlflow" / "mlflow.db")
    elsewhere = tmp_path_factory.mktemp("cwd")
    result = subprocess.run(
        [sys.executable, str(HERE / "fxcu.py"), "run", "7d", "--offline", "--json"],
        cwd=elsewhere,
        env={**os.environ, **run_env(folder), "FRED_API_KEY": FRED_KEY},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return folder, elsewhere, result


def record(horizon: str, rmse: float, *, degraded: str = "none", forecast: float = 900.0) -> fxcu.RunRecord:
    metrics = {
        f"{horizon}_rmse": rmse,
        f"{horizon}_ratio_to_naive": rmse / 20,
        "Naive_rmse": 20.0,
        f"{horizon}_coverage_80": 0.8,
        f"{horizon}_coverage_95": 0.95,
    }
    metrics |= {"forecast": forecast, "forecast_lo_80": forecast - 12.5, "forecast_hi_80": forecast + 12.5}
    params = {
        "horizon": horizon,
        "models": "Naive",
        "usdclp_source": "yahoo",
        "copper_source": "yahoo",
        "copper_frequency": "daily",
    }
    params |= {"data_last_date": "2026-01-19", "target_date": "2026-01-26"}
    tags = {
        "fxcu.status": "ok" if degraded == "none" else "degraded",
        "fxcu.degraded": degraded,
        "fxcu.served_models": "Naive",
    }
    return fxcu.RunRecord(horizon, f"{horizon} · data 2026-01-19", params, metrics, tags, ())


def stored(
    horizon: str, start_s: int, *, forecast: float | None = None, status: str = "FINISHED", **metrics: float
) -> fxcu.StoredRun:
    extra = {} if forecast is None else {"forecast": forecast}
    return fxcu.StoredRun(
        f"r{start_s}", horizon, "", status, start_s * 1000, None, {"models": "Naive,AutoETS"}, {**metrics, **extra}, {}
    )


def free_port() -> int:
    """A port free now, for a server a child process binds (another process could take it first: `serve_on_a_port`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_on_a_port(start: Callable[[int], subprocess.Popen], tries: int = 3) -> tuple[subprocess.Popen, str]:
    """Start the child server `start(port)` on a port free now and wait until it answers /health.

    A child cannot be handed our bound socket, so a clash (another process bound the port between
    `free_port` and the child) is retried on a new port: the child exits, and the next try starts.
    """
    for _ in range(tries):
        port = free_port()
        server = start(port)
        url = f"http://127.0.0.1:{port}"
        if wait_healthy(url, server):
            return server, url
        server.wait(20)  # it exited without answering: the port was taken
    raise AssertionError(f"no server answered in {tries} tries (exit code {server.poll()})")


@functools.cache
def refused_port() -> int:
    """A port that refuses connections while the tests run: bound by this process and never listening,
    so no other test (or pytest-xdist worker) can start a server on it."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    REFUSING.append(held)
    return held.getsockname()[1]


REFUSING: list[socket.socket] = []  # kept open for the whole session


def artifact_file(folder: Path) -> Path:
    path = folder / "forecast_7d.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# a report\n")
    return path


@pytest.fixture(scope="module")
def real_bundle():
    """The real CLP=X history and HG=F copper up to its last date, 2024-07-15, as a run on 2024-07-16 saw them."""
    usdclp, copper = real_usdclp(), real_copper().filter(pl.col(fxcu.DATE) <= date(2024, 7, 15))
    return fxcu.Bundle(usdclp, copper, fxcu.copper_features(copper, usdclp), {"usdclp": "yahoo", "copper": "yahoo"})


def assert_renders(message, horizons: list[str]) -> None:
    """multipart/alternative: text, then HTML related to one inline PNG per horizon, each referenced by cid:."""

    assert message.get_content_type() == "multipart/alternative"
    text, related = message.get_payload()
    assert text.get_content_type() == "text/plain" and related.get_content_type() == "multipart/related"
    html, *images = related.get_payload()
    assert html.get_content_type() == "text/html" and [i.get_content_type() for i in images] == ["image/png"] * len(
        horizons
    )
    body = html.get_content()
    for horizon, image in zip(horizons, images, strict=True):
        assert image.get_filename() == f"usdclp_{horizon}.png" and image.get_content().startswith(b"\x89PNG")
        assert f'src="cid:{image["Content-ID"].strip("<>")}"' in body
    assert "cid:" not in text.get_content() and "(chart in the HTML version of this email)" in text.get_content()
    assert "<table" in body and "<th " in body and "**" not in body  # Markdown rendered, not pasted
    assert parsedate_to_datetime(message["Date"]).utcoffset() in (timedelta(hours=-3), timedelta(hours=-4))
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", message["Message-ID"])


def bracher_wis(y: float, point: float, bounds: dict[int, tuple[float, float]]) -> float:
    """WIS written out from Bracher et al. (2021), eq. 2: (|y - m| / 2 + sum alpha_k / 2 * IS_alpha_k) / (K + 1/2)."""
    total = 0.5 * abs(y - point)
    for level, (lo, hi) in bounds.items():
        alpha = 1 - level / 100
        interval = (hi - lo) + 2 / alpha * max(lo - y, 0) + 2 / alpha * max(y - hi, 0)
        total += alpha / 2 * interval
    return total / (len(bounds) + 0.5)


def ledger_row(
    origin: date,
    target: date,
    *,
    horizon: str = "7d",
    kind: str = "live",
    forecast: float = 800.0,
    last: float = 800.0,
    half80: float = 10.0,
    half95: float = 16.0,
    rw_half80: float = 10.0,
    rw_half95: float = 16.0,
    ratio: float = 1.0,
    **extra,
) -> dict:
    """A served forecast as `fxcu.ledger_entry` records it: symmetric ranges around the point and the last close."""
    return {
        "horizon": horizon,
        "origin": origin,
        "target": target,
        "kind": kind,
        "last_close": last,
        "forecast": forecast,
        "lo_80": forecast - half80,
        "hi_80": forecast + half80,
        "lo_95": forecast - half95,
        "hi_95": forecast + half95,
        "rw_lo_80": last - rw_half80,
        "rw_hi_80": last + rw_half80,
        "rw_lo_95": last - rw_half95,
        "rw_hi_95": last + rw_half95,
        "point_model": "Naive",
        "interval_model": "Naive",
        "sources": "copper=yahoo,usdclp=yahoo",
        "degraded": "",
        "run_id": None,
        "recorded_at": datetime(2024, 1, 1, tzinfo=UTC),
        "backtest_ratio": ratio,
        "backtest_coverage_80": 0.8,
        "backtest_coverage_95": 0.95,
        "backtest_origins": 60,
        **extra,
    }


def prices_on(closes: dict[date, float]) -> pl.DataFrame:
    return pl.DataFrame(
        {fxcu.DATE: list(closes), fxcu.CLOSE: list(closes.values())},
        schema={fxcu.DATE: pl.Date, fxcu.CLOSE: pl.Float64},
    )


def synthetic_ledger(
    n: int,
    *,
    z80: float,
    z95: float,
    served_scale: float = 1.0,
    ratio: float = 1.0,
    seed: int = 0,
    start: date = date(2023, 1, 2),
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """n daily 7d forecasts and the closes on their targets: the served error is sigma*u, the random walk's sigma*v.

    With z80/z95 the normal quantiles (1.2816, 1.96) the ranges are calibrated by construction. Every row
    is scored here, by hand (`scored_by_hand`), not by `score_ledger`: the fixtures of `check_track`,
    `track_stats` and `track_perf` hold scores fxcu did not compute.
    """
    rng = np.random.default_rng(seed)
    sigma, rows, closes = 10.0, [], {}
    origins = [d for d in (start + timedelta(days=k) for k in range(n * 2)) if d.weekday() < 5][:n]
    for origin in origins:
        target = origin + timedelta(days=7)
        y = 800 + rng.normal(0, 30)
        point, last = y + served_scale * sigma * rng.normal(), y + sigma * rng.normal()
        closes[target] = y
        row = ledger_row(
            origin,
            target,
            forecast=point,
            last=last,
            half80=z80 * sigma * served_scale,
            half95=z95 * sigma * served_scale,
            rw_half80=1.2816 * sigma,
            rw_half95=1.96 * sigma,
            ratio=ratio,
        )
        rows.append(row | scored_by_hand(row, target, y))
    prices = prices_on(dict(sorted(closes.items())))
    return fxcu.upsert_ledger(fxcu.empty_ledger(), rows), prices


def scored_by_hand(row: dict, actual_date: date, y: float) -> dict:
    """The score columns of a ledger row whose target closed at `y` on `actual_date`, each written out here."""
    out: dict = {"actual_date": actual_date, "actual": y}
    for p, point in (("", row["forecast"]), ("rw_", row["last_close"])):
        bounds = {lv: (row[f"{p}lo_{lv}"], row[f"{p}hi_{lv}"]) for lv in (80, 95)}
        out[f"{p}error"] = point - y
        out[f"{p}abs_error"] = abs(point - y)
        out[f"{p}pct_error"] = (point - y) / y * 100
        out |= {f"{p}hit_{lv}": lo <= y <= hi for lv, (lo, hi) in bounds.items()}
        out[f"{p}wis"] = bracher_wis(y, point, bounds)
    # PIT: the served Gaussian's CDF at the close, in log price; a row without its scale takes its 95% width's
    scale = row.get("scale") or math.log(row["hi_95"] / row["lo_95"]) / (2 * NormalDist().inv_cdf(0.975))
    out["pit"] = NormalDist().cdf(math.log(y / row["forecast"]) / scale)
    return out


class SMTPServer:
    """A minimal real SMTP server on 127.0.0.1: STARTTLS (with `tls`, a ssl server context) and AUTH PLAIN.

    Stores each accepted message and every command verb with whether TLS was on when it came.
    """

    def __init__(self, tls=None, implicit=False, wait=30):
        self.messages: list[bytes] = []
        self.verbs: list[tuple[str, bool]] = []
        self.tls, self.implicit = tls, implicit
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(wait)  # seconds to wait for the client: a whole `run all` comes first
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        secure = False
        try:
            if self.implicit:  # port 465: TLS before the greeting
                conn, secure = self.tls.wrap_socket(conn, server_side=True), True
        except OSError:
            return
        reader = conn.makefile("rb")
        conn.sendall(b"220 localhost test SMTP\r\n")
        try:
            while line := reader.readline():
                verb = line[:8].split()[0].upper().decode() if line.strip() else ""
                self.verbs.append((verb, secure))
                if verb in ("EHLO", "HELO"):
                    offers = [] if secure or not self.tls or self.implicit else ["250-STARTTLS"]
                    conn.sendall(("\r\n".join(["250-localhost", *offers, "250 AUTH PLAIN"]) + "\r\n").encode())
                elif verb == "STARTTLS" and self.tls:
                    conn.sendall(b"220 ready for TLS\r\n")
                    conn = self.tls.wrap_socket(conn, server_side=True)
                    reader, secure = conn.makefile("rb"), True
                elif verb == "AUTH":
                    conn.sendall(b"235 accepted\r\n")
                elif verb == "DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    data = b""
                    while (chunk := reader.readline()) != b".\r\n":
                        data += chunk
                    self.messages.append(data)
                    conn.sendall(b"250 queued\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:  # the client gave up (a refused certificate)
            return
        finally:
            conn.close()


def make_tls_pair(folder: Path):
    """Write a self-signed certificate for 127.0.0.1 into `folder`; return its path and a server context using it."""

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fxcu test SMTP")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return folder / "cert.pem", context


YAHOO_CLP, YAHOO_HG = "/v8/finance/chart/CLP=X", "/v8/finance/chart/HG=F"
MINDICADOR, FRED = "/api/dolar", "/fred/series/observations"
LOG_LINE = re.compile(r"^(\S+ \S+ )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")  # fxcu's and MLflow's log formats


@dataclasses.dataclass(frozen=True)
class Reply:
    """One scripted answer: status, body (text, bytes or JSON), content type, delay, echo of the request line."""

    status: int = 200
    body: str | bytes | dict = b""
    content_type: str = "application/json;charset=utf-8"
    delay: float = 0.0
    echo: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    encoding: str = ""  # sent as Content-Encoding; the body is sent as given (already compressed)
    trickle: float = 0.0  # seconds between chunks of `chunk` bytes: a server that never stops for a whole read timeout
    chunk: int = 16
    slow_headers: bool = False  # trickle the status line and headers too, `chunk` bytes at a time


def peek_client_hello(sock: socket.socket) -> bytes:
    """The first TLS record a client sent (its ClientHello), read without consuming it."""
    sock.settimeout(10)
    data = sock.recv(65536, socket.MSG_PEEK)
    while data and len(data) < 5 + int.from_bytes(data[3:5], "big"):
        time.sleep(0.001)  # the rest of a large hello (post-quantum key share) is still in flight
        data = sock.recv(65536, socket.MSG_PEEK)
    return data


@functools.cache
def fred_pcoppusdm_body() -> dict:
    """The real PCOPPUSDM history (USD per tonne) in the shape of a real FRED observations body."""
    raw = pl.read_csv(SHARED / "fred_pcoppusdm_monthly_1998_2026.csv")
    rows = [
        {"realtime_start": "2026-11-26", "realtime_end": "2026-11-26", "date": d, "value": str(v)}
        for d, v in raw.iter_rows()
    ]
    return {"units": "lin", "file_type": "json", "count": len(rows), "observations": rows}


@functools.cache
def good_routes() -> dict[str, Reply]:
    """Every source answering with real data: CLP=X 2006-2024, HG=F 2000-2026, mindicador 2026, PCOPPUSDM."""
    return {
        YAHOO_CLP: Reply(body=json.dumps(real_usdclp_payload())),
        YAHOO_HG: Reply(body=json.dumps(chart_payload(real_copper()))),
        MINDICADOR + "/2026": Reply(body=json.dumps(load_json("mindicador", "dolar_200_last31.json"))),
        MINDICADOR: Reply(
            body=json.dumps({**load_json("mindicador", "dolar_200_last31.json"), "serie": []})
        ),  # other years: none recorded
        FRED: Reply(body=json.dumps(fred_pcoppusdm_body())),
    }


def routes(**changes: Reply) -> dict[str, Reply]:
    named = {"clp": [YAHOO_CLP], "hg": [YAHOO_HG], "mindicador": [MINDICADOR + "/2026", MINDICADOR], "fred": [FRED]}
    return {**good_routes(), **{path: reply for k, reply in changes.items() for path in named[k]}}


class FakeSources:
    """Yahoo, FRED and mindicador on one 127.0.0.1 port: a Reply per path prefix, every request recorded.

    A route may be a function of the request handler that returns the Reply. With `tls` (a server
    context) it serves HTTPS and keeps each connection's raw TLS ClientHello in `hellos`.
    """

    def __init__(self, routes: dict[str, Reply], tls=None):
        self.routes, self.requests, self.stop = dict(routes), [], threading.Event()
        self.headers: list[dict[str, str]] = []
        self.hellos: list[bytes] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                fake.requests.append(self.path)
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                reply = next(
                    (r for prefix, r in fake.routes.items() if path.startswith(prefix)), Reply(404, "no route")
                )
                reply = reply(self) if callable(reply) else reply
                if reply.delay:
                    fake.stop.wait(reply.delay)
                body = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else reply.body.encode()
                    if isinstance(reply.body, str)
                    else json.dumps(reply.body).encode()
                )
                if reply.echo:
                    body += f" for GET {self.path}".encode()
                headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(body))), *reply.headers]
                headers += [("Content-Encoding", reply.encoding)] if reply.encoding else []
                head = f"HTTP/1.1 {reply.status} {http.HTTPStatus(reply.status).phrase}\r\n"
                head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
                try:
                    for part, slow in ((head.encode(), reply.slow_headers), (body, bool(reply.trickle))):
                        step = reply.chunk if slow else len(part) or 1
                        for start in range(0, len(part), step):
                            if slow and fake.stop.wait(reply.trickle):
                                return
                            self.wfile.write(part[start : start + step])
                            self.wfile.flush()
                except OSError:  # the client gave up (timeout row)
                    self.close_connection = True

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def get_request(self):
                sock, address = self.socket.accept()
                if tls is None:
                    return sock, address
                fake.hellos.append(peek_client_hello(sock))
                return tls.wrap_socket(sock, server_side=True), address

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads, self.server.block_on_close = True, False
        self.server.handle_error = lambda request, address: None
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeSources:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def count(self, prefix: str) -> int:
        return sum(urllib.parse.unquote(p).startswith(prefix) for p in self.requests)

    def queries(self, prefix: str) -> list[dict[str, str]]:
        return [
            dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(p).query))
            for p in self.requests
            if urllib.parse.unquote(p).startswith(prefix)
        ]


def fault_env(data_dir: Path, url: str, **extra: str) -> dict[str, str]:
    """The env of every row: all three sources at `url`, the FRED key set, any data age accepted, no seed."""
    return {
        "FXCU_DATA_DIR": str(data_dir),
        "FXCU_YAHOO_URL": url,
        "FXCU_FRED_URL": url,
        "FXCU_MINDICADOR_URL": url,
        "FRED_API_KEY": FRED_KEY,
        "FXCU_MAX_AGE_DAYS": "100000",
        "FXCU_TRACKING_TIMEOUT": "30",
        "FXCU_LOCK_TIMEOUT": "30",
        "FXCU_SEED": "0",
        **extra,  # the seed rows (issue 10) turn it on
    }


def closed_url() -> str:
    return f"http://127.0.0.1:{refused_port()}"  # nothing listens: connection refused


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the user saw: exit code, stdout, stderr (log lines included), seconds taken."""

    code: int
    out: str
    err: str
    seconds: float

    @property
    def messages(self) -> list[str]:
        """stderr lines that are not log records: what the CLI printed itself."""
        return [line for line in self.err.splitlines() if line.strip() and not LOG_LINE.match(line)]


def clean_environ() -> dict[str, str]:
    skip = ("FXCU_", "MLFLOW_", "FRED_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(skip)}


def cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> Outcome:
    """`python fxcu.py ARGS` in a fresh process."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(HERE / "fxcu.py"), *args],
        env={**clean_environ(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def in_fresh_process(commands: list[list[str]], data_dir: Path) -> tuple[list[str], list[int], list[str]]:
    """`fxcu.main` on each command in one fresh process: its stdout lines, the exit codes, and the mlflow and
    statsforecast modules it imported by the end."""
    code = (
        "import json, sys, fxcu\n"
        "codes = [fxcu.main(c, {'FXCU_DATA_DIR': sys.argv[1]}) for c in json.loads(sys.argv[2])]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'mlflow', 'statsforecast'})\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir), json.dumps(commands)],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    *lines, last = out.stdout.strip().splitlines() or [out.stderr]
    found = json.loads(last)
    return lines, found["codes"], found["heavy"]


@pytest.fixture
def inprocess(monkeypatch, capsys, caplog):
    """`fxcu.main(ARGS, env)` with retries that do not sleep; log records are added to stderr as the CLI prints them."""
    real = fxcu.make_fetch_json
    monkeypatch.setattr(
        fxcu,
        "make_fetch_json",
        lambda config, deadline=None: without_sleep(real(config, deadline=deadline), []),
    )
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    def run(args: list[str], env: dict[str, str]) -> Outcome:
        capsys.readouterr()
        caplog.clear()
        started = time.monotonic()
        with caplog.at_level(logging.INFO):
            code = fxcu.main(args, env)
        seconds = time.monotonic() - started
        captured = capsys.readouterr()
        assert not any(r.exc_info for r in caplog.records), "a log record carries a traceback"
        logs = "".join(f"{r.levelname} {r.name}: {r.getMessage()}\n" for r in caplog.records)
        return Outcome(code, captured.out, captured.err + logs, seconds)

    return run


@dataclasses.dataclass(frozen=True)
class Kept:
    """The warehouse files (bytes, dates) and the MLflow runs at one moment."""

    files: dict[str, bytes]
    dates: dict[str, set]
    runs: int
    db: bytes | None


def mlflow_runs(data_dir: Path) -> int:
    db = data_dir / "mlflow" / "mlflow.db"
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
        return conn.execute("select count(*) from runs").fetchone()[0]


def kept(data_dir: Path) -> Kept:
    files, dates = {}, {}
    for name in (fxcu.USDCLP_CACHE, fxcu.COPPER_CACHE):
        path = data_dir / "warehouse" / name
        if path.exists():
            files[name] = path.read_bytes()
            try:
                dates[name] = set(pl.read_parquet(path)[fxcu.DATE])
            except Exception:  # noqa: BLE001 -- the corrupt-file row
                dates[name] = None
    db = data_dir / "mlflow" / "mlflow.db"
    return Kept(files, dates, mlflow_runs(data_dir), db.read_bytes() if db.exists() else None)


def assert_nothing_lost(
    before: Kept,
    data_dir: Path,
    *,
    unchanged: tuple[str, ...] = (),
    runs_added: int | None = 0,
    db_unchanged: bool = False,
) -> Kept:
    """Every warehouse file still holds every date it held (`unchanged` ones byte for byte); MLflow lost no run.

    `runs_added` is how many runs the row records, or None where a killed or cut row may have recorded one or not.
    """
    after = kept(data_dir)
    for name, days in before.dates.items():
        if days is not None:
            assert after.dates.get(name) is not None and days <= after.dates[name], f"{name} lost dates"
    for name in unchanged:
        assert after.files[name] == before.files[name], f"{name} changed"
    if runs_added is None:
        assert after.runs >= before.runs
    else:
        assert after.runs == before.runs + runs_added
    if db_unchanged:
        assert after.db == before.db
    return after


@functools.cache
def cassette_texts() -> tuple[str, ...]:
    return tuple(p.read_text() for p in sorted(CASSETTES.glob("*.yaml")))


def assert_key_nowhere(data_dir: Path, *outcomes: Outcome) -> None:
    """The FRED key is in no stdout or stderr line, no file under the data dir (db and mlruns too) and no cassette."""
    unredacted = re.compile(r"api_key=(?!\*\*\*)")
    for outcome in outcomes:
        for text in (outcome.out, outcome.err):
            assert FRED_KEY not in text and not unredacted.search(text)
            assert "Traceback" not in text
    if data_dir.is_dir():
        for path in data_dir.rglob("*"):
            if path.is_file():
                assert FRED_KEY.encode() not in path.read_bytes(), path
    for text in cassette_texts():
        assert FRED_KEY not in text and not re.search(r"api_key=\w", text)


@dataclasses.dataclass
class Guard:
    """A fault row under `guarded`: the warehouse and MLflow store `before` it and `after` it, and what the user saw."""

    before: Kept
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)
    after: Kept | None = None

    def __call__(self, outcome: Outcome) -> Outcome:
        """Record `outcome` for the key check and give it back."""
        self.outcomes.append(outcome)
        return outcome


@contextlib.contextmanager
def guarded(
    data_dir: Path, *, unchanged: tuple[str, ...] = (), runs_added: int | None = 0, db_unchanged: bool = False
) -> Iterator[Guard]:
    """Note the warehouse and the MLflow store (`kept`); once the block has run, prove nothing lost, the key nowhere.

    The two checks of every fault row: `assert_nothing_lost` (no date gone from a warehouse file, `unchanged` files
    byte for byte, the runs counted) and `assert_key_nowhere` (in no outcome recorded by calling the guard, no file
    under the data dir, no cassette). A block that raises is not checked: its own error is the failure to read.
    """
    guard = Guard(kept(data_dir))
    yield guard
    guard.after = assert_nothing_lost(
        guard.before, data_dir, unchanged=unchanged, runs_added=runs_added, db_unchanged=db_unchanged
    )
    assert_key_nowhere(data_dir, *guard.outcomes)


def postgres_bindir() -> Path | None:
    """Where Debian's PostgreSQL keeps initdb and pg_ctl (off PATH): `pg_config --bindir`, else the newest found."""
    found = [subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()]
    found = found if shutil.which("pg_config") else []
    found += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    return next((Path(d) for d in found if d and all((Path(d) / b).exists() for b in ("initdb", "pg_ctl"))), None)


PG_PASSWORD = "pg-pw-4b1d9e"  # the database's, in the server's backend URI
ANALYST_PASSWORD = "analyst-pw-7c2f0a"  # in the analysts' MLFLOW_TRACKING_URI: it must reach no log, report or tag


@dataclasses.dataclass
class TeamServer:
    """A throwaway PostgreSQL (initdb in a temp dir it owns) and a real `mlflow server` on it, on 127.0.0.1.

    initdb refuses to run as root: as root the database runs as the `postgres` user (runuser).
    """

    bindir: Path
    folder: Path  # the database cluster's, owned by its user
    work: Path  # the server's artifacts and logs
    pg_port: int = dataclasses.field(default_factory=free_port)
    port: int = dataclasses.field(default_factory=free_port)
    server: subprocess.Popen | None = None
    postgres_up: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend(self) -> str:
        """The server's backend store URI: the database, with its password."""
        return f"postgresql+psycopg://fxcu:{PG_PASSWORD}@127.0.0.1:{self.pg_port}/mlflow"

    def analyst_uri(self, name: str = "analyst") -> str:
        """The server's URI as an analyst writes it, with a password (a proxy's basic auth; the server ignores it)."""
        return f"http://{name}:{ANALYST_PASSWORD}@127.0.0.1:{self.port}"

    def pg_ctl(self, *args: str) -> None:
        runuser = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = [*runuser, str(self.bindir / "pg_ctl"), "-D", str(self.folder / "db"), "-w", *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start_postgres(self) -> None:
        options = f"-h 127.0.0.1 -p {self.pg_port} -k '' -c fsync=off"  # TCP only; a throwaway needs no fsync
        self.pg_ctl("-l", str(self.folder / "postgres.log"), "-o", options, "start")
        self.postgres_up = True

    def stop_postgres(self) -> None:
        self.pg_ctl("-m", "fast", "stop")
        self.postgres_up = False

    def start_mlflow(self) -> None:
        backend, self.port = self.backend, free_port()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
             "--artifacts-destination", str(self.work / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=(self.work / "mlflow.log").open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.work,
        )  # fmt: skip
        wait_healthy(self.url, self.server)

    def kill_mlflow(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait(30)

    def ensure_up(self) -> TeamServer:
        """Both servers running (a test before stopped or killed one); returns itself."""
        if not self.postgres_up:
            self.start_postgres()
        if self.server is None or self.server.poll() is not None:
            self.start_mlflow()
        return self


@contextlib.contextmanager
def team_server_up(work: Path) -> Iterator[TeamServer]:
    """A new PostgreSQL cluster with a database `mlflow`, and `mlflow server` on it; both stopped and removed after.

    Skips the test (one sentence: how to install) when PostgreSQL's binaries or psycopg are missing.
    """
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are missing: install them with `apt-get install -y postgresql`")
    psycopg = pytest.importorskip(
        "psycopg", reason="psycopg is missing: install the extra with `pip install -e '.[server]'`"
    )
    folder = Path(tempfile.mkdtemp(prefix="fxcu-pg-"))  # not under pytest's tmp: the `postgres` user cannot enter it
    team = TeamServer(bindir, folder, work)
    runuser = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    try:
        (folder / "pw").write_text(PG_PASSWORD + "\n")
        if runuser:
            for path in (folder, folder / "pw"):
                shutil.chown(path, "postgres")
        initdb = [str(bindir / "initdb"), "-D", str(folder / "db"), "-U", "fxcu", "--pwfile", str(folder / "pw")]
        initdb += ["--auth=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"]
        subprocess.run([*runuser, *initdb], check=True, capture_output=True, timeout=120)
        team.start_postgres()
        with psycopg.connect(
            f"postgresql://fxcu:{PG_PASSWORD}@127.0.0.1:{team.pg_port}/postgres", autocommit=True
        ) as db:
            db.execute("create database mlflow")
        team.start_mlflow()
        yield team
    finally:
        if team.server is not None:
            team.kill_mlflow()
        with contextlib.suppress(subprocess.SubprocessError):
            team.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def team_server_once(tmp_path_factory) -> Iterator[TeamServer]:
    """One PostgreSQL and one `mlflow server` for the session's team-server tests (about 15 s to start)."""
    with team_server_up(tmp_path_factory.mktemp("team")) as team:
        yield team


@pytest.fixture
def team_server(team_server_once) -> TeamServer:
    """The session's PostgreSQL and `mlflow server`, both up (restarted if a test before stopped or killed them)."""
    return team_server_once.ensure_up()


# -- Constants & config ----------------------------------------------------------------


def test_the_modules_docstring_examples_hold():
    import doctest

    result = doctest.testmod(fxcu)
    assert result.attempted >= 2 and result.failed == 0


def test_all_is_the_readme_library_api_and_each_name_exists():
    readme = (HERE / "README.md").read_text()
    section = readme[readme.index("## Library") : readme.index("\n## ", readme.index("## Library") + 1)]
    named = set(re.findall(r"\bfxcu\.([A-Za-z]\w*)", section))
    assert set(fxcu.__all__) == named and len(fxcu.__all__) == len(named)
    assert all(hasattr(fxcu, name) for name in fxcu.__all__)


# Every file the tests read from data/real (real public data and recorded bodies; provenance in PROVENANCE.md)
REAL_FILES = (
    "usdclp_clpx_daily_2006_2024.csv",
    "copper_hgf_daily_2000_2026.csv",
    "fred_pcoppusdm_monthly_1998_2026.csv",
    "fred/error_400_missing_series_id.json",
    "fred/observations_200_GDP_with_dots_full_interaction.json",
    "mindicador/dolar_200_last31.json",
    "yahoo/chart_200_AAPL_empty_result.json",
    "yahoo/chart_200_BTC-USD_null_bars.json",
    "yahoo/chart_200_EURUSD=X_fx.json",
    "yahoo/chart_200_GC=F_future.json",
    "yahoo/chart_400_bad_range.json",
    "yahoo/chart_404_not_found.json",
)


def test_the_real_data_the_tests_read_is_in_the_repository():
    missing = [name for name in REAL_FILES if not (SHARED / name).is_file()]
    seed = [name for name in fxcu.SEED_FILES.values() if not (fxcu.SEED_DIR / name).is_file()]
    assert not missing, (
        f"missing from data/real: {', '.join(missing)}. The tests read the real public data copied into the "
        "repository (provenance in data/real/PROVENANCE.md): restore it with `git checkout -- data/real`."
    )
    assert not seed, f"missing from data/seed: {', '.join(seed)}: rebuild it with `python data/seed/build_seed.py`."


def collected(folder: Path) -> list[str]:
    """The test ids `pytest --collect-only` finds in `folder`, run there in a fresh process; fails on any error."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", "-p", "no:randomly"],
        cwd=folder,
        env={**clean_environ(), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = done.stdout.splitlines()[-1:]
    assert done.returncode == 0 and not re.search(r"\d+ errors?\b", "".join(found)), done.stdout[-3000:] + done.stderr
    return [line for line in done.stdout.splitlines() if "::" in line]


@pytest.mark.slow
def test_a_bare_clone_collects_every_test_reading_nothing_outside_it(tmp_path, request):
    """The README's test command in a clone with nothing beside it: no sibling folder, no data dir, no cache.

    The clone is git's tracked files as they are now (committed or not), so a file the tests need that was never
    added to git fails here as it would in a stranger's clone.
    """
    clone = tmp_path / "empty" / "fxcu"
    if (HERE / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=HERE, check=True, capture_output=True, timeout=60)
        for name in filter(None, listed.stdout.decode().split("\0")):
            if (HERE / name).is_file():  # a tracked file deleted in the working tree is not in the clone
                (clone / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(HERE / name, clone / name)
    else:  # a checkout without git: its files, not what runs made
        ignored = shutil.ignore_patterns(".venv", "__pycache__", ".pytest_cache", "mlflow", "warehouse", "reports")
        shutil.copytree(HERE, clone, ignore=ignored)
    assert not (clone.parent.parent / "shared").exists() and not (clone / ".venv").exists()
    found = collected(clone)
    if request.config.getoption("keyword") or request.config.getoption("markexpr"):  # a selection ran: count anew
        assert sorted(found) == sorted(collected(HERE)) != []
    else:  # the whole suite ran here: the clone finds every test this session did
        # pytest-xdist's --dist loadgroup appends "@<group>" to the ids of grouped tests
        ours = [re.sub(r"@[\w-]+$", "", item.nodeid) for item in request.session.items]
        assert sorted(found) == sorted(ours) != []


@pytest.mark.parametrize(("text", "days"), [("7d", 7), ("15d", 15), ("30d", 30), ("90D", 90), (" 7d ", 7)])
def test_parse_horizon_known(text, days):
    assert fxcu.parse_horizon(text) == days


@pytest.mark.parametrize("text", ["8d", "7", "", "week", "-7d"])
def test_parse_horizon_unknown_raises(text):
    with pytest.raises(ValueError, match="unknown horizon"):
        fxcu.parse_horizon(text)


def test_config_from_env_reads_variables(tmp_path):
    env = {
        "FXCU_DATA_DIR": str(tmp_path),
        "FXCU_YAHOO_URL": "http://127.0.0.1:9/",
        "FRED_API_KEY": FRED_KEY,
        "FXCU_OFFLINE": "1",
        "FXCU_COPPER": "off",
    }
    config = fxcu.Config.from_env(env)
    assert config.data_dir == tmp_path.resolve()
    assert config.yahoo_url == "http://127.0.0.1:9"
    assert config.yahoo_cookie_url == "http://127.0.0.1:9"  # a mirror of Yahoo serves the cookie too
    assert config.impersonate == "chrome"
    assert config.offline and not config.copper
    assert FRED_KEY not in repr(config)


def test_config_yahoo_cookie_and_impersonation_defaults_and_off():
    assert fxcu.Config.from_env({}).yahoo_cookie_url == "https://fc.yahoo.com"
    config = fxcu.Config.from_env({"FXCU_HTTP_IMPERSONATE": " OFF ", "FXCU_YAHOO_COOKIE_URL": "http://127.0.0.1:9/fc/"})
    assert config.impersonate == "off" and config.yahoo_cookie_url == "http://127.0.0.1:9/fc"


def test_config_default_data_dir_is_beside_the_module():
    assert fxcu.Config.from_env({}).data_dir == HERE / "data"


@pytest.mark.parametrize(
    ("name", "value"),
    [("FXCU_OFFLINE", "maybe"), ("FXCU_TIMEOUT", "fast"), ("FXCU_TIMEOUT", "-1"), ("FXCU_HTTP_IMPERSONATE", "firefox")],
)
def test_config_bad_values_raise_config_error(name, value):
    with pytest.raises(fxcu.ConfigError, match=name):
        fxcu.Config.from_env({name: value})


@pytest.mark.slow
def test_run_logs_its_inputs_as_datasets_digested_from_prices_only(offline_run):

    folder, _, _ = offline_run
    run = read_runs(folder, "7d")[0]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"usdclp", "copper"}
    warehouse = Path(run.info.artifact_uri.removeprefix("file://")) / "inputs" / "warehouse"
    for name, file in (("usdclp", fxcu.USDCLP_CACHE), ("copper", fxcu.COPPER_CACHE)):
        frame = pl.read_parquet(warehouse / file)
        # the oracle: sha256 of the "date,close" CSV of the sorted prices, nothing else
        assert (
            inputs[name].dataset.digest
            == hashlib.sha256(frame.select("date", "close").sort("date").write_csv().encode()).hexdigest()[:16]
        )
        assert json.loads(inputs[name].dataset.profile)["rows"] == frame.height
        assert [tag.value for tag in inputs[name].tags if tag.key == "mlflow.data.context"] == ["training"]


@pytest.mark.slow
def test_track_does_not_import_mlflow_or_statsforecast(tmp_path):
    write_real_warehouse(tmp_path)
    lines, _, heavy = in_fresh_process([["track", "--json"]], tmp_path)
    assert heavy == [] and set(json.loads("\n".join(lines))) == set(fxcu.HORIZONS)


# -- Values: levels, failures and degradations -----------------------------------------


def test_jump_limits_sit_above_the_worst_real_move():
    for frame, rules in ((real_usdclp(), fxcu.USDCLP_RULES), (real_copper(), fxcu.COPPER_RULES)):
        worst = frame[fxcu.CLOSE].log().diff().abs().max()
        assert worst < rules.jump < 1.5 * worst  # above every real day, and not so far above it that +50% passes
        assert rules.jump < math.log(1.5)


def test_degraded_reasons_are_values_not_sentences():
    reason = fxcu.Reason(fxcu.Degraded.STALE, "stale: USD/CLP last date 2024-07-15, 864 days old")
    series = fxcu.ChosenSeries("usdclp", real_usdclp(), "cache", degraded=(reason, fxcu.Reason(fxcu.Degraded.CACHED)))
    bundle = fxcu.build_bundle(series, fxcu.ChosenSeries("copper", None, "none"))
    assert bundle.degraded == (fxcu.Degraded.NO_COPPER, fxcu.Degraded.STALE, fxcu.Degraded.CACHED)
    assert bundle.degraded_detail == ("no copper", "stale: USD/CLP last date 2024-07-15, 864 days old", "cached data")
    reworded = fxcu.ChosenSeries(
        "usdclp", real_usdclp(), "cache", degraded=(dataclasses.replace(reason, detail="anything at all"),)
    )
    assert fxcu.build_bundle(reworded, fxcu.ChosenSeries("copper", None, "none")).degraded == (
        fxcu.Degraded.NO_COPPER,
        fxcu.Degraded.STALE,
    )


# -- Core: requests and redaction ------------------------------------------------------


def test_yahoo_params_full_history_then_incremental_with_overlap():
    assert fxcu.yahoo_params(None, NOW) == {"interval": "1d", "range": "max"}
    params = fxcu.yahoo_params(date(2024, 1, 8), NOW)
    assert int(params["period1"]) == int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
    assert int(params["period2"]) == int(NOW.timestamp())


def test_mindicador_years():
    assert fxcu.mindicador_years(None, NOW) == [2023, 2024]
    assert fxcu.mindicador_years(date(2024, 1, 3), NOW) == [2023, 2024]
    assert fxcu.mindicador_years(date(2021, 5, 3), NOW) == [2021, 2022, 2023, 2024]


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=32, max_size=32), st.text(max_size=40))
def test_redact_removes_key_anywhere(key, noise):
    text = f"{noise} GET https://x/fred?series_id=P&api_key={key}&file_type=json {noise} key={key}"
    assert key not in fxcu.redact(text, key)


def test_redact_removes_a_crumb_from_urls():
    text = "GET https://query1.finance.yahoo.com/v8/finance/chart/CLP=X?interval=1d&crumb=Phb0wzVdPs6&range=max"
    assert fxcu.redact(text, None) == text.replace("Phb0wzVdPs6", "***")


@pytest.mark.parametrize(
    ("status", "body", "asks"),
    [
        (401, INVALID_CRUMB, True),
        (
            401,
            '{"finance":{"result":null,"error":{"code":"Unauthorized",'
            '"description":"User is unable to access this feature"}}}',
            True,
        ),
        (429, "Too Many Requests\r\n", True),
        (429, "Edge: Too Many Requests", True),
        (403, "Unauthorized", True),
        (429, "", False),  # a bare 429 is rate limiting: tenacity's backoff, not a crumb
        (
            404,
            '{"chart":{"result":null,"error":{"code":"Not Found",'
            '"description":"No data found, symbol may be delisted"}}}',
            False,
        ),
        (500, "Unauthorized", False),
        (200, "Too Many Requests", False),
    ],
)
def test_asks_for_crumb(status, body, asks):
    assert fxcu.asks_for_crumb(status, body) is asks


@pytest.mark.parametrize(
    ("status", "body", "crumb"),
    [
        (200, "Phb0wzVdPs6", "Phb0wzVdPs6"),
        (200, "zLoP.Fp75Uh\n", "zLoP.Fp75Uh"),
        (429, "Too Many Requests\r\n", None),
        (200, "Edge: Too Many Requests", None),  # yfinance #2284 read this back as a crumb
        (200, "<html><body>consent</body></html>", None),
        (200, "", None),
        (401, INVALID_CRUMB, None),
    ],
)
def test_crumb_from(status, body, crumb):
    assert fxcu.crumb_from(status, body) == crumb


def test_redact_hides_user_and_password_in_urls():
    line = "Retrying http://alice:s3cr%40t@proxy.local:3128/x and https://bob:pw@h/api?api_key=abc"
    assert fxcu.redact(line, None) == "Retrying http://***@proxy.local:3128/x and https://***@h/api?api_key=***"
    assert (
        fxcu._where("https://alice:s3cret@127.0.0.1:8080/v8/finance/chart/CLP=X?x=1")
        == "127.0.0.1:8080/v8/finance/chart/CLP=X"
    )


@pytest.mark.slow
def test_fault_credentials_in_base_and_proxy_urls_never_reach_the_log(data_dir, inprocess, monkeypatch):
    with FakeSources(routes(clp=Reply(503, "down", "text/plain"), hg=Reply(503, "down", "text/plain"))) as api:
        base = api.url.replace("http://", "http://alice:base-s3cret@")
        monkeypatch.setenv(
            "HTTP_PROXY", f"http://proxyuser:proxy-s3cret@127.0.0.1:{refused_port()}"
        )  # a dead proxy for the others
        monkeypatch.setenv("NO_PROXY", "")
        result = inprocess(["fetch"], fault_env(data_dir, api.url, FXCU_YAHOO_URL=base))
    assert result.code == 0
    assert "Retrying 127.0.0.1:" in result.err
    assert (
        "s3cret" not in result.err + result.out
        and "alice" not in result.err + result.out
        and "proxyuser" not in result.err + result.out
    )


# -- Core: parsing payloads ------------------------------------------------------------


def test_parse_yahoo_chart_fx_fixture_dates_in_london():
    frame = fxcu.parse_yahoo_chart(yahoo_body("chart_200_EURUSD=X_fx.json"))
    # 1577836800 is 2020-01-01 00:00 UTC = London midnight in winter
    assert frame[fxcu.DATE].to_list() == [date(2020, 1, 1), date(2020, 1, 2), date(2020, 1, 3)]
    assert frame[fxcu.CLOSE].dtype == pl.Float64


def test_parse_yahoo_chart_future_fixture_dates_in_new_york():
    body = yahoo_body("chart_200_GC=F_future.json")
    frame = fxcu.parse_yahoo_chart(body)
    result = body["chart"]["result"][0]
    expected = [
        datetime.fromtimestamp(t, UTC).astimezone(__import__("zoneinfo").ZoneInfo("America/New_York")).date()
        for t in result["timestamp"]
    ]
    assert frame[fxcu.DATE].to_list() == expected
    assert frame[fxcu.CLOSE].to_list() == pytest.approx(result["indicators"]["quote"][0]["close"])


def test_parse_yahoo_chart_keeps_null_bars_for_cleaning():
    body = yahoo_body("chart_200_BTC-USD_null_bars.json")
    frame = fxcu.parse_yahoo_chart(body)
    assert frame.height == 370 and frame[fxcu.CLOSE].null_count() == 4
    cleaned = fxcu.clean_prices(frame)
    assert len(cleaned.removed["null or non-positive bars"]) == 4


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("chart_200_AAPL_empty_result.json", "no bars"),
        ("chart_404_not_found.json", "Not Found"),
        ("chart_400_bad_range.json", "Bad Request"),
    ],
)
def test_parse_yahoo_chart_real_error_bodies_raise(name, message):
    wrapped = load_json("yahoo", name)
    body = wrapped["response"].get("bodyJson") or json.loads(wrapped["response"]["body"])
    with pytest.raises(fxcu.PayloadError, match=message):
        fxcu.parse_yahoo_chart(body)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"chart": None},
        {"chart": {"result": None, "error": None}},
        [],
        {"chart": {"result": [{"timestamp": [1], "indicators": {}}]}},
    ],
)
def test_parse_yahoo_chart_malformed_raises_payload_error(body):
    with pytest.raises(fxcu.PayloadError):
        fxcu.parse_yahoo_chart(body)


def test_parse_yahoo_chart_real_clpx_history_has_no_weekends():
    frame = fxcu.parse_yahoo_chart(real_usdclp_payload())
    assert frame.height == 4666
    assert frame[fxcu.DATE].min() == date(2006, 5, 16) and frame[fxcu.DATE].max() == date(2024, 7, 15)
    assert (frame[fxcu.DATE].dt.weekday() < 6).all()
    # Taking the UTC date would put 548 bars on the wrong (often weekend) day.
    utc_days = pl.read_csv(SHARED / "usdclp_clpx_daily_2006_2024.csv")["Date"].str.slice(0, 10).str.to_date()
    assert (utc_days.dt.weekday() >= 6).sum() == 548


def test_parse_mindicador_real_body_dates_in_santiago():
    body = load_json("mindicador", "dolar_200_last31.json")
    frame = fxcu.parse_mindicador(body)
    assert frame.height == 31 and frame[fxcu.DATE].is_sorted()
    assert frame[fxcu.DATE].max() == date(2026, 10, 8)
    assert frame.filter(pl.col(fxcu.DATE) == date(2026, 10, 8))[fxcu.CLOSE].item() == 979.85
    assert (frame[fxcu.DATE].dt.weekday() < 6).all()


@pytest.mark.parametrize(
    "body", [{}, {"serie": "x"}, {"serie": [{"valor": 1}]}, {"serie": [{"fecha": "yesterday", "valor": 1}]}]
)
def test_parse_mindicador_malformed_raises(body):
    with pytest.raises(fxcu.PayloadError):
        fxcu.parse_mindicador(body)


def test_parse_fred_observations_converts_tonnes_to_pounds_and_dots_to_null():
    body = {"observations": [{"date": "2024-01-01", "value": "8344.12"}, {"date": "2024-02-01", "value": "."}]}
    frame = fxcu.parse_fred_observations(body)
    assert frame[fxcu.CLOSE][0] == pytest.approx(8344.12 / 2204.62262)
    assert frame[fxcu.CLOSE][1] is None


def test_parse_fred_observations_real_gdp_body_with_dots():
    interaction = load_json("fred", "observations_200_GDP_with_dots_full_interaction.json")
    body = json.loads(interaction["response"]["body_text"])
    frame = fxcu.parse_fred_observations(body)
    dots = sum(o["value"] == "." for o in body["observations"])
    assert dots == 4 and frame[fxcu.CLOSE].null_count() == 4 and frame.height == len(body["observations"])


def test_parse_fred_observations_error_body_raises():
    """FRED's real 400 body (recorded in data/real/fred): its error_message is the one-line error."""
    interaction = load_json("fred", "error_400_missing_series_id.json")
    body = json.loads(interaction["response"]["body_text"])
    assert body == {"error_code": 400, "error_message": "Bad Request.  Variable series_id has not been set."}
    with pytest.raises(fxcu.PayloadError) as caught:
        fxcu.parse_fred_observations(body)
    assert str(caught.value) == "FRED error: Bad Request.  Variable series_id has not been set."


def test_fred_monthly_matches_hgf_monthly_means():
    """Converted PCOPPUSDM agrees with HG=F monthly means (PROVENANCE: median 0.57%)."""
    fred = pl.read_csv(SHARED / "fred_pcoppusdm_monthly_1998_2026.csv")
    body = {"observations": [{"date": d, "value": str(v)} for d, v in fred.iter_rows()]}
    monthly = fxcu.parse_fred_observations(body)
    hgf = real_copper().group_by(pl.col(fxcu.DATE).dt.truncate("1mo")).agg(pl.col(fxcu.CLOSE).mean().alias("hgf"))
    joined = monthly.join(hgf, on=fxcu.DATE)
    gap = ((joined[fxcu.CLOSE] / joined["hgf"] - 1).abs()).median()
    assert joined.height > 250 and gap < 0.01


# -- Core: cleaning and merging --------------------------------------------------------


def test_validity_rules_flag_exactly_their_rows_and_are_never_null():
    rows = [
        (date(2024, 7, 15), 900.0, set()),
        (date(2024, 7, 16), None, {"null"}),
        (date(2024, 7, 17), math.nan, {"null", "out of range"}),  # NaN sorts above every number in polars
        (date(2024, 7, 18), 0.0, {"non-positive", "out of range"}),
        (date(2024, 7, 19), -5.0, {"non-positive", "out of range"}),
        (date(2024, 7, 22), math.inf, {"not finite", "out of range"}),
        (date(2024, 7, 23), 2500.0, {"out of range"}),
        (date(2024, 7, 12), 299.0, {"out of range"}),
        (date(2099, 1, 5), 900.0, {"in the future"}),
        (date(1983, 12, 30), 900.0, {"too early"}),
        (None, 900.0, set()),  # a null date is no rule's: nothing compares it
    ]
    frame = pl.DataFrame(
        {fxcu.DATE: [r[0] for r in rows], fxcu.CLOSE: [r[1] for r in rows]},
        schema={fxcu.DATE: pl.Date, fxcu.CLOSE: pl.Float64},
    )
    table = fxcu.validity_rules(fxcu.USDCLP_RULES, now=datetime(2024, 7, 24, tzinfo=UTC))
    flags = frame.select(**{name: rule.bad for name, rule in table.items()})
    assert flags.null_count().sum_horizontal().item() == 0
    assert [{name for name in table if flag[name]} for flag in flags.iter_rows(named=True)] == [r[2] for r in rows]
    assert table["in the future"].words == "dated after 2024-07-25"
    assert table["out of range"].words == "outside 300..2000 CLP per USD"
    assert set(fxcu.validity_rules()) == {"null", "non-positive", "not finite"}  # no unit, no clock: no more


def test_clean_prices_real_clpx_removes_bad_prints_and_keeps_real_move():
    cleaned = fxcu.clean_prices(fxcu.parse_yahoo_chart(real_usdclp_payload()))
    assert cleaned.removed["bad prints"] == [date(2014, 4, 10), date(2016, 12, 22)]
    kept = cleaned.frame.filter(pl.col(fxcu.DATE).is_between(date(2022, 7, 20), date(2022, 7, 21)))[
        fxcu.CLOSE
    ].to_list()
    assert kept[1] / kept[0] - 1 < -0.11  # the real 12% move of 2022-07-21 stays
    assert any("2 bad prints" in note for note in cleaned.notes)


def test_clean_prices_real_hgf_drops_the_sunday_row_only():
    raw = pl.read_csv(SHARED / "copper_hgf_daily_2000_2026.csv")
    frame = raw.select(pl.col("Date").str.to_date().alias(fxcu.DATE), pl.col("Close").alias(fxcu.CLOSE))
    cleaned = fxcu.clean_prices(frame)
    assert cleaned.removed == {"weekend rows": [date(2025, 7, 13)]}
    assert cleaned.frame.height == 6399


def test_clean_prices_keeps_latest_bar_of_a_duplicated_date():
    frame = pl.DataFrame(
        {fxcu.DATE: [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 3)], fxcu.CLOSE: [1.0, 2.0, 2.5]}
    )
    cleaned = fxcu.clean_prices(frame)
    assert cleaned.frame[fxcu.CLOSE].to_list() == [1.0, 2.5]
    assert cleaned.removed["duplicated-date bars (kept the latest)"] == [date(2024, 1, 3)]


def test_clean_prices_never_keeps_a_zero_or_negative_close():
    """A close of 0 (a feed's placeholder) or below is dropped and named, never stored and served."""
    days = [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4), date(2024, 1, 5), date(2024, 1, 8)]
    frame = pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: [900.0, 0.0, 901.0, -0.0, -3.0]})
    cleaned = fxcu.clean_prices(frame)
    assert cleaned.frame[fxcu.CLOSE].to_list() == [900.0, 901.0]
    assert cleaned.removed == {"null or non-positive bars": [days[1], days[3], days[4]]}


def test_clean_prices_drops_saturday_and_sunday_rows_of_a_daily_series_only():
    days = [date(2024, 1, 5), date(2024, 1, 6), date(2024, 1, 7), date(2024, 1, 8)]  # Friday .. Monday
    frame = pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: [900.0, 901.0, 902.0, 903.0]})
    daily = fxcu.clean_prices(frame)
    assert daily.frame[fxcu.DATE].to_list() == [days[0], days[3]]
    assert daily.removed == {"weekend rows": [days[1], days[2]]}
    assert fxcu.clean_prices(frame, frequency="monthly").frame[fxcu.DATE].to_list() == days


def test_clean_prices_removes_an_isolated_spike():
    frame = make_prices(30)
    spiked = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 15).then(5.0).otherwise(pl.col(fxcu.CLOSE)).alias(fxcu.CLOSE)
    )
    cleaned = fxcu.clean_prices(spiked)
    assert cleaned.removed["bad prints"] == [frame[fxcu.DATE][15]]
    assert cleaned.frame.height == 29


def test_clean_prices_keeps_a_level_shift():
    frame = make_prices(30).with_columns(
        pl.when(pl.int_range(pl.len()) >= 15)
        .then(pl.col(fxcu.CLOSE) * 1.5)
        .otherwise(pl.col(fxcu.CLOSE))
        .alias(fxcu.CLOSE)
    )
    assert fxcu.clean_prices(frame).frame.height == 30


# prices, with the zeros and negatives a broken feed sends (never stored: the last assertion below)
prices_strategy = st.lists(
    st.one_of(st.floats(min_value=0.5, max_value=2000, allow_nan=False), st.sampled_from([0.0, -0.0, -1.0, -900.0])),
    min_size=1,
    max_size=80,
)


@pytest.mark.slow
@given(prices_strategy, st.lists(st.integers(0, 79), max_size=4), st.booleans())
@settings(max_examples=300, deadline=None)
def test_clean_prices_is_idempotent(values, spikes, duplicate):
    days = make_prices(len(values))[fxcu.DATE].to_list()
    values = list(values)
    for at in spikes:
        if at < len(values):
            values[at] = values[at] / 100  # isolated or adjacent bad prints
    if duplicate:
        days, values = days + days[-1:], values + [values[-1] * 1.01]  # a live bar repeating the last date
    once = fxcu.clean_prices(pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: values})).frame
    twice = fxcu.clean_prices(once)
    assert twice.frame.equals(once) and twice.removed == {}
    assert once[fxcu.DATE].is_sorted() and once[fxcu.DATE].n_unique() == once.height
    assert (once[fxcu.CLOSE] > 0).all()
    non_positive = {d for d, v in zip(days, values, strict=True) if v <= 0}  # counted in a plain loop
    assert set(once[fxcu.DATE]).isdisjoint(non_positive)


def test_clean_prices_removes_two_adjacent_bad_prints():
    frame = make_prices(30)
    bad = frame.with_columns(
        pl.when(pl.int_range(pl.len()).is_in([14, 15]))
        .then(pl.col(fxcu.CLOSE) / 100)
        .otherwise(pl.col(fxcu.CLOSE))
        .alias(fxcu.CLOSE)
    )
    cleaned = fxcu.clean_prices(bad)
    assert cleaned.removed["bad prints"] == frame[fxcu.DATE].to_list()[14:16]


def test_clean_prices_on_clean_real_history_is_a_fixed_point():
    once = real_usdclp()
    assert fxcu.clean_prices(once).frame.equals(once)


@pytest.mark.slow
@given(
    st.sets(st.integers(0, 60), min_size=1),
    st.sets(st.integers(0, 60)),
    st.sampled_from(["yahoo", "mindicador", "cache"]),
)
@settings(max_examples=150, deadline=None)
def test_merge_prices_never_loses_a_date(old_days, new_days, source):
    base = date(2024, 1, 1)
    old = provenance(
        pl.DataFrame({fxcu.DATE: [base + timedelta(d) for d in sorted(old_days)], fxcu.CLOSE: [1.0] * len(old_days)}),
        "yahoo",
    )
    new = provenance(
        pl.DataFrame(
            {fxcu.DATE: [base + timedelta(d) for d in sorted(new_days)], fxcu.CLOSE: [2.0] * len(new_days)},
            schema={fxcu.DATE: pl.Date, fxcu.CLOSE: pl.Float64},
        ),
        source,
    )
    merged = fxcu.merge_prices(old, new)
    assert set(merged[fxcu.DATE]) == set(old[fxcu.DATE]) | set(new[fxcu.DATE])
    assert merged[fxcu.DATE].is_sorted() and merged.height == merged[fxcu.DATE].n_unique()


def test_merge_prices_revised_values_replace_and_fallback_never_overwrites_primary():
    day = [date(2024, 1, 2), date(2024, 1, 3)]
    cached = provenance(pl.DataFrame({fxcu.DATE: day, fxcu.CLOSE: [900.0, 901.0]}), "yahoo")
    revised = provenance(pl.DataFrame({fxcu.DATE: day[1:], fxcu.CLOSE: [905.0]}), "yahoo")
    assert fxcu.merge_prices(cached, revised)[fxcu.CLOSE].to_list() == [900.0, 905.0]
    fallback = provenance(
        pl.DataFrame({fxcu.DATE: [day[1], date(2024, 1, 4)], fxcu.CLOSE: [950.0, 951.0]}), "mindicador"
    )
    merged = fxcu.merge_prices(cached, fallback)
    assert merged[fxcu.CLOSE].to_list() == [900.0, 901.0, 951.0]
    assert merged[fxcu.SOURCE].to_list() == ["yahoo", "yahoo", "mindicador"]


def test_merge_prices_into_no_cache_is_the_fetch_in_date_order():
    days = [date(2024, 1, 4), date(2024, 1, 2), date(2024, 1, 3)]
    fetched = provenance(pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: [903.0, 901.0, 902.0]}), "mindicador")
    in_order = fetched.sort(fxcu.DATE)
    assert in_order[fxcu.CLOSE].to_list() == [901.0, 902.0, 903.0]
    assert_frame_equal(fxcu.merge_prices(None, fetched), in_order)
    assert_frame_equal(fxcu.merge_prices(fetched.clear(), fetched), in_order)


def test_merge_prices_a_revision_of_every_day_replaces_every_day():
    """4,664 real days revised at once: every fresh close wins from the same source, none from a fallback (a tie in
    rank and date is broken by freshness, never by the order a sort happens to leave)."""
    cached = provenance(real_usdclp(), "yahoo")
    revised = cached.with_columns(pl.col(fxcu.CLOSE) * 1.01)
    assert_frame_equal(fxcu.merge_prices(cached, revised), revised)
    assert_frame_equal(fxcu.merge_prices(cached, revised.with_columns(pl.lit("mindicador").alias(fxcu.SOURCE))), cached)


def test_merge_prices_ranks_a_source_it_does_not_know_below_every_known_one():
    """A row from a source name fxcu does not rank (a hand import) never replaces a known source's, nor the reverse."""
    day = [date(2024, 1, 2), date(2024, 1, 3)]
    seed = provenance(pl.DataFrame({fxcu.DATE: day, fxcu.CLOSE: [900.0, 901.0]}), "seed")
    hand = provenance(pl.DataFrame({fxcu.DATE: [day[1], date(2024, 1, 4)], fxcu.CLOSE: [950.0, 951.0]}), "by hand")
    for cached, fetched in ((seed, hand), (hand, seed)):
        merged = fxcu.merge_prices(cached, fetched)
        assert merged[fxcu.CLOSE].to_list() == [900.0, 901.0, 951.0]
        assert merged[fxcu.SOURCE].to_list() == ["seed", "seed", "by hand"]


# -- Core: choosing a source -----------------------------------------------------------


def test_first_good_skips_errors_and_stale_frames():
    results = [
        fxcu.Result("yahoo", error="HTTP 503"),
        fxcu.Result("mindicador", frame=stale),
        fxcu.Result("cache", frame=fresh),
    ]
    chosen = fxcu.first_good(results, now=NOW, max_age=timedelta(days=5))
    assert chosen.source == "cache"


def test_first_good_all_failed_joins_reasons():
    results = [fxcu.Result("yahoo", error="HTTP 503"), fxcu.Result("cache", frame=stale)]
    chosen = fxcu.first_good(results, now=NOW, max_age=timedelta(days=5))
    assert not chosen.ok and "yahoo: HTTP 503" in chosen.error and "cache: stale" in chosen.error
    assert chosen.source == "none" and chosen.frame is None
    nothing = fxcu.first_good([], now=NOW, max_age=timedelta(days=5), serve_stale=True)
    assert (nothing.source, nothing.error, nothing.ok) == ("none", "no sources", False)


def test_first_good_per_source_limits_and_monthly_leeway():
    monthly = make_prices(3, start=date(2023, 11, 1))
    results = [fxcu.Result("fred", frame=monthly, frequency="monthly")]
    assert fxcu.first_good(results, now=NOW, max_age={"fred": timedelta(days=5)}).source == "fred"
    assert fxcu.first_good([fxcu.Result("cache", frame=stale)], now=NOW, max_age={"yahoo": timedelta(days=5)}).ok
    # a limit named for a source holds that source to it
    results = [fxcu.Result("yahoo", frame=stale), fxcu.Result("cache", frame=fresh)]
    assert fxcu.first_good(results, now=NOW, max_age={"yahoo": timedelta(days=5)}).source == "cache"


def test_refusal_words_one_result_without_its_source_name():
    five = timedelta(days=5)
    assert fxcu.refusal(fxcu.Result("yahoo", error="HTTP 503"), now=NOW, max_age=five) == "HTTP 503"
    assert fxcu.refusal(fxcu.Result("yahoo", frame=fresh), now=NOW, max_age=five) is None
    last = stale[fxcu.DATE].max()
    expected = f"stale: last date {last} is {(NOW.date() - last).days} days old"
    assert fxcu.refusal(fxcu.Result("yahoo", frame=stale), now=NOW, max_age=five) == expected
    assert fxcu.refusal(fxcu.Result("yahoo", frame=stale), now=NOW, max_age=None) is None
    assert fxcu.refusal(fxcu.Result("yahoo"), now=NOW, max_age=five) == "no rows"
    # a monthly series may lag 75 days whatever the limit asked
    monthly = make_prices(3, start=date(2023, 11, 1))
    assert fxcu.refusal(fxcu.Result("fred", frame=monthly, frequency="monthly"), now=NOW, max_age=five) is None
    # but not more: a monthly series 76 days old is stale
    old = pl.DataFrame({fxcu.DATE: [date(2023, 10, 1), date(2023, 10, 26)], fxcu.CLOSE: [4.0, 4.1]})
    stale_monthly = fxcu.Result("fred", frame=old, frequency="monthly")
    assert fxcu.refusal(stale_monthly, now=NOW, max_age=five) == "stale: last date 2023-10-26 is 76 days old"
    holes = old.with_columns(pl.lit(None, pl.Float64).alias(fxcu.CLOSE))  # two problems: one line
    assert (
        fxcu.refusal(fxcu.Result("fred", frame=holes, frequency="monthly"), now=NOW, max_age=five)
        == "null or non-positive closes; stale: last date 2023-10-26 is 76 days old"
    )


def aged(days: int, close: float | None = 900.0) -> pl.DataFrame:
    """Two daily rows whose last date is `days` before NOW, every close `close` (None: null)."""
    last = NOW.date() - timedelta(days=days)
    return pl.DataFrame(
        {fxcu.DATE: [last - timedelta(days=1), last], fxcu.CLOSE: [close, close]},
        schema={fxcu.DATE: pl.Date, fxcu.CLOSE: pl.Float64},
    )


# each frame with its age in days and whether its closes are usable, known here and not asked of fxcu:
# boundary ages (5 is fresh, 6 stale at a 5-day limit), future dates, and null, zero and negative closes
AGED = [(age, ok, aged(age, close)) for age in (-1, 0, 5, 6, 200) for ok, close in ((True, 900.0), (False, None))]
AGED += [(0, False, aged(0, 0.0)), (3, False, aged(3, -5.0)), (6, False, aged(6, 0.0))]
result_strategy = st.one_of(
    st.builds(lambda i: (fxcu.Result(f"s{i}", error="down"), None), st.integers(0, 99)),
    st.builds(lambda i, a: (fxcu.Result(f"s{i}", frame=a[2]), a), st.integers(0, 99), st.sampled_from(AGED)),
)


@pytest.mark.slow
@given(st.lists(result_strategy, max_size=8), st.lists(result_strategy, max_size=4), st.booleans())
@settings(max_examples=200, deadline=None)
def test_first_good_returns_the_earliest_good_result(results, tail, serve_stale):
    drawn = results + tail
    every = [r for r, _ in drawn]
    chosen = fxcu.first_good(every, now=NOW, max_age=timedelta(days=5), serve_stale=serve_stale)
    good = [r for r, a in drawn if a is not None and a[1] and a[0] <= 5]
    old = [(a[0], i) for i, (r, a) in enumerate(drawn) if a is not None and a[1] and a[0] > 5]
    if good:
        assert chosen is good[0]
        # anything after the first good result is ignored
        first_index = next(i for i, r in enumerate(every) if r is good[0])
        assert fxcu.first_good(every[: first_index + 1], now=NOW, max_age=timedelta(days=5)) is chosen
    elif serve_stale and old:
        assert chosen is every[min(old)[1]]  # the freshest, the earliest of equals; never a null or zero close
    else:
        assert not chosen.ok and chosen.error


def test_first_good_serves_the_freshest_stale_answer_only_when_asked():
    older = make_prices(5, start=date(2023, 3, 1))
    results = [
        fxcu.Result("yahoo", frame=older),
        fxcu.Result("mindicador", frame=stale),
        fxcu.Result("cache", error="no cache"),
    ]
    assert not fxcu.first_good(results, now=NOW, max_age=timedelta(days=5)).ok
    assert fxcu.first_good(results, now=NOW, max_age=timedelta(days=5), serve_stale=True).source == "mindicador"
    with_good = [*results, fxcu.Result("seed", frame=fresh)]
    assert fxcu.first_good(with_good, now=NOW, max_age=timedelta(days=5), serve_stale=True).source == "seed"


def test_first_good_never_serves_a_fresh_frame_of_null_closes_even_when_serving_stale():
    """A fresh answer with null closes is broken, not stale: serve_stale serves the older good answer, or nothing."""
    holes = fresh.with_columns(pl.lit(None, pl.Float64).alias(fxcu.CLOSE))
    zeros = fresh.with_columns(pl.lit(0.0).alias(fxcu.CLOSE))
    five = timedelta(days=5)
    for broken in (holes, zeros):
        results = [fxcu.Result("yahoo", frame=broken), fxcu.Result("cache", frame=stale)]
        assert fxcu.first_good(results, now=NOW, max_age=five, serve_stale=True).source == "cache"
        alone = fxcu.first_good(results[:1], now=NOW, max_age=five, serve_stale=True)
        assert not alone.ok and alone.error == "yahoo: null or non-positive closes"


@pytest.mark.parametrize(("age", "is_stale"), [(4, False), (5, False), (6, True)])
def test_staleness_boundary_is_the_documented_day(age, is_stale):
    """README: a series whose last date is older than FXCU_MAX_AGE_DAYS (5) is stale: 5 days old is fresh, 6 stale."""
    now = datetime(2024, 7, 16, 12, tzinfo=UTC)
    frame = pl.DataFrame({fxcu.DATE: [now.date() - timedelta(days=age + 1), now.date() - timedelta(days=age)]})
    frame = frame.with_columns(pl.lit(900.0).alias(fxcu.CLOSE))
    found = fxcu.problems(frame, now=now, max_age=timedelta(days=5))
    assert [f.kind for f in found] == ([fxcu.Problem.STALE] if is_stale else [])
    chosen = fxcu.first_good([fxcu.Result("yahoo", frame=frame)], now=now, max_age=timedelta(days=5))
    assert chosen.ok is not is_stale


# -- Core: plausibility ----------------------------------------------------------------

HOSTILE = {  # mode -> the Problem the check must name (the issue's table, plus a jump that stays in range)
    "1e308": fxcu.Problem.OUT_OF_RANGE,
    "infinity": fxcu.Problem.NOT_FINITE,
    "last-x10": fxcu.Problem.OUT_OF_RANGE,
    "last-three-1.0": fxcu.Problem.OUT_OF_RANGE,
    "copper-under-clp": fxcu.Problem.WRONG_SYMBOL,
    "duplicated+50%": fxcu.Problem.CONFLICTING_DUPLICATES,
    "dated-2099": fxcu.Problem.FUTURE_DATE,
    "year-33658": fxcu.Problem.FUTURE_DATE,
    "negative-year": fxcu.Problem.TOO_EARLY,
    "last+50%": fxcu.Problem.JUMP,
}


def cached_usdclp() -> pl.DataFrame:
    return real_usdclp().filter(pl.col(fxcu.DATE) <= CACHE_END)


def vet(payload: dict, *, history: pl.DataFrame | None = None, now: datetime = FETCH_DAY) -> list:
    raw = fxcu.parse_yahoo_chart(payload, symbol="CLP=X", currency="CLP")
    return fxcu.implausible(raw, fxcu.clean_prices(raw).frame, rules=fxcu.USDCLP_RULES, now=now, history=history)


def test_implausible_passes_the_real_answer():
    assert vet(hostile_chart("good"), history=cached_usdclp()) == []
    assert vet(hostile_chart("good")) == []


@pytest.mark.parametrize("mode", list(HOSTILE))
def test_implausible_names_every_hostile_answer(mode):
    try:
        found = vet(hostile_chart(mode), history=cached_usdclp())
    except fxcu.Implausible as exc:  # meta names another symbol: refused while parsing
        found = list(exc.findings)
    assert HOSTILE[mode] in [f.kind for f in found], found
    assert all(str(f) for f in found)


def test_implausible_jump_needs_no_cache_and_dates_the_jump():
    found = vet(hostile_chart("last+50%"))
    assert [f.kind for f in found] == [fxcu.Problem.JUMP] and found[0].since == date(2024, 7, 15)


def test_a_bad_print_after_a_five_business_day_gap_is_refused_and_a_real_move_is_kept():
    """The credible move grows with the square root of the trading days between bars: over a 5-day gap USD/CLP may
    move 0.16 x sqrt(5) = 0.358 (log). +50% (0.405) is refused by the check and cut by the repair; +30% (0.262,
    beyond a 1-day 0.16) is kept by both."""
    history = walk(20, 900.0, [0.001] * 19)  # weekdays from Monday 2024-01-01 to Friday 2024-01-26
    friday = history[fxcu.DATE].max()
    assert friday == date(2024, 1, 26) and friday.weekday() == 4
    after_gap = friday + timedelta(days=7)  # the next Friday: 5 business days later
    now = datetime.combine(after_gap, datetime.min.time(), UTC)
    for factor, refused in ((1.5, True), (1.3, False)):
        bar = pl.DataFrame({fxcu.DATE: [after_gap], fxcu.CLOSE: [history[fxcu.CLOSE][-1] * factor]})
        found = fxcu.implausible(bar, bar, rules=fxcu.USDCLP_RULES, now=now, history=history)
        assert [f.kind for f in found] == ([fxcu.Problem.JUMP] if refused else []), factor
        stored = pl.concat([history, bar])
        kept, dropped = fxcu.repair(stored, rules=fxcu.USDCLP_RULES, now=now)
        assert kept.equals(history if refused else stored), factor
        assert [f.kind for f in dropped] == ([fxcu.Problem.JUMP] if refused else []), factor


def test_the_credible_move_counts_trading_days_at_least_one():
    """Over one trading day USD/CLP may move 0.16 (log): +20% (0.182) the next day is refused, +15% (0.140) kept.
    A Saturday bar an older release stored, then Monday: no trading day between them, still one day's move."""
    history = walk(5, 900.0, [0.001] * 4)  # Monday 2024-01-01 .. Friday 2024-01-05
    now = datetime(2024, 1, 9, tzinfo=UTC)
    for factor, refused in ((1.2, True), (1.15, False)):
        bar = pl.DataFrame({fxcu.DATE: [date(2024, 1, 8)], fxcu.CLOSE: [history[fxcu.CLOSE][-1] * factor]})
        found = fxcu.implausible(bar, bar, rules=fxcu.USDCLP_RULES, now=now, history=history)
        assert [f.kind for f in found] == ([fxcu.Problem.JUMP] if refused else []), factor
    saturday = pl.DataFrame({fxcu.DATE: [date(2024, 1, 6), date(2024, 1, 8)], fxcu.CLOSE: [905.0, 910.0]})
    stored = pl.concat([history, saturday])
    kept, found = fxcu.repair(stored, rules=fxcu.USDCLP_RULES, now=now)
    assert kept.equals(stored) and found == []


def test_implausible_cached_days_revised_beyond_the_limit():
    history = cached_usdclp().with_columns(
        pl.when(pl.col(fxcu.DATE) == CACHE_END)
        .then(pl.col(fxcu.CLOSE) * 0.7)
        .otherwise(pl.col(fxcu.CLOSE))
        .alias(fxcu.CLOSE)
    )
    found = vet(hostile_chart("good"), history=history)
    assert (
        {f.kind for f in found} == {fxcu.Problem.JUMP}
        and "1 cached days revised" in str(found[0])
        and found[0].since == CACHE_END
    )


def test_implausible_without_a_cache_checks_the_ten_newest_moves_and_no_older_one():
    """Without a cache, the moves into the newest NEWEST_BARS = 10 bars are checked: a +30% level shift (0.262 log,
    beyond one day's 0.16) into the 10th bar from the end is refused and dated; the same shift one bar earlier is
    older history the check leaves alone."""
    assert fxcu.NEWEST_BARS == 10
    quiet = walk(20, 900.0, [0.001] * 19)
    now = datetime.combine(quiet[fxcu.DATE].max(), datetime.min.time(), UTC)
    for first_shifted, refused in ((10, True), (9, False)):  # row 10 of 20 is the 10th from the end
        shifted = quiet.with_columns(
            pl.when(pl.int_range(pl.len()) >= first_shifted)
            .then(pl.col(fxcu.CLOSE) * 1.3)
            .otherwise(pl.col(fxcu.CLOSE))
            .alias(fxcu.CLOSE)
        )
        found = fxcu.implausible(shifted, shifted, rules=fxcu.USDCLP_RULES, now=now)
        assert [(f.kind, f.since) for f in found] == (
            [(fxcu.Problem.JUMP, quiet[fxcu.DATE][first_shifted])] if refused else []
        ), first_shifted


def test_implausible_names_the_first_of_several_revised_days_and_allows_a_revision_of_exactly_the_limit():
    """Two cached days revised by +30%: the finding counts both and quotes the earlier one's closes. A revision of
    exactly the jump limit (the limit set to that very log ratio) is allowed: only a larger one is refused."""
    history = walk(20, 900.0, [0.001] * 19)
    now = datetime.combine(history[fxcu.DATE].max(), datetime.min.time(), UTC)
    days, closes = history[fxcu.DATE].to_list(), history[fxcu.CLOSE].to_list()
    revised = [c * 1.3 if i in (5, 12) else c for i, c in enumerate(closes)]
    fresh = pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: revised})
    found = fxcu.implausible(fresh, fresh, rules=fxcu.USDCLP_RULES, now=now, history=history)
    assert [(f.kind, f.since) for f in found] == [(fxcu.Problem.JUMP, days[5])]
    assert str(found[0]) == (
        f"2 cached days revised by more than 16% (log), {days[5]}: {closes[5]:.6g} -> {revised[5]:.6g}"
    )
    one = pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: [c * 1.3 if i == 5 else c for i, c in enumerate(closes)]})
    limit = abs(math.log(one[fxcu.CLOSE][5] / closes[5]))
    at_limit = dataclasses.replace(fxcu.USDCLP_RULES, jump=limit)
    assert fxcu.implausible(one, one, rules=at_limit, now=now, history=history) == []
    just_under = dataclasses.replace(fxcu.USDCLP_RULES, jump=limit * (1 - 1e-9))
    assert [f.kind for f in fxcu.implausible(one, one, rules=just_under, now=now, history=history)] == [
        fxcu.Problem.JUMP
    ]


def test_implausible_dates_and_words_the_first_of_two_jumps_in_the_newest_bars():
    """Two +30% level shifts (0.263 log each, over one day's credible 0.16) in the newest bars: one finding, dated
    and worded for the first."""
    quiet = walk(20, 900.0, [0.001] * 19)
    now = datetime.combine(quiet[fxcu.DATE].max(), datetime.min.time(), UTC)
    i = pl.int_range(pl.len())
    twice = quiet.with_columns(
        pl.col(fxcu.CLOSE) * pl.when(i >= 14).then(1.3).otherwise(1.0) * pl.when(i >= 17).then(1.3).otherwise(1.0)
    )
    found = fxcu.implausible(twice, twice, rules=fxcu.USDCLP_RULES, now=now)
    day, close = quiet[fxcu.DATE][14], quiet[fxcu.CLOSE][14] * 1.3
    assert [(f.kind, f.since) for f in found] == [(fxcu.Problem.JUMP, day)]
    assert str(found[0]) == f"newest bars jump 26% (log) on {day} to {close:.6g}, over the credible 16%"


def test_implausible_allows_a_newest_move_of_exactly_the_credible_limit():
    """A next-day bar moved by exactly the jump limit (the limit set to that very log move) is credible; with the
    limit a hair smaller it is refused."""
    history = walk(20, 900.0, [0.001] * 19)
    day = history[fxcu.DATE].max() + timedelta(days=3)  # Friday 2024-01-26, then Monday: one trading day
    now = datetime.combine(day, datetime.min.time(), UTC)
    last = history[fxcu.CLOSE][-1]
    bar = pl.DataFrame({fxcu.DATE: [day], fxcu.CLOSE: [last * 1.3]})
    limit = abs(math.log(bar[fxcu.CLOSE][0]) - math.log(last))
    for jump, kinds in ((limit, []), (limit * (1 - 1e-9), [fxcu.Problem.JUMP])):
        rules = dataclasses.replace(fxcu.USDCLP_RULES, jump=jump)
        assert [f.kind for f in fxcu.implausible(bar, bar, rules=rules, now=now, history=history)] == kinds


def test_implausible_measures_the_newest_bars_from_the_caches_last_close():
    """The newest bars move from the cache's last close, and nothing older is judged again: a cache whose own last
    move was +25% (a real move it kept) takes a quiet next bar; a fetch that revises the last cached day by +10%
    (within the limit) and adds a bar at that level moves 10% from the cache, not 20% from the day before it."""
    history = walk(20, 900.0, [0.001] * 19)
    friday = history[fxcu.DATE].max()
    monday = friday + timedelta(days=3)
    now = datetime.combine(monday, datetime.min.time(), UTC)
    rules = fxcu.USDCLP_RULES
    crashed = history.with_columns(
        pl.when(pl.col(fxcu.DATE) == friday).then(pl.col(fxcu.CLOSE) * 1.25).otherwise(pl.col(fxcu.CLOSE))
    )
    quiet_bar = pl.DataFrame({fxcu.DATE: [monday], fxcu.CLOSE: [crashed[fxcu.CLOSE][-1] * 1.001]})
    assert fxcu.implausible(quiet_bar, quiet_bar, rules=rules, now=now, history=crashed) == []
    up = history.with_columns(  # the cache's last move: +10% (log 0.1)
        pl.when(pl.col(fxcu.DATE) == friday).then(pl.col(fxcu.CLOSE) * math.exp(0.1)).otherwise(pl.col(fxcu.CLOSE))
    )
    level = up[fxcu.CLOSE][-1] * math.exp(0.1)  # the revised Friday and the new Monday, both 0.1 above the cache
    fetched = pl.DataFrame({fxcu.DATE: [friday, monday], fxcu.CLOSE: [level, level]})
    assert fxcu.implausible(fetched, fetched, rules=rules, now=now, history=up) == []


def test_implausible_words_every_impossible_row_it_finds():
    """A parsed answer with two rows of each impossible kind: every finding counts them and names the row a person
    looks for first (the first non-finite close, the latest future bar, the earliest too-early bar, the widest
    conflict: log 1.5 = 41%), in that order."""
    quiet = walk(20, 900.0, [0.001] * 19)  # weekdays 2024-01-01 .. 2024-01-26
    days = quiet[fxcu.DATE].to_list()
    infinite = (date(2024, 1, 10), date(2024, 1, 12))
    closes = [math.inf if d in infinite else c for d, c in zip(days, quiet[fxcu.CLOSE], strict=True)]
    extra = {
        date(2030, 3, 1): 900.0,
        date(2099, 1, 5): 900.0,
        date(1980, 1, 2): 900.0,
        date(1975, 6, 30): 900.0,
        date(2024, 1, 15): quiet[fxcu.CLOSE][10] * 1.5,  # 2024-01-15 sent twice, 41% (log) apart
        date(2024, 1, 16): quiet[fxcu.CLOSE][11] * 1.2,  # 2024-01-16 sent twice, 18% (log) apart
    }
    raw = pl.DataFrame({fxcu.DATE: days + list(extra), fxcu.CLOSE: closes + list(extra.values())})
    now = datetime(2024, 1, 26, 12, tzinfo=UTC)
    found = fxcu.implausible(raw, fxcu.clean_prices(raw).frame, rules=fxcu.USDCLP_RULES, now=now)
    assert [(f.kind, str(f)) for f in found] == [
        (fxcu.Problem.NOT_FINITE, "2 non-finite closes (first on 2024-01-10)"),
        (fxcu.Problem.FUTURE_DATE, "2 bars dated after 2024-01-27 (last 2099-01-05)"),
        (fxcu.Problem.TOO_EARLY, "2 bars dated before 1984-01-01 (first 1975-06-30)"),
        (fxcu.Problem.CONFLICTING_DUPLICATES, "2 dates sent twice with closes 41% (log) apart"),
    ]


def test_implausible_a_date_sent_twice_once_as_zero_is_a_row_to_drop_not_a_conflict():
    """Yahoo sends a missing close as 0 or null; a date sent twice, once real and once 0, null or NaN, is not two
    prices far apart: cleaning drops the unusable row and the answer passes. A real close beside +inf is only a
    non-finite close."""
    quiet = walk(20, 900.0, [0.001] * 19)
    now = datetime.combine(quiet[fxcu.DATE].max(), datetime.min.time(), UTC)
    day = quiet[fxcu.DATE][10]
    for unusable, kinds in ((0.0, []), (None, []), (math.nan, []), (math.inf, [fxcu.Problem.NOT_FINITE])):
        raw = pl.concat([quiet, pl.DataFrame({fxcu.DATE: [day], fxcu.CLOSE: [unusable]}, schema=quiet.schema)])
        found = fxcu.implausible(raw, fxcu.clean_prices(raw).frame, rules=fxcu.USDCLP_RULES, now=now)
        assert [f.kind for f in found] == kinds, unusable


def test_implausible_allows_a_date_sent_twice_exactly_the_jump_apart():
    """Two closes for one date exactly the jump limit apart (the limit set to that very log ratio) are not a
    conflict; with the limit a hair smaller they are."""
    quiet = walk(20, 900.0, [0.001] * 19)
    now = datetime.combine(quiet[fxcu.DATE].max(), datetime.min.time(), UTC)
    first = quiet[fxcu.CLOSE][2]  # a day older than the ten newest bars: only the duplicate rule looks at it
    raw = pl.concat([quiet, pl.DataFrame({fxcu.DATE: [quiet[fxcu.DATE][2]], fxcu.CLOSE: [first * 1.1]})])
    limit = math.log(raw[fxcu.CLOSE][-1] / first)
    for jump, kinds in ((limit, []), (limit * (1 - 1e-9), [fxcu.Problem.CONFLICTING_DUPLICATES])):
        rules = dataclasses.replace(fxcu.USDCLP_RULES, jump=jump)
        assert [f.kind for f in fxcu.implausible(raw, fxcu.clean_prices(raw).frame, rules=rules, now=now)] == kinds


@pytest.mark.slow
@pytest.mark.parametrize(("name", "rules"), [("usdclp", fxcu.USDCLP_RULES), ("copper", fxcu.COPPER_RULES)])
def test_implausible_never_refuses_the_real_histories(name, rules):
    """Every 20-bar stretch of 18 (CLP=X) and 26 (HG=F) real years, fetched next day over the history before it."""
    frame = real_usdclp() if name == "usdclp" else real_copper()
    for cut in range(40, frame.height - 20, 20):
        history, fresh = frame.head(cut), frame.slice(cut - 5, 25)
        now = datetime.combine(fresh[fxcu.DATE].max(), datetime.min.time(), UTC) + timedelta(days=1)
        assert fxcu.implausible(fresh, fresh, rules=rules, now=now, history=history) == [], (name, cut)
        assert fxcu.implausible(fresh, fresh, rules=rules, now=now) == [], (name, cut)


@pytest.mark.slow
@given(st.integers(12, 40), st.floats(600, 1000), st.lists(st.floats(-0.02, 0.02), min_size=40, max_size=40))
@settings(max_examples=100, deadline=None)
def test_implausible_accepts_any_quiet_walk_in_range(n, level, moves):
    frame = walk(n, level, moves)
    now = datetime.combine(frame[fxcu.DATE].max(), datetime.min.time(), UTC)
    assert fxcu.implausible(frame, frame, rules=fxcu.USDCLP_RULES, now=now, history=frame.head(n // 2)) == []


@pytest.mark.slow
@given(
    st.integers(12, 40),
    st.floats(600, 1000),
    st.lists(st.floats(-0.02, 0.02), min_size=40, max_size=40),
    st.floats(0.3, 3.0),
    st.booleans(),
)
@settings(max_examples=100, deadline=None)
def test_implausible_refuses_any_last_bar_beyond_the_limit(n, level, moves, extra, up):
    frame = walk(n, level, moves)
    factor = math.exp((fxcu.USDCLP_RULES.jump + 0.05 + extra * 0.1) * (1 if up else -1))
    bad = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == n - 1)
        .then(pl.col(fxcu.CLOSE) * factor)
        .otherwise(pl.col(fxcu.CLOSE))
        .alias(fxcu.CLOSE)
    )
    now = datetime.combine(frame[fxcu.DATE].max(), datetime.min.time(), UTC)
    kinds = {f.kind for f in fxcu.implausible(bad, bad, rules=fxcu.USDCLP_RULES, now=now, history=frame.head(n - 3))}
    assert kinds & {fxcu.Problem.JUMP, fxcu.Problem.OUT_OF_RANGE}


@pytest.mark.slow
@given(
    st.integers(1, 15),
    st.floats(0.0, 0.95),
    st.floats(1.05, 3.0),
    st.booleans(),
    st.lists(st.floats(-0.01, 0.01), min_size=19, max_size=19),
)
@settings(max_examples=100, deadline=None)
def test_the_credible_move_grows_with_the_square_root_of_the_gap(gap, inside, beyond, up, moves):
    """After a gap of `gap` business days (counted here by hand: no holidays), a last bar moved by less than
    jump x sqrt(gap) is accepted and one moved by more is refused, by the check and by the repair alike."""
    history = walk(20, 900.0, moves)  # a quiet walk, Monday 2024-01-01 to Friday 2024-01-26
    day, left = history[fxcu.DATE].max(), gap
    while left:
        day += timedelta(days=1)
        left -= day.weekday() < 5
    now = datetime.combine(day, datetime.min.time(), UTC)
    limit = fxcu.USDCLP_RULES.jump * math.sqrt(gap)
    for share, refused in ((inside, False), (beyond, True)):
        last = history[fxcu.CLOSE][-1]
        move = min(share * limit, math.log(1999 / last) if up else math.log(last / 301)) * (1 if up else -1)
        if refused and abs(move) <= limit:
            continue  # USD/CLP's range is refused before the jump: not this test's case
        bar = pl.DataFrame({fxcu.DATE: [day], fxcu.CLOSE: [last * math.exp(move)]})
        kinds = [f.kind for f in fxcu.implausible(bar, bar, rules=fxcu.USDCLP_RULES, now=now, history=history)]
        assert kinds == ([fxcu.Problem.JUMP] if refused else []), (gap, move)
        kept, _ = fxcu.repair(pl.concat([history, bar]), rules=fxcu.USDCLP_RULES, now=now)
        assert kept.height == history.height + (0 if refused else 1), (gap, move)


BAD_ROWS = {"null": None, "nan": math.nan, "inf": math.inf, "1e308": 1e308, "negative": -5.0, "tiny": 1.0}


@pytest.mark.slow
@given(
    st.integers(30, 60),
    st.lists(st.floats(-0.01, 0.01), min_size=60, max_size=60),
    st.dictionaries(st.integers(0, 59), st.sampled_from(list(BAD_ROWS)), max_size=6),
    st.integers(0, 3),
)
@settings(max_examples=100, deadline=None)
def test_repair_drops_exactly_the_bad_rows_and_is_idempotent(n, moves, poison, future):
    good = walk(n, 900.0, moves)
    now = datetime.combine(good[fxcu.DATE].max(), datetime.min.time(), UTC)
    poisoned_at = {i: BAD_ROWS[k] for i, k in poison.items() if i < n}
    closes = [poisoned_at.get(i, c) if i in poisoned_at else c for i, c in enumerate(good[fxcu.CLOSE].to_list())]
    ahead = [
        now.date() + timedelta(days=30 + k) for k in range(future)
    ]  # rows an older release took from a bar dated ahead
    frame = pl.DataFrame(
        {fxcu.DATE: good[fxcu.DATE].to_list() + ahead, fxcu.CLOSE: closes + [900.0] * future},
        schema={fxcu.DATE: pl.Date, fxcu.CLOSE: pl.Float64},
    )
    kept, found = fxcu.repair(frame, rules=fxcu.USDCLP_RULES, now=now)
    expected = good.filter(~pl.int_range(pl.len()).is_in(list(poisoned_at)))
    assert kept[fxcu.DATE].to_list() == expected[fxcu.DATE].to_list()
    assert bool(found) == bool(poisoned_at or future)
    again, refound = fxcu.repair(kept, rules=fxcu.USDCLP_RULES, now=now)
    assert again.equals(kept) and refound == []


def test_repair_cuts_a_poisoned_tail_and_keeps_a_real_crash():
    history = real_usdclp()
    tail = history.tail(3).with_columns(pl.col(fxcu.CLOSE) * 1.5)  # an older release overwrote the last days at +50%
    poisoned = pl.concat([history.head(history.height - 3), tail])
    kept, found = fxcu.repair(poisoned, rules=fxcu.USDCLP_RULES, now=CLP_END)
    assert kept.equals(history.head(history.height - 3)) and [f.kind for f in found] == [fxcu.Problem.JUMP]
    closes, days = history[fxcu.CLOSE].to_list(), history[fxcu.DATE].to_list()
    jump = abs(math.log(closes[-3] * 1.5 / closes[-4]))  # by hand: the first poisoned close over the last good one
    assert found[0].since == days[-3] == date(2024, 7, 11)
    assert (
        str(found[0])
        == f"3 rows from 2024-07-11 after a {jump:.0%} (log) jump"
        == "3 rows from 2024-07-11 after a 38% (log) jump"
    )
    copper = real_copper()  # HG=F fell 25% on 2025-07-31 (real): kept
    kept, found = fxcu.repair(copper, rules=fxcu.COPPER_RULES, now=datetime(2026, 2, 24, tzinfo=UTC))
    assert kept.equals(copper) and found == []


def test_repair_names_each_kind_of_row_it_drops():
    """The warehouse an older release poisoned (docs/RELIABILITY.md): each rule's rows counted and named, in order."""
    history = real_usdclp()
    rows = pl.concat(
        [
            history.with_columns(
                pl.when(pl.int_range(pl.len()) == 100).then(None).otherwise(pl.col(fxcu.CLOSE)).alias(fxcu.CLOSE)
            ),
            pl.DataFrame({fxcu.DATE: [date(2099, 1, 5), date(1983, 1, 3)], fxcu.CLOSE: [900.0, 900.0]}),
            pl.DataFrame({fxcu.DATE: [date(2024, 7, 17)], fxcu.CLOSE: [math.inf]}),
        ]
    )
    kept, found = fxcu.repair(rows, rules=fxcu.USDCLP_RULES, now=CLP_END)
    assert kept.equals(history.filter(pl.int_range(pl.len()) != 100))
    assert [(f.kind, str(f)) for f in found] == [
        (fxcu.Problem.NULL_CLOSES, "1 rows null closes"),
        (fxcu.Problem.NOT_FINITE, "1 rows non-finite closes"),
        (fxcu.Problem.FUTURE_DATE, "1 rows dated after 2024-07-17"),
        (fxcu.Problem.TOO_EARLY, "1 rows dated before 1984-01-01"),
    ]


def test_repair_keeps_a_move_of_exactly_the_limit_and_a_history_split_in_equal_halves():
    """A move of exactly the credible limit is credible; a jump with as many rows after it as before cannot say
    which side is wrong, so nothing is cut. The limit is the move polars computes, so equality is exact."""
    days = [date(2024, 1, 1) + timedelta(days=k) for k in range(4)]  # Monday .. Thursday: one trading day apart
    closes = [900.0, 901.0, 902.0, 1400.0]
    moves = pl.DataFrame({fxcu.CLOSE: closes}).select(
        (pl.col(fxcu.CLOSE).log() - pl.col(fxcu.CLOSE).shift(1).log()).abs()
    )
    limit = moves[fxcu.CLOSE][-1]
    rules = dataclasses.replace(fxcu.USDCLP_RULES, jump=limit)
    frame = pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: closes})
    now = datetime(2024, 1, 5, tzinfo=UTC)
    kept, found = fxcu.repair(frame, rules=rules, now=now)
    assert kept.equals(frame) and found == []  # 0.44 (log) when 0.44 is allowed: kept
    halves = pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: [900.0, 901.0, 1400.0, 1401.0]})  # the jump between 2 and 2
    kept, found = fxcu.repair(halves, rules=fxcu.USDCLP_RULES, now=now)
    assert kept.equals(halves) and found == []
    longer_tail = pl.concat([halves, pl.DataFrame({fxcu.DATE: [date(2024, 1, 5)], fxcu.CLOSE: [1402.0]})])
    kept, found = fxcu.repair(longer_tail, rules=fxcu.USDCLP_RULES, now=now)
    assert kept.equals(longer_tail) and found == []  # three newer rows outnumber two older ones: the newer side stays
    shorter_tail = pl.concat([pl.DataFrame({fxcu.DATE: [date(2023, 12, 29)], fxcu.CLOSE: [899.0]}), halves])
    kept, found = fxcu.repair(shorter_tail, rules=fxcu.USDCLP_RULES, now=now)
    assert kept.equals(shorter_tail.head(3)) and [f.since for f in found] == [date(2024, 1, 3)]


def test_confirms_needs_the_same_closes_on_the_jumped_days():
    suspect = fxcu.parse_yahoo_chart(hostile_chart("last+50%"))
    assert fxcu.confirms(suspect, suspect.tail(2), since=date(2024, 7, 15), rules=fxcu.USDCLP_RULES)
    real = fxcu.parse_yahoo_chart(hostile_chart("good"))
    assert not fxcu.confirms(suspect, real, since=date(2024, 7, 15), rules=fxcu.USDCLP_RULES)
    assert not fxcu.confirms(suspect, real.head(3), since=date(2024, 7, 15), rules=fxcu.USDCLP_RULES)  # no common day


def test_parse_yahoo_chart_refuses_another_symbol_or_currency():
    copper = hostile_chart("copper-under-clp")
    with pytest.raises(fxcu.Implausible) as caught:
        fxcu.parse_yahoo_chart(copper, symbol="CLP=X", currency="CLP")
    assert [f.kind for f in caught.value.findings] == [fxcu.Problem.WRONG_SYMBOL, fxcu.Problem.WRONG_CURRENCY]
    assert fxcu.parse_yahoo_chart(copper, symbol="HG=F", currency="USD").height == 13  # COMEX closed on July 4


def test_read_cache_drops_null_closes_instead_of_rejecting_the_cache(tmp_path):
    frame = provenance(real_usdclp(), "yahoo")
    holes = frame.with_columns(
        pl.when(pl.int_range(pl.len()).is_in([100, 2000, 4600]))
        .then(None)
        .otherwise(pl.col(fxcu.CLOSE))
        .alias(fxcu.CLOSE)
    )
    path = tmp_path / fxcu.USDCLP_CACHE
    fxcu.write_parquet_atomic(holes, path)
    result = fxcu.read_cache(path, now=CLP_END, rules=fxcu.USDCLP_RULES)
    assert result.ok and result.frame.height == frame.height - 3 and result.frame[fxcu.CLOSE].null_count() == 0
    assert [r.kind for r in result.degraded] == [fxcu.Degraded.REPAIRED]
    assert pl.read_parquet(path).height == frame.height - 3  # rewritten, and the dropped rows kept aside
    assert pl.read_parquet(next(tmp_path.glob(f"{fxcu.USDCLP_CACHE}.rejected-*"))).height == 3


@pytest.mark.parametrize(
    ("last", "level"),
    [(date(2099, 1, 5), "CRITICAL"), (date(2026, 11, 28), "CRITICAL"), (date(2026, 11, 27), "OK")],
)
def test_check_age_never_calls_a_future_date_fresh(last, level):
    """Tomorrow's date is a bar already dated in its own time zone (OK); the day after is the future (CRITICAL)."""
    assert (
        fxcu.check_age("usdclp", last, today=date(2026, 11, 26), warn_days=5, critical_days=30, missing="CRITICAL")[1]
        == level
    )


# -- Core: copper features -------------------------------------------------------------


def oracle_features(prices: list[float]) -> dict[str, list[float | None]]:
    """Plain-loop versions of the copper indicators (the utilsforecast oracle style)."""
    n = len(prices)
    logp = [math.log(p) for p in prices]
    out: dict[str, list[float | None]] = {}
    for k in (1, 5, 20):
        out[f"copper_returns_{k}d"] = [None if i < k else logp[i] - logp[i - k] for i in range(n)]
    rets = [None] + [logp[i] - logp[i - 1] for i in range(1, n)]
    for k in (20, 60):
        col = []
        for i in range(n):
            if i < k:
                col.append(None)
                continue
            window = rets[i - k + 1 : i + 1]
            col.append(float(np.std(window, ddof=1)) * math.sqrt(252))
        out[f"copper_volatility_{k}d"] = col
    for k in (20, 50):
        out[f"copper_sma_{k}"] = [None if i < k - 1 else sum(prices[i - k + 1 : i + 1]) / k for i in range(n)]
    trend = []
    for fast, slow in zip(out["copper_sma_20"], out["copper_sma_50"], strict=False):
        trend.append(0 if fast is None or slow is None or fast == slow else (1 if fast > slow else -1))
    out["copper_trend_signal"] = trend
    # Wilder's RSI as TA-Lib defines it: seed with simple means of the first 14 changes.
    rsi: list[float | None] = [None] * n
    if n > 14:
        changes = [prices[i] - prices[i - 1] for i in range(1, n)]
        gain = sum(max(c, 0) for c in changes[:14]) / 14
        loss = sum(max(-c, 0) for c in changes[:14]) / 14
        for i in range(14, n):
            if i > 14:
                c = changes[i - 1]
                gain = (gain * 13 + max(c, 0)) / 14
                loss = (loss * 13 + max(-c, 0)) / 14
            rsi[i] = 50.0 if gain == 0 and loss == 0 else 100.0 if loss == 0 else 100 - 100 / (1 + gain / loss)
    out["copper_rsi_14"] = rsi
    z = []
    for i in range(n):
        if i < 251:
            z.append(None)
            continue
        window = np.array(prices[i - 251 : i + 1])
        sd = window.std(ddof=1)
        z.append(0.0 if sd == 0 else float((prices[i] - window.mean()) / sd))
    out["copper_price_normalized"] = z
    return out


def assert_matches(actual: list, expected: list, name: str, rel: float = 1e-7, abs_: float = 1e-9) -> None:
    assert len(actual) == len(expected), name
    for i, (a, e) in enumerate(zip(actual, expected, strict=False)):
        if e is None:
            assert a is None, f"{name}[{i}] should be null (warm-up), got {a}"
        else:
            assert a is not None and a == pytest.approx(e, rel=rel, abs=abs_), f"{name}[{i}]: {a} != {e}"


def test_copper_features_match_oracle_on_real_hgf_history():
    copper = real_copper().tail(600)
    features = fxcu.copper_features(copper)
    expected = oracle_features(copper[fxcu.CLOSE].to_list())
    assert features.columns == [fxcu.DATE, *fxcu.FEATURES]
    for name, values in expected.items():
        assert_matches(features[name].to_list(), values, name, rel=1e-6, abs_=1e-6)
    assert features["copper_usdclp_correlation_90d"].null_count() == features.height


@pytest.mark.slow
@given(st.lists(st.floats(min_value=0.5, max_value=10, allow_nan=False), min_size=1, max_size=300))
@settings(max_examples=60, deadline=None)
def test_copper_features_match_oracle_on_generated_series(values):
    copper = pl.DataFrame({fxcu.DATE: make_prices(len(values))[fxcu.DATE], fxcu.CLOSE: values})
    features = fxcu.copper_features(copper)
    for name, expected in oracle_features(values).items():
        assert_matches(features[name].to_list(), expected, name, rel=1e-6, abs_=1e-6)


@pytest.mark.parametrize("lazy", [False, True])
def test_feature_exprs_work_on_lazy_and_eager_frames(lazy):
    copper = real_copper().tail(300)
    frame = copper.lazy() if lazy else copper
    out = frame.with_columns(fxcu.feature_exprs(fxcu.CLOSE, None))
    out = out.collect() if lazy else out
    assert_frame_equal(out.drop(fxcu.CLOSE), fxcu.copper_features(copper), check_exact=False, rel_tol=1e-9)


@pytest.mark.slow
@given(st.lists(st.floats(min_value=0.5, max_value=10, allow_nan=False), min_size=2, max_size=200))
@settings(max_examples=80, deadline=None)
def test_copper_features_ranges(values):
    copper = pl.DataFrame({fxcu.DATE: make_prices(len(values))[fxcu.DATE], fxcu.CLOSE: values})
    features = fxcu.copper_features(copper)
    rsi = features["copper_rsi_14"].drop_nulls()
    assert ((rsi >= 0) & (rsi <= 100)).all()
    for name in ("copper_volatility_20d", "copper_volatility_60d"):
        assert (features[name].drop_nulls() >= 0).all()
    assert set(features["copper_trend_signal"].to_list()) <= {-1, 0, 1}


@pytest.mark.slow
@given(st.floats(min_value=0.5, max_value=10), st.integers(min_value=1, max_value=300))
@settings(max_examples=40, deadline=None)
def test_copper_features_constant_prices(price, n):
    copper = pl.DataFrame({fxcu.DATE: make_prices(n)[fxcu.DATE], fxcu.CLOSE: [price] * n})
    features = fxcu.copper_features(copper)
    for name in ("copper_returns_1d", "copper_volatility_20d", "copper_price_normalized"):
        assert all(v == pytest.approx(0, abs=1e-12) for v in features[name].drop_nulls())
    assert all(v == pytest.approx(price) for v in features["copper_sma_20"].drop_nulls())
    assert set(features["copper_trend_signal"]) <= {0}


@pytest.mark.slow
@given(st.integers(min_value=1, max_value=120), st.integers(min_value=0, max_value=10_000))
@settings(max_examples=40, deadline=None)
def test_copper_features_no_look_ahead(extra, seed):
    """Appending future rows never changes any past feature value."""
    copper = make_prices(420, seed=seed, level=4.0)
    usdclp = make_prices(420, seed=seed + 1)
    past = fxcu.copper_features(copper.head(300), usdclp.head(300))
    full = fxcu.copper_features(copper.head(300 + extra), usdclp.head(300 + extra))
    assert full.head(300).equals(past)


def test_align_copper_never_uses_same_or_later_copper_dates():
    usdclp = pl.DataFrame(
        {fxcu.DATE: [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4)], fxcu.CLOSE: [880.0, 881.0, 882.0]}
    )
    copper = pl.DataFrame(
        {fxcu.DATE: [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4)], fxcu.CLOSE: [3.0, 4.0, 5.0]}
    )
    aligned = fxcu.align_copper(usdclp, copper)
    assert aligned["copper"].to_list() == [None, 3.0, 4.0]


def test_copper_features_on_usdclp_dates_use_previous_new_york_day():
    copper, usdclp = real_copper(), real_usdclp()
    own = fxcu.copper_features(copper)
    joined = fxcu.copper_features(copper, usdclp)
    row = joined.filter(pl.col(fxcu.DATE) == date(2024, 7, 15)).row(0, named=True)
    friday = own.filter(pl.col(fxcu.DATE) == date(2024, 7, 12)).row(0, named=True)
    assert row["copper_sma_20"] == friday["copper_sma_20"]  # Monday's CLP bar sees Friday's copper


def test_copper_features_do_not_carry_stale_copper_forward():
    usdclp = make_prices(200, seed=1)
    copper = make_prices(150, seed=2, level=4.0)  # stops 50 trading days before USD/CLP does
    features = fxcu.copper_features(copper, usdclp)
    last_copper = copper[fxcu.DATE].max()
    late = features.filter(pl.col(fxcu.DATE) > last_copper + timedelta(days=7))
    assert late.height > 40 and all(late[name].null_count() == late.height for name in fxcu.FEATURES)
    within = features.filter(
        pl.col(fxcu.DATE).is_between(last_copper + timedelta(days=1), last_copper + timedelta(days=7))
    )
    assert within["copper_sma_20"].null_count() == 0  # a long weekend or a holiday is not a gap


@pytest.mark.slow
def test_backtest_drops_the_copper_model_when_copper_is_stale():
    usdclp, copper = make_prices(700, seed=4), make_prices(650, seed=5, level=4.0)
    bt = fxcu.backtest(usdclp, copper, "7d", windows=6, step_size=20, history=700)
    assert not bt.copper_used and fxcu.COPPER_MODEL not in bt.models
    assert any(note.startswith("copper stale") for note in bt.notes)


@pytest.mark.parametrize(("gap", "stale"), [(7, False), (8, True)])
def test_copper_is_stale_after_seven_days(gap, stale):
    usdclp = pl.DataFrame({fxcu.DATE: [date(2024, 7, 15)], fxcu.CLOSE: [900.0]})
    copper = pl.DataFrame({fxcu.DATE: [date(2024, 7, 15) - timedelta(days=gap)], fxcu.CLOSE: [4.0]})
    assert fxcu.copper_is_stale(usdclp, copper) is stale


@pytest.mark.slow
def test_stale_copper_is_a_degraded_reason_and_leaves_the_forecast():
    usdclp, copper = make_prices(700, seed=4), make_prices(650, seed=5, level=4.0)
    bundle = fxcu.Bundle(usdclp, copper, fxcu.copper_features(copper, usdclp), {"usdclp": "yahoo", "copper": "cache"})
    assert "stale copper" in bundle.degraded
    fc = fxcu.forecast(usdclp, copper, "7d", windows=6, history=700)
    assert fxcu.COPPER_MODEL not in set(fc.path["model"])


def copper_known_before(days: list[date], copper: pl.DataFrame, max_gap: int | None = None) -> list[float | None]:
    """Per USD/CLP day, the last copper close dated strictly before it (none older than `max_gap` days): a plain loop
    over the raw copper rows, the oracle of `align_copper`."""
    stamps, closes = copper[fxcu.DATE].to_list(), copper[fxcu.CLOSE].to_list()
    out = []
    for day in days:
        known = [(d, c) for d, c in zip(stamps, closes, strict=True) if d < day]
        last = max(known) if known else None
        out.append(None if last is None or (max_gap is not None and (day - last[0]).days > max_gap) else last[1])
    return out


def test_correlation_matches_numpy_on_real_data():
    copper, usdclp = real_copper(), real_usdclp()
    features = fxcu.copper_features(copper, usdclp)
    days = usdclp[fxcu.DATE].to_list()[-91:]
    known = copper_known_before(days, copper.filter(pl.col(fxcu.DATE) >= days[0] - timedelta(days=30)), max_gap=7)
    assert None not in known  # no gap in the last 91 days: the window holds 90 returns of both
    rc = np.diff(np.log(known))
    ru = np.diff(np.log(usdclp[fxcu.CLOSE].to_numpy()[-91:]))
    expected = np.corrcoef(rc, ru)[0, 1]
    day = days[-1]
    assert features.filter(pl.col(fxcu.DATE) == day)["copper_usdclp_correlation_90d"].item() == pytest.approx(expected)
    in_range = features.filter(pl.col(fxcu.DATE).dt.year().is_between(2010, 2024))["copper_usdclp_correlation_90d"]
    assert in_range.median() < 0  # copper up, peso up: USD/CLP down


def test_log_return_defaults_to_one_row():
    """Called without `n`, the log return is over one row, named for one day: ln(110/100), ln(99/110)."""
    out = pl.DataFrame({"c": [100.0, 110.0, 99.0]}).select(fxcu.log_return("c"))
    assert out.columns == ["copper_returns_1d"]
    assert out[:, 0].to_list() == [None, pytest.approx(math.log(1.1)), pytest.approx(math.log(0.9))]


def test_rsi_and_zscore_default_to_wilders_14_and_a_252_day_year():
    """Called without a window, RSI is Wilder's 14 and the z-score is over 252 rows: the plain loops of
    `oracle_features` on 300 prices."""
    prices = make_prices(300, seed=11, level=4.0)[fxcu.CLOSE].to_list()
    out = pl.DataFrame({"c": prices}).select(fxcu.rsi("c"), fxcu.zscore("c"))
    assert out.columns == ["copper_rsi_14", "copper_price_normalized"]
    expected = oracle_features(prices)
    for name in out.columns:
        assert_matches(out[name].to_list(), expected[name], name, rel=1e-6, abs_=1e-6)


def test_rsi_skips_a_missing_close_and_smooths_on_from_the_last_known_averages():
    """A null close leaves two changes unknown: RSI is null there and Wilder's averages carry on from the last known
    ones (a plain loop over the changes that exist, window 3)."""
    prices = [10.0, 11.0, 10.5, 11.2, 11.0, None, 11.5, 11.4, 11.8, 11.6]
    n, expected = 3, [None] * 3
    changes = [None if a is None or b is None else b - a for a, b in zip(prices, prices[1:], strict=False)]
    gain = sum(max(c, 0) for c in changes[:n]) / n
    loss = sum(max(-c, 0) for c in changes[:n]) / n
    expected.append(100 - 100 / (1 + gain / loss))
    for c in changes[n:]:
        if c is None:
            expected.append(None)
            continue
        gain, loss = (gain * (n - 1) + max(c, 0)) / n, (loss * (n - 1) + max(-c, 0)) / n
        expected.append(100 - 100 / (1 + gain / loss))
    got = pl.DataFrame({"c": prices}).select(fxcu.rsi("c", n))[:, 0].to_list()
    assert_matches(got, expected, "rsi", rel=1e-12)
    assert expected[3] == pytest.approx(100 - 100 / (1 + 1.7 / 0.5))  # the seed: gains 1 + 0.7, loss 0.5 over 3


@pytest.mark.parametrize(
    ("prices", "value"),
    [([1.0, 2.0, 3.0, 4.0, 5.0], 100.0), ([5.0, 5.0, 5.0, 5.0, 5.0], 50.0), ([5.0, 4.0, 3.0, 2.0, 1.0], 0.0)],
)
def test_rsi_is_100_with_no_losses_50_when_nothing_moved_and_0_with_no_gains(prices, value):
    assert pl.DataFrame({"c": prices}).select(fxcu.rsi("c", 3))[:, 0].to_list() == [None] * 3 + [value] * 2


def test_zscore_of_a_flat_price_is_zero_not_undefined():
    """Three equal closes have no spread: their z-score is 0 (not NaN or null); then 6 after 5, 5 is 2 / sqrt(3)
    sample deviations above their mean."""
    out = pl.DataFrame({"c": [5.0, 5.0, 5.0, 5.0, 6.0]}).select(fxcu.zscore("c", 3))[:, 0].to_list()
    assert out == [None, None, 0.0, 0.0, pytest.approx(2 / math.sqrt(3))]


def test_rolling_correlation_defaults_to_the_90_returns_its_column_names():
    """Called without a window, the correlation is over the last 90 daily log returns (numpy's corrcoef): null on the
    first 90 rows, which have fewer."""
    rng = np.random.default_rng(7)
    a, b = np.exp(np.cumsum(rng.normal(0, 0.01, 100))), np.exp(np.cumsum(rng.normal(0, 0.01, 100)))
    out = pl.DataFrame({"a": a, "b": b}).select(fxcu.rolling_correlation("a", "b"))
    assert out.columns == ["copper_usdclp_correlation_90d"]
    got = out[:, 0].to_list()
    ra, rb = np.diff(np.log(a)), np.diff(np.log(b))  # return i ends on row i + 1
    assert got[:90] == [None] * 90
    for row in (90, 99):
        assert got[row] == pytest.approx(np.corrcoef(ra[row - 90 : row], rb[row - 90 : row])[0, 1], abs=1e-9), row


def test_copper_features_monthly_copper_are_all_null():
    fred = pl.read_csv(SHARED / "fred_pcoppusdm_monthly_1998_2026.csv")
    monthly = fxcu.parse_fred_observations(
        {"observations": [{"date": d, "value": str(v)} for d, v in fred.iter_rows()]}
    )
    assert fxcu.copper_frequency(monthly) == "monthly"
    features = fxcu.copper_features(monthly, real_usdclp())
    assert features.columns == [fxcu.DATE, *fxcu.FEATURES]
    assert all(features[name].null_count() == features.height for name in fxcu.FEATURES)


def test_copper_features_of_monthly_copper_keep_the_daily_column_types():
    """Monthly copper (FRED) gets null features, typed as daily ones are (the trend signal an Int8, the rest
    floats), so the two kinds of bundle stack and compare alike."""
    monthly = pl.DataFrame({fxcu.DATE: [date(2024, m, 1) for m in range(1, 13)], fxcu.CLOSE: [4.0] * 12})
    features = fxcu.copper_features(monthly)
    types = {f: pl.Int8 if f == "copper_trend_signal" else pl.Float64 for f in fxcu.FEATURES}
    assert dict(features.schema) == {fxcu.DATE: pl.Date, **types}
    assert all(features[f].null_count() == 12 for f in fxcu.FEATURES)
    # keyed by USD/CLP's dates too (the correlation then comes from its own branch), typed alike and all null
    days = [d for d in (date(2024, 1, 1) + timedelta(days=i) for i in range(366)) if d.weekday() < 5]
    usdclp = pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: [900.0 + i % 7 for i in range(len(days))]})
    on_usdclp = fxcu.copper_features(monthly, usdclp)
    assert dict(on_usdclp.schema) == {fxcu.DATE: pl.Date, **types} and on_usdclp[fxcu.DATE].to_list() == days
    assert all(on_usdclp[f].null_count() == len(days) for f in fxcu.FEATURES)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (lambda: fxcu.sma("close", 0), "window must be at least 1, got 0"),
        (lambda: fxcu.rsi("close", -1), "window must be at least 1, got -1"),
        (lambda: fxcu.trend_signal("close", 50, 20), "fast window must be shorter than slow"),
    ],
)
def test_feature_parameters_are_checked(bad, words):
    with pytest.raises(ValueError, match=f"^{re.escape(words)}$"):
        bad()


def test_feature_problems_flags_out_of_range_values():
    copper, usdclp = real_copper(), real_usdclp()
    features = fxcu.copper_features(copper, usdclp)
    now = datetime(2024, 7, 16, tzinfo=UTC)
    assert (
        fxcu.feature_problems(
            features, usdclp, copper.filter(pl.col(fxcu.DATE) <= date(2024, 7, 15)), now=now, max_age=timedelta(days=5)
        )
        == []
    )
    broken = features.with_columns(pl.lit(140.0).alias("copper_rsi_14"))
    found = fxcu.feature_problems(
        broken, usdclp, copper, now=datetime(2026, 11, 1, tzinfo=UTC), max_age=timedelta(days=5)
    )
    assert any(p.startswith("copper_rsi_14") for p in found) and any("stale" in p for p in found)


def test_feature_problems_holds_the_copper_averages_to_coppers_range():
    copper, usdclp = real_copper(), real_usdclp()
    features = fxcu.copper_features(copper, usdclp)
    now = datetime(2024, 7, 16, tzinfo=UTC)
    low = fxcu.COPPER_RULES.low
    broken = features.with_columns(pl.lit(low * 0.9).alias("copper_sma_20"), pl.lit(low).alias("copper_sma_50"))
    found = fxcu.feature_problems(broken, usdclp, None, now=now, max_age=timedelta(days=5))
    assert found == [f"copper_sma_20: {broken.height} values out of range"]  # the bound itself is in range


def test_load_offline_builds_the_bundle(tmp_path):
    write_real_warehouse(tmp_path)
    config = make_config(tmp_path, data_dir=tmp_path, offline=True)
    bundle = fxcu.load(config, now=CLP_END)
    assert bundle.sources == {"usdclp": "cache", "copper": "cache"}
    assert bundle.copper_frequency == "daily" and bundle.copper_features.height == bundle.usdclp.height
    assert "cached data" in bundle.degraded


def test_load_copper_off_has_no_features(tmp_path):
    write_real_warehouse(tmp_path)
    config = make_config(tmp_path, data_dir=tmp_path, offline=True, copper=False)
    bundle = fxcu.load(config, now=CLP_END)
    assert bundle.copper_features is None and "no copper" in bundle.degraded


def test_main_validate_offline_reports_features_and_staleness(tmp_path, capsys):
    write_real_warehouse(tmp_path)
    code = fxcu.main(["validate", "--offline"], {"FXCU_DATA_DIR": str(tmp_path)})
    out = capsys.readouterr().out
    assert code == 1  # the 2024 history is stale today
    assert "copper_rsi_14" in out and "PROBLEM: usdclp: stale" in out


def test_main_validate_offline_fresh_data_passes(tmp_path, capsys):
    write_real_warehouse(tmp_path)
    code = fxcu.main(["validate", "--offline"], {"FXCU_DATA_DIR": str(tmp_path), "FXCU_MAX_AGE_DAYS": "100000"})
    out = capsys.readouterr().out
    assert code == 0 and "all checks passed" in out


# -- Core: forecasting -----------------------------------------------------------------


@pytest.mark.parametrize(("days", "steps"), [(1, 1), (7, 5), (15, 11), (30, 22), (90, 65)])
def test_horizon_steps(days, steps):
    assert fxcu.horizon_steps(days) == steps


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 1, 1)), st.sampled_from([7, 15, 30, 90]))
def test_trading_dates_are_weekdays_within_the_horizon(last, days):
    dates = fxcu.trading_dates(last, days)
    assert all(d.weekday() < 5 and last < d <= last + timedelta(days=days) for d in dates)
    assert dates == sorted(set(dates))
    assert 5 * (days // 7) + max(0, days % 7 - 2) <= len(dates) <= fxcu.horizon_steps(days)
    brute = [last + timedelta(k) for k in range(1, days + 1) if (last + timedelta(k)).isoweekday() <= 5]
    assert dates == brute


def test_trading_dates_from_a_friday():
    assert fxcu.trading_dates(date(2024, 7, 12), 7) == [
        date(2024, 7, 15),
        date(2024, 7, 16),
        date(2024, 7, 17),
        date(2024, 7, 18),
        date(2024, 7, 19),
    ]


def test_score_by_hand():
    actual = np.array([100.0, 110.0])
    pred = np.array([102.0, 107.0])
    last = np.array([101.0, 108.0])
    bounds = {
        "lo-80": np.array([99.0, 108.0]),
        "hi-80": np.array([101.0, 109.0]),
        "lo-95": np.array([90.0, 100.0]),
        "hi-95": np.array([110.0, 120.0]),
    }
    s = fxcu.score(pred, actual, last, bounds, naive_rmse=4.0)
    assert s.rmse == pytest.approx(math.sqrt((4 + 9) / 2))
    assert s.mae == pytest.approx(2.5)
    assert s.mape == pytest.approx((2 / 100 + 3 / 110) / 2 * 100)
    assert s.ratio == pytest.approx(math.sqrt(6.5) / 4)
    assert s.direction == 0.0  # called up (102 > 101) but fell; called down (107 < 108) but rose
    assert (s.coverage_80, s.coverage_95) == (0.5, 1.0)


@pytest.mark.slow
@given(st.integers(3, 30), st.integers(1, 5), st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_online_weights_use_only_realised_errors(n, steps, seed):
    rng = np.random.default_rng(seed)
    cutoffs = np.arange(n) * 3
    sq = rng.random((n, 4))
    w = fxcu.online_weights(sq, cutoffs, steps, "inverse_mse", fxcu.MODELS)
    assert np.allclose(w.sum(axis=1), 1)
    for i in range(n):
        future = cutoffs + steps > cutoffs[i]
        perturbed = sq.copy()
        perturbed[future] = rng.random((int(future.sum()), 4)) * 100
        assert np.allclose(fxcu.online_weights(perturbed, cutoffs, steps, "inverse_mse", fxcu.MODELS)[i], w[i])


@pytest.mark.slow
@given(st.integers(3, 30), st.integers(1, 5), st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_online_rule_uses_only_realised_outcomes(n, steps, seed):
    rng = np.random.default_rng(seed)
    cutoffs = np.arange(n) * 3
    rule_sq = {rule: rng.random(n) for rule in fxcu.RULES}
    picks = fxcu.online_rule(rule_sq, cutoffs, steps)
    assert picks[0] == "naive"
    for i in range(n):
        future = cutoffs + steps > cutoffs[i]
        perturbed = {rule: np.where(future, rng.random(n) * 100, sq) for rule, sq in rule_sq.items()}
        assert fxcu.online_rule(perturbed, cutoffs, steps)[i] == picks[i]


def test_choose_ensemble_serves_a_combination_only_when_it_beats_naive():
    rng = np.random.default_rng(7)
    actual = 900 * np.exp(np.cumsum(rng.normal(0, 0.01, 80)))
    cutoffs = np.arange(80) * 2
    naive = np.log(actual) + rng.normal(0, 0.02, 80)
    good = np.log(actual) + rng.normal(0, 0.002, 80)  # a model far better than Naive
    bad = naive + 0.05  # Naive's errors plus a 5% bias: any weight on it hurts
    won = fxcu.choose_ensemble({"Naive": naive, "good": good}, actual, cutoffs, 1)
    assert won.rule != "naive" and won.notes == () and np.array_equal(won.served, won.combination)
    assert won.weights[1] > won.weights[0]
    lost = fxcu.choose_ensemble({"Naive": naive, "bad": bad}, actual, cutoffs, 1)
    assert lost.rule == "naive" and np.array_equal(lost.served, naive) and "serving Naive" in lost.notes[0]
    assert list(lost.weights) == [1.0, 0.0]


def test_final_and_online_weight_rules():
    sq = np.array([[1.0, 4.0], [1.0, 4.0]])
    names = ["Naive", "AutoETS"]
    assert fxcu.final_weights(sq, "inverse_mse", names) == pytest.approx([0.8, 0.2])
    assert fxcu.final_weights(sq, "naive", names) == pytest.approx([1, 0])
    # Naive is found by name, wherever its column is
    assert fxcu.final_weights(sq, "naive", names[::-1]) == pytest.approx([0, 1])
    assert fxcu.online_weights(sq, np.array([0, 10]), 5, "naive", names[::-1])[1] == pytest.approx([0, 1])
    assert fxcu.online_weights(sq, np.array([0, 10]), 5, "equal", names)[1] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="unknown ensemble rule 'median'"):
        fxcu.online_weights(sq, np.array([0, 10]), 5, "median", names)


def test_copper_frame_regressor_is_known_at_every_origin():
    usdclp, copper = make_prices(300, seed=1), make_prices(300, seed=2, level=4.0)
    uni, exog, dates = fxcu.univariate_frame(usdclp), fxcu.copper_frame(usdclp, copper, 5), fxcu.ds_dates(usdclp)
    days = usdclp[fxcu.DATE].to_list()
    date_of = dict(dates.iter_rows())
    lag_of = dict(exog.select("ds", "copper_lag").iter_rows())
    # the row dated D carries the copper known 5 trading days before D (itself from before that day)
    for ds in (10, 100, 250):
        five_before = days[days.index(date_of[ds]) - 5]
        (known,) = copper_known_before([five_before], copper)
        assert lag_of[ds] == pytest.approx(math.log(known))
    assert uni["ds"].to_list() == dates["ds"].to_list() and set(exog["ds"]) <= set(uni["ds"])
    assert exog["ds"].max() == uni["ds"].max()
    # no daily copper, no copper frame
    assert fxcu.copper_frame(usdclp, None, 5) is None


@pytest.mark.slow
def test_backtest_never_uses_data_after_its_origin():
    """Perturbing every price after an origin leaves that origin's forecasts unchanged."""
    usdclp, copper = make_prices(700, seed=4), make_prices(700, seed=5, level=4.0)
    kwargs = {"windows": 6, "step_size": 20, "history": 700}
    base = fxcu.backtest(usdclp, copper, "7d", **kwargs)
    origin = base.origins[2]
    bumped = scaled_after(usdclp, origin, 1.3)
    bumped_copper = scaled_after(copper, origin, 0.5, inclusive=True)
    other = fxcu.backtest(bumped, bumped_copper, "7d", **kwargs)
    # Ensemble is left out: whether it serves the combination or Naive is one decision over all origins
    cols = [*fxcu.MODELS, fxcu.COPPER_MODEL, fxcu.COMBINATION]
    before = base.predictions.filter(pl.col("origin") <= origin).select(cols)
    after = other.predictions.filter(pl.col("origin") <= origin).select(cols)
    assert before.height == 3
    assert_frame_equal(before, after, check_exact=False, rel_tol=1e-9)
    later = other.predictions.filter(pl.col("origin") > origin)["Naive"].to_numpy()
    assert not np.allclose(later, base.predictions.filter(pl.col("origin") > origin)["Naive"].to_numpy())


@pytest.mark.slow
def test_a_horizons_backtest_is_the_same_alone_or_with_the_longest(monkeypatch):
    """`run 7d` cross-validates 5 steps, `run all` 65, from the same origins: the 7d backtest is identical."""
    usdclp, copper = make_prices(700, seed=6), make_prices(700, seed=7, level=4.0)
    kwargs = {"windows": 6, "step_size": 20, "history": 700}
    steps, real = [], fxcu.cross_validate
    monkeypatch.setattr(
        fxcu, "cross_validate", lambda frame, models, h, *a, **k: steps.append(h) or real(frame, models, h, *a, **k)
    )
    alone = fxcu.backtest_all(usdclp, copper, ["7d"], **kwargs)["7d"]
    assert steps == [5, 5]  # the univariate models, then the copper model: 5 steps each, not 65
    with_90d = fxcu.backtest_all(usdclp, copper, ["7d", "90d"], **kwargs)["7d"]
    assert alone.origins == with_90d.origins and len(alone.origins) == 6
    assert_frame_equal(alone.predictions, with_90d.predictions, check_exact=False, rel_tol=1e-12)
    assert alone.models == with_90d.models and alone.weights == with_90d.weights


def test_backtest_too_little_history_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        fxcu.backtest(make_prices(200), None, "90d")


@pytest.mark.slow
def test_backtest_on_real_data_is_honest(real_forecast_7d):
    bt = real_forecast_7d.backtest
    assert len(bt.origins) == 60 and bt.steps == 5
    assert set(bt.models) == {*fxcu.MODELS, fxcu.COPPER_MODEL, fxcu.COMBINATION, fxcu.ENSEMBLE}
    assert bt.ensemble.ratio <= 1.0
    # on this data combining loses to the random walk out of sample, and the run says so
    assert bt.models[fxcu.COMBINATION].ratio > 1.0 and bt.rule == "naive" and "serving Naive" in bt.notes[0]
    assert 0.75 <= bt.ensemble.coverage_80 <= 0.85 and 0.91 <= bt.ensemble.coverage_95 <= 0.98
    # Naive's RMSE from the price history alone: the close at each origin against the close 5
    # trading days later, origins every 20 trading days, the last one 65 trading days before the end
    closes = real_usdclp()[fxcu.CLOSE].to_numpy()
    n = len(closes)
    origins = [n - 1 - 65 - 20 * k for k in range(60)][::-1]
    errors = np.array([closes[i] - closes[i + 5] for i in origins])
    assert bt.models["Naive"].rmse == pytest.approx(float(np.sqrt(np.mean(errors**2))), rel=1e-9)
    dates = real_usdclp()[fxcu.DATE].to_list()
    assert list(bt.origins) == [dates[i] for i in origins]
    assert bt.copper_used and bt.copper_ablation_pct is not None and bt.copper_model_pct is not None
    assert sum(bt.weights.values()) == pytest.approx(1)


@pytest.mark.slow
def test_forecast_path_has_every_trading_day_model_and_ordered_intervals(real_forecast_7d):
    fc = real_forecast_7d
    assert fc.origin == date(2024, 7, 15)
    dates = fxcu.trading_dates(fc.origin, 7)
    assert set(fc.path["model"]) == {*fxcu.MODELS, fxcu.COPPER_MODEL, fxcu.ENSEMBLE}
    for _, rows in fc.path.group_by("model"):
        assert rows[fxcu.DATE].to_list() == dates and rows["step"].to_list() == list(range(1, len(dates) + 1))
    ordered = fc.path.select(
        (pl.col("lo_95") <= pl.col("lo_80"))
        & (pl.col("lo_80") <= pl.col("forecast"))
        & (pl.col("forecast") <= pl.col("hi_80"))
        & (pl.col("hi_80") <= pl.col("hi_95"))
    )
    assert ordered.to_series().all()
    naive = fc.path.filter(pl.col("model") == "Naive")["forecast"]
    assert np.allclose(naive.to_numpy(), fc.last_close)
    assert fc.final[fxcu.DATE] == dates[-1]


@pytest.mark.slow
def test_forecast_without_copper_has_no_copper_model():
    fc = fxcu.forecast(real_usdclp(), None, "15d", windows=60)
    assert fxcu.COPPER_MODEL not in set(fc.path["model"]) and fc.backtest.copper_ablation_pct is None


def served_forecast(
    point: np.ndarray, sd: np.ndarray | None, naive_sd: np.ndarray, shape: list[float] | None = None
) -> fxcu.Forecast:
    """A Forecast as `forecast_all` builds it, from a statsforecast-like frame: the point (log) with Naive's range of
    sd `naive_sd`, served with `sd` (the chosen model's) or, given None, with Naive's own; with FHS's `shape`."""
    steps, z = len(point), {80: 1.2815515655446004, 95: 1.959963984540054}  # scipy's norm.ppf(0.9), (0.975)
    frame = pl.DataFrame({"unique_id": ["usdclp"] * steps, "ds": np.arange(steps), "Naive": point})
    frame = frame.with_columns(
        pl.Series(f"Naive-{side}-{lv}", point + sign * z[lv] * naive_sd)
        for lv in (80, 95)
        for side, sign in (("lo", -1), ("hi", 1))
    )
    dates = fxcu.trading_dates(date(2024, 7, 15), 7)[:steps]
    path = fxcu._forecast_path(frame, {"Naive": 1.0}, dates, None if sd is None else sd**2, shape)
    scale = float(fxcu.served_scales(frame, None if sd is None else sd**2)[-1])
    shaped = None if shape is None else tuple(shape)
    return fxcu.Forecast("7d", date(2024, 7, 15), float(np.exp(point[0])), path, None, scale=scale, shape=shaped)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(
    level=st.floats(500, 1500),
    sd=st.floats(0.001, 0.2),
    naive=st.booleans(),
    q=st.floats(0.0005, 0.9995),
    x=st.floats(0.5, 2.0),
    dx=st.floats(0.001, 0.5),
)
def test_forecast_quantiles_are_the_served_bounds_and_invert_the_odds(level, sd, naive, q, x, dx):
    steps = 5
    sds = sd * np.sqrt(np.arange(1, steps + 1) / steps)
    fc = served_forecast(np.full(steps, math.log(level)), None if naive else sds, sds)
    final = fc.final
    # the 80% and 95% bounds are these quantiles, exactly
    assert (fc.quantile(0.10), fc.quantile(0.90)) == (final["lo_80"], final["hi_80"])
    assert (fc.quantile(0.025), fc.quantile(0.975)) == (final["lo_95"], final["hi_95"])
    assert fc.scale == pytest.approx(sd, rel=1e-9)
    # written out with the stdlib's normal, not scipy: median * exp(sd * z_q)
    assert fc.quantile(q) == pytest.approx(level * math.exp(sd * NormalDist().inv_cdf(q)), rel=1e-9)
    assert fc.prob_below(fc.quantile(q)) == pytest.approx(q, abs=1e-9)
    price = level * x
    below = fc.prob_below(price)
    if 1e-9 < below < 1 - 1e-9:  # a probability that rounds to 0 or 1 has no quantile to return to
        assert fc.quantile(below) == pytest.approx(price, rel=1e-6)
    assert fc.prob_above(price) + fc.prob_below(price) == pytest.approx(1.0)
    assert fc.prob_above(price * (1 + dx)) <= fc.prob_above(price)


@settings(max_examples=50, deadline=None)
@given(
    gaps=st.lists(st.floats(0.001, 1.0), min_size=100, max_size=100),
    level=st.floats(500, 1500),
    scale=st.floats(0.001, 0.2),
    q=st.floats(0.001, 0.999),
    x=st.floats(0.5, 2.0),
    dx=st.floats(0.001, 0.5),
)
def test_a_shaped_density_quantile_and_odds_are_inverse(gaps, level, scale, q, x, dx):
    """Any increasing shape (101 percentiles): odds invert quantiles, above + below = 1, above falls as x rises."""
    shape = list(np.cumsum([0.0, *gaps]) - sum(gaps) / 2)
    price = fxcu.served_quantile(level, scale, q, shape)
    # by hand: the percentile grid is linear, so q sits a fraction of the way between two of its points
    low = min(int(q * 100), 99)
    z = shape[low] + (q * 100 - low) * (shape[low + 1] - shape[low])
    assert price == pytest.approx(level * math.exp(scale * z), rel=1e-9)
    below, above = fxcu.served_odds(level, scale, price, shape)
    assert below == pytest.approx(q, abs=1e-9) and below + above == pytest.approx(1.0)
    assert (
        fxcu.served_odds(level, scale, level * x * (1 + dx), shape)[1]
        <= fxcu.served_odds(level, scale, level * x, shape)[1]
    )
    # a Forecast serving the shape: its 80% and 95% bounds are these quantiles, exactly
    fc = served_forecast(np.full(5, math.log(level)), np.full(5, scale), np.full(5, scale), shape)
    final = fc.final
    assert (fc.quantile(0.10), fc.quantile(0.90), fc.quantile(0.025), fc.quantile(0.975)) == (
        final["lo_80"],
        final["hi_80"],
        final["lo_95"],
        final["hi_95"],
    )
    assert fc.prob_below(fc.quantile(q)) == pytest.approx(q, abs=1e-9)
    # nothing beyond the extremes
    assert fxcu.served_odds(level, scale, level * math.exp(scale * shape[-1]) * 1.001, shape) == (1.0, 0.0)
    assert fxcu.served_odds(level, scale, level * math.exp(scale * shape[0]) * 0.999, shape) == (0.0, 1.0)


@pytest.mark.parametrize("q", [0, 1, -0.1, 1.5, math.nan])
def test_forecast_quantile_outside_0_1_and_a_level_not_above_0_raise(q):
    fc = served_forecast(np.full(5, math.log(900.0)), None, np.full(5, 0.02))
    with pytest.raises(ValueError, match="between 0 and 1"):
        fc.quantile(q)
    for level in (0.0, -5.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="positive number"):
            fc.prob_above(level)


@pytest.mark.slow
def test_real_forecast_bounds_are_its_quantiles(real_forecast_7d):
    fc, final = real_forecast_7d, real_forecast_7d.final
    assert (fc.quantile(0.10), fc.quantile(0.90), fc.quantile(0.025), fc.quantile(0.975)) == (
        final["lo_80"],
        final["hi_80"],
        final["lo_95"],
        final["hi_95"],
    )
    naive = fc.path.filter(pl.col("model") == "Naive").tail(1).row(0, named=True)
    assert fc.scale == pytest.approx(math.log(naive["hi_95"] / naive["forecast"]) / 1.959963984540054, rel=1e-9)


# -- Core: proper scores ---------------------------------------------------------------


@given(st.integers(0, 10_000), st.floats(0.002, 0.05), st.sampled_from([0.5, 0.7, 0.8, 1.25, 1.5, 2.0]))
@settings(max_examples=40, deadline=None)
def test_proper_scores_rank_the_right_scale_first(seed, sigma, factor):
    rng = np.random.default_rng(seed)
    y = rng.normal(0, sigma, 4000)
    mu = np.zeros_like(y)
    right, wrong = np.full_like(y, sigma), np.full_like(y, sigma * factor)
    assert fxcu.crps(y, mu, right).mean() < fxcu.crps(y, mu, wrong).mean()
    columns = {"actual": y, "mu": mu}
    for name, sd in (("right", right), ("wrong", wrong)):
        columns |= {f"{name}_lo_{lv}": -fxcu.z_value(lv) * sd for lv in fxcu.LEVELS}
        columns |= {f"{name}_hi_{lv}": fxcu.z_value(lv) * sd for lv in fxcu.LEVELS}
    quantiles = {m: [f"{m}_lo_95", f"{m}_lo_80", "mu", f"{m}_hi_80", f"{m}_hi_95"] for m in ("right", "wrong")}
    scored = fxcu.wis(pl.DataFrame(columns), quantiles)
    assert scored["right"].mean() < scored["wrong"].mean()
    for level in fxcu.LEVELS:
        z = fxcu.z_value(level)
        assert (
            fxcu.interval_score(y, -z * right, z * right, level).mean()
            < fxcu.interval_score(y, -z * wrong, z * wrong, level).mean()
        )


def test_scores_match_their_textbook_forms():
    y, mu, sigma = np.array([0.0, 0.3, -2.0]), np.array([0.0, 0.0, 0.5]), np.array([1.0, 0.5, 2.0])
    assert fxcu.crps(y, mu, sigma) == pytest.approx(oracle_crps_normal(y, mu, sigma))
    # interval score: width, plus 2/alpha times the miss (alpha = 0.2 at 80%)
    assert fxcu.interval_score(np.array([0.0, 3.0]), np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 80) == pytest.approx(
        [2.0, 2 + 10 * 2]
    )
    assert fxcu.z_value(80) == pytest.approx(1.2815516) and fxcu.z_value(95) == pytest.approx(1.9599640)


def test_wis_is_bracher_et_al_at_any_price_level():
    """Median 0, outcome 1, N(0,1)'s 80% and 95% intervals: WIS 0.342 by hand; shifting every input changes nothing."""
    from scipy.stats import norm

    z80, z95 = norm.ppf(0.9), norm.ppf(0.975)
    by_hand = (abs(1 - 0) / 2 + 0.2 / 2 * (2 * z80) + 0.05 / 2 * (2 * z95)) / (2 + 1 / 2)  # both intervals hold 1
    assert (
        by_hand
        == pytest.approx(bracher_wis(1.0, 0.0, {80: (-z80, z80), 95: (-z95, z95)}))
        == pytest.approx(0.342, abs=5e-4)
    )
    n = 12  # the density backtest's path: `score_density`, whose means the run logs as `range_*_wis`
    for shift in (0.0, 5.0):
        frame = pl.DataFrame(
            {
                "y": np.full(n, 1.0 + shift),
                "last": np.full(n, shift),
                "Naive": np.ones(n),
                "vol20": np.linspace(0.01, 0.02, n),
                "origin": [date(2021, 1, 4) + timedelta(days=7 * i) for i in range(n)],
            }
        )
        assert fxcu.score_density(frame, ["Naive"], 5, reps=20)["Naive"].wis == pytest.approx(by_hand, rel=1e-12)
        # the ledger's path: `wis` on the served quantiles
        quantiles = {"m": ["lo95", "lo80", "mid", "hi80", "hi95"]}
        bounds = {"lo95": -z95, "lo80": -z80, "mid": 0.0, "hi80": z80, "hi95": z95}
        row = pl.DataFrame({"actual": [1.0 + shift]} | {k: [v + shift] for k, v in bounds.items()})
        assert fxcu.wis(row, quantiles)["m"][0] == pytest.approx(by_hand, rel=1e-12)


def test_wis_counts_the_median_term_by_hand():
    """Bracher et al. (2021) eq. 2 by hand, median 4 and outcome 10 (above both intervals), then outcome 3 (inside):

    y = 10: |y - m| / 2 = 3; IS80 = (6 - 2) + 2 / 0.2 x (10 - 6) = 44, weighted 0.2 / 2 -> 4.4; IS95 = (8 - 1)
    + 2 / 0.05 x (10 - 8) = 87, weighted 0.05 / 2 -> 2.175; (3 + 4.4 + 2.175) / 2.5 = 3.83.
    y = 3: 0.5 + 0.1 x 4 + 0.025 x 7 = 1.075; / 2.5 = 0.43. Without the median term they would be 2.63 and 0.23.
    """
    row = pl.DataFrame({"actual": [10.0, 3.0], "lo95": 1.0, "lo80": 2.0, "mid": 4.0, "hi80": 6.0, "hi95": 8.0})
    scored = fxcu.wis(row, {"m": ["lo95", "lo80", "mid", "hi80", "hi95"]})
    assert scored["m"].to_list() == pytest.approx([3.83, 0.43], rel=1e-12)
    # the ledger's path: a live row forecast 4 with those bounds, its target closing at 10
    entry = ledger_row(date(2024, 1, 2), date(2024, 1, 9), forecast=4.0, last=4.0)
    entry |= {"lo_80": 2.0, "hi_80": 6.0, "lo_95": 1.0, "hi_95": 8.0}
    entry |= {"rw_lo_80": 2.0, "rw_hi_80": 6.0, "rw_lo_95": 1.0, "rw_hi_95": 8.0}
    ledger = fxcu.upsert_ledger(fxcu.empty_ledger(), [entry])
    prices = pl.DataFrame({fxcu.DATE: [date(2024, 1, 9)], fxcu.CLOSE: [10.0]})
    scored = fxcu.score_ledger(ledger, prices).row(0, named=True)
    assert scored["wis"] == pytest.approx(3.83, rel=1e-12) and scored["rw_wis"] == pytest.approx(3.83, rel=1e-12)


# -- Core: interval (variance) models and the weekly density backtest ------------------


def oracle_crps_normal(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gneiting & Raftery's closed form for a Gaussian forecast, written out here from scipy's pdf and cdf."""
    from scipy.stats import norm

    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def noisy_random_walk(n: int, sigma: float, noise: float, seed: int) -> np.ndarray:
    """Log prices: a random walk with daily sd `sigma`, each close quoted with i.i.d. noise of sd `noise`."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, sigma, n)) + rng.normal(0, noise, n)


def test_multi_day_estimator_is_right_and_sqrt_k_daily_too_wide_under_quote_noise():
    sigma, noise = 0.005, 0.003
    logp = noisy_random_walk(10_000, sigma, noise, seed=3)
    truth_5d = 5 * sigma**2 + 2 * noise**2  # the noise enters a k-day return twice, whatever k
    daily = fxcu.base_variances(logp, 5)
    # Naive: sqrt(steps) times the daily sd, i.e. 5 x (sigma^2 + 2 noise^2): 50% too much variance here
    assert daily["Naive"][4] == pytest.approx(5 * (sigma**2 + 2 * noise**2), rel=0.05)
    assert daily["Naive"][4] > 1.35 * truth_5d and daily["EWMA"][4] > 1.2 * truth_5d
    # the long-run variance of 5-day returns is right
    assert fxcu.recal_features(logp, None)["long_run"][-1] * 5 == pytest.approx(truth_5d, rel=0.08)
    # the EWMA of 5-day returns is right on average over origins (each one is noisy: ~30 weeks' worth)
    ewma_5d = [fxcu.base_variances(logp[: end + 1], 5)["EWMA_5d"][4] for end in range(2000, 10_000, 40)]
    assert np.mean(ewma_5d) == pytest.approx(truth_5d, rel=0.1)
    blend = [fxcu.base_variances(logp[: end + 1], 5)["EWMA_5d_blend"][4] for end in range(2000, 10_000, 40)]
    assert np.mean(blend) == pytest.approx(truth_5d, rel=0.1)


def prices_from_log(logp: np.ndarray, *, start: date = date(2010, 1, 4)) -> pl.DataFrame:
    days = pl.date_range(start, start + timedelta(days=len(logp) * 2), eager=True)
    return pl.DataFrame({fxcu.DATE: days.filter(days.dt.weekday() < 6).head(len(logp)), fxcu.CLOSE: 800 * np.exp(logp)})


@pytest.fixture(scope="module")
def garch_prices() -> pl.DataFrame:
    """Prices whose daily log returns are GARCH(1,1) with Gaussian errors (arch's simulator, seeded)."""
    from arch.univariate import GARCH, Normal, ZeroMean

    sim = ZeroMean(None, volatility=GARCH(p=1, q=1), distribution=Normal(seed=11)).simulate(
        [0.02, 0.12, 0.86], 3000, burn=500
    )
    return prices_from_log(np.concatenate([[0.0], np.cumsum(sim["data"].to_numpy() / 100)]))


@pytest.mark.slow
def test_coverage_on_simulated_garch_data(garch_prices):
    """On GARCH(1,1) returns the EWMA ranges cover near nominal, turbulent weeks too; Naive's fixed width does not."""
    db = fxcu.density_backtest_all(
        garch_prices, None, ["7d"], origins=300, history=1000, models=["Naive", "EWMA", "EWMA_5d"], reps=200
    )["7d"]
    scores = db.models
    assert scores["Naive"].origins == 300
    for name in ("EWMA", "EWMA_5d"):
        assert 0.72 <= scores[name].coverage_80 <= 0.88 and 0.89 <= scores[name].coverage_95 <= 0.99
        assert scores[name].coverage_by["turbulent"][0] > scores["Naive"].coverage_by["turbulent"][0]
    assert scores["EWMA"].crps_ratio.value < 1
    # Naive's constant width is too wide in calm weeks and too narrow in turbulent ones
    assert scores["Naive"].coverage_by["calm"][0] > 0.88 and scores["Naive"].coverage_by["turbulent"][0] < 0.8


@pytest.mark.slow
def test_density_backtest_never_uses_data_after_its_origin():
    """Perturbing every price after an origin leaves each interval model's range at that origin, and the pick, as is."""
    usdclp, copper = make_prices(900, seed=4), make_prices(900, seed=5, level=4.0)
    models = list(fxcu.RUN_INTERVAL_MODELS)
    kwargs = {"horizons": ["7d", "30d"], "origins": 16, "history": 700, "models": models, "reps": 50}
    base = fxcu.density_backtest_all(usdclp, copper, **kwargs)
    origin = base["7d"].origins[8]
    bumped = scaled_after(usdclp, origin, 1.3)
    bumped = scaled_after(bumped, origin, np.exp(np.random.default_rng(1).normal(0, 0.02, 900)))
    bumped_copper = scaled_after(copper, origin, 0.5, inclusive=True)
    other = fxcu.density_backtest_all(bumped, bumped_copper, **kwargs)
    for horizon in kwargs["horizons"]:
        cols = ["origin", "vol20", "last", *models, fxcu.SERVED, "pick"]
        before = base[horizon].predictions.filter(pl.col("origin") <= origin).select(cols)
        after = other[horizon].predictions.filter(pl.col("origin") <= origin).select(cols)
        assert before.height == 9
        assert_frame_equal(before, after, check_exact=False, rel_tol=1e-9)
        later = pl.col("origin") > origin
        assert not np.allclose(
            base[horizon].predictions.filter(later)["EWMA"], other[horizon].predictions.filter(later)["EWMA"]
        )


@given(st.integers(0, 1000), st.integers(1, 15))
@settings(max_examples=30, deadline=None)
def test_choose_interval_model_uses_only_realised_outcomes(seed, steps):
    rng = np.random.default_rng(seed)
    n = 40
    frame = pl.DataFrame(
        {
            "ds": np.arange(n) * 5,
            "last": np.zeros(n),
            "y": rng.normal(0, 0.02, n),
            "Naive": np.full(n, 0.02),
            "EWMA": rng.uniform(0.005, 0.05, n),
        }
    )
    picks = fxcu.choose_interval_model(frame, ["Naive", "EWMA"], steps).picks
    assert picks[0] == "Naive"
    for i in (5, 20, 35):
        future = frame["ds"] + steps > frame["ds"][i]
        perturbed = frame.with_columns(pl.when(future).then(pl.col("y") * 10).otherwise(pl.col("y")).alias("y"))
        assert fxcu.choose_interval_model(perturbed, ["Naive", "EWMA"], steps).picks[i] == picks[i]


def test_choose_interval_model_serves_naive_unless_a_candidate_beats_it():
    rng = np.random.default_rng(2)
    n = 200
    y = rng.normal(0, 0.01, n)
    frame = pl.DataFrame(
        {
            "ds": np.arange(n) * 5,
            "last": np.zeros(n),
            "y": y,
            "Naive": np.full(n, 0.03),
            "right": np.full(n, 0.01),
            "wider": np.full(n, 0.06),
        }
    )
    won = fxcu.choose_interval_model(frame, ["Naive", "right", "wider"], 5)
    assert won.live == "right" and won.notes == () and won.picks[-1] == "right"
    lost = fxcu.choose_interval_model(frame, ["Naive", "wider"], 5)
    assert lost.live == "Naive" and set(lost.picks) == {"Naive"} and lost.notes == ()
    flip = frame.with_columns(pl.Series("y", rng.normal(0, 0.03, n) * np.where(np.arange(n) < 100, 0.3, 1)))
    late = fxcu.choose_interval_model(flip, ["Naive", "right"], 5)  # right early, far too narrow later
    assert late.live == "Naive" and "serving Naive's range" in late.notes[0]


def test_choose_interval_model_serves_naive_when_a_model_wins_only_after_the_last_origin():
    """Three weekly origins: two calm outcomes, then a 30% move. The wide model loses on what is known at every
    origin (each pick is Naive, so the picks' CRPS equals Naive's), and only wins once the last outcome is in: the
    picks did not beat Naive, so Naive is served live, with nothing to say."""
    frame = pl.DataFrame(
        {"ds": [0, 5, 10], "last": [0.0, 0.0, 0.0], "y": [0.001, -0.002, 0.3], "Naive": [0.02] * 3, "wide": [0.05] * 3}
    )
    y = frame["y"].to_numpy()
    naive, wide = (oracle_crps_normal(y, np.zeros(3), np.full(3, s)) for s in (0.02, 0.05))
    assert naive[0] < wide[0] and naive[:2].mean() < wide[:2].mean() and wide.mean() < naive.mean()
    got = fxcu.choose_interval_model(frame, ["Naive", "wide"], 5)
    assert got.picks == ("Naive", "Naive", "Naive") and got.served_sigma.tolist() == [0.02] * 3
    assert (got.live, got.notes) == ("Naive", ())


def oracle_choice(frame: pl.DataFrame, models: list[str], steps: int) -> tuple[list[str], list[float], str, list[str]]:
    """`choose_interval_model` in plain loops: at each origin (and after the last), the mean CRPS (scipy's closed
    form, `oracle_crps_normal`) over the outcomes whose date ds + steps is on or before it; the lowest wins only by
    beating Naive's (the first of equals; Naive when nothing is known). Returns picks, served sigmas, live, notes."""
    rows = frame.to_dicts()
    crps_of = [
        {m: float(oracle_crps_normal(np.array(r["y"]), np.array(r["last"]), np.array(r[m]))) for m in models}
        for r in rows
    ]
    chosen = []
    for origin in [r["ds"] for r in rows] + [math.inf]:
        known = [c for r, c in zip(rows, crps_of, strict=True) if r["ds"] + steps <= origin]
        if not known:
            chosen.append("Naive")
            continue
        mean = {m: sum(c[m] for c in known) / len(known) for m in models}
        best = min(models, key=lambda m: mean[m])  # the first of equals
        chosen.append(best if mean[best] < mean["Naive"] else "Naive")
    picks, served = chosen[:-1], [r[m] for r, m in zip(rows, chosen, strict=False)]
    served_crps = sum(
        float(oracle_crps_normal(np.array(r["y"]), np.array(r["last"]), np.array(sd)))
        for r, sd in zip(rows, served, strict=True)
    ) / len(rows)
    naive_crps = sum(c["Naive"] for c in crps_of) / len(rows)
    if served_crps < naive_crps:
        return picks, served, chosen[-1], []
    if set(picks) == {"Naive"}:
        return picks, served, "Naive", []
    note = (
        f"choosing a range model lost to Naive's range out of sample ({served_crps / naive_crps:.4f}x its CRPS): "
        "serving Naive's range"
    )
    return picks, served, "Naive", [note]


def choice_frame(n: int, seed: int, early: float = 1.0, late: float = 1.0) -> pl.DataFrame:
    """Origins every 5 days (a 5-day outcome is known exactly at the next origin); outcomes of sd 0.02 x `early` in
    the first half and x `late` in the second; Naive's sigma 0.02, its twin (a tie goes to Naive), a narrower and
    a wider one."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "ds": np.arange(n) * 5,
            "last": rng.normal(0, 0.001, n),
            "y": rng.normal(0, 0.02, n) * np.where(np.arange(n) < n // 2, early, late),
            "Naive": np.full(n, 0.02),
            "twin": np.full(n, 0.02),
            "narrow": rng.uniform(0.004, 0.012, n),
            "wide": rng.uniform(0.03, 0.06, n),
        }
    )


@pytest.mark.parametrize(
    ("models", "early", "late", "live", "noted"),
    [
        (["twin", "Naive"], 1.0, 1.0, "Naive", False),  # a tie with Naive: Naive at every origin, nothing to say
        (["Naive", "twin", "narrow", "wide"], 0.4, 0.4, "narrow", False),  # calm outcomes: narrow wins, served live
        (["twin", "narrow", "Naive", "wide"], 0.3, 1.5, "Naive", True),  # narrow right early, wrong later: a note
        (["wide", "Naive", "narrow"], 2.5, 2.5, "wide", False),
    ],
)
def test_choose_interval_model_matches_the_plain_loop(models, early, late, live, noted):
    """Every pick, every served sigma, the live model and the note, against `oracle_choice` on 30 origins."""
    frame = choice_frame(30, 1, early, late)
    picks, served, want_live, notes = oracle_choice(frame, models, 5)
    assert (want_live, bool(notes)) == (live, noted)  # the cases cover a win, a tie and a loss with a note
    got = fxcu.choose_interval_model(frame, models, 5)
    assert list(got.picks) == picks and got.served_sigma.tolist() == pytest.approx(served, rel=1e-12)
    assert (got.live, list(got.notes)) == (want_live, notes)
    assert "twin" not in got.picks  # a tie with Naive never moves the pick


@pytest.mark.slow
@given(st.integers(0, 10_000), st.integers(1, 12), st.sampled_from([0.3, 1.0, 2.0]), st.sampled_from([0.3, 1.0, 2.0]))
@settings(max_examples=25, deadline=None)
def test_choose_interval_model_matches_the_plain_loop_on_any_draw(seed, steps, early, late):
    frame = choice_frame(24, seed, early, late)
    models = ["twin", "Naive", "narrow", "wide"]
    picks, served, live, notes = oracle_choice(frame, models, steps)
    got = fxcu.choose_interval_model(frame, models, steps)
    assert list(got.picks) == picks and got.served_sigma.tolist() == pytest.approx(served, rel=1e-12)
    assert (got.live, list(got.notes)) == (live, notes)


def test_density_origins_are_weekly_and_leave_the_longest_horizon_known():
    rows = fxcu.density_origins(1000, longest=65, origins=50, every=5, min_history=500)
    assert rows[-1] == 1000 - 1 - 65 and np.all(np.diff(rows) == 5) and len(rows) == 50
    # too little history for 252 origins: as many as leave 500 rows before the first one
    assert fxcu.density_origins(600, longest=65) == [504, 509, 514, 519, 524, 529, 534]


def test_ratio_ci_brackets_the_ratio_and_is_exact_for_equal_scores():
    rng = np.random.default_rng(0)
    naive = rng.gamma(2, 1, 250)
    scores = {"Naive": naive, "same": naive.copy(), "better": naive * rng.uniform(0.8, 1.0, 250)}
    ratios = fxcu.ratio_ci(scores, "Naive", steps=22)
    assert (ratios["same"].value, ratios["same"].lo, ratios["same"].hi) == pytest.approx((1, 1, 1))
    assert ratios["better"].lo <= ratios["better"].value <= ratios["better"].hi < 1
    assert ratios["better"].value == pytest.approx(scores["better"].mean() / naive.mean())


def overlapping_outcomes(n: int, steps: int, every: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Log prices of a unit-variance daily random walk, and the `steps`-day outcome at origins `every` days apart."""
    walk = np.cumsum(np.random.default_rng(seed).normal(0, 1, n * every + steps + 1))
    origins = np.arange(0, n * every, every)
    return walk[origins], walk[origins + steps]


def test_pit_is_uniform_when_the_model_is_right_and_u_shaped_when_its_scale_is_halved():
    steps = 22  # 30d outcomes from weekly origins: each overlaps the next four
    last, y = overlapping_outcomes(600, steps, fxcu.DENSITY_EVERY, seed=1)
    sigma = np.full(len(y), math.sqrt(steps))
    right = fxcu.pit(y, last, sigma)
    # the forecast CDF at the outcome, written out with the stdlib's normal
    assert right[:5] == pytest.approx([NormalDist(m, s).cdf(v) for v, m, s in zip(y[:5], last, sigma, strict=False)])
    deciles = fxcu.pit_deciles(right)
    assert deciles.sum() == pytest.approx(1) and np.abs(deciles - 0.1).max() < 0.04
    assert fxcu.pit_uniformity(right, steps, reps=300)[0] > 0.1
    narrow = fxcu.pit(y, last, sigma / 2)
    u = fxcu.pit_deciles(narrow)
    # outcomes pile up in the tails: 26% expected in each end decile, 5% in each middle one
    assert u[0] > 0.2 and u[-1] > 0.2 and u[4] + u[5] < 0.15
    assert fxcu.pit_uniformity(narrow, steps, reps=300)[0] < 0.01
    # several models at once share the resamples: each column's p-value is its own
    both = fxcu.pit_uniformity(np.column_stack([right, narrow]), steps, reps=300)
    assert list(both) == [fxcu.pit_uniformity(v, steps, reps=300)[0] for v in (right, narrow)]


def test_score_density_calibration_98_coverage_and_brier_skill_by_hand():
    steps = 5
    last, y = overlapping_outcomes(400, steps, fxcu.DENSITY_EVERY, seed=2)
    last, y = last * 0.01, y * 0.01  # daily sd 1% in log price
    sd = 0.01 * math.sqrt(steps)
    frame = pl.DataFrame(
        {
            "y": y,
            "last": last,
            "vol20": np.random.default_rng(0).uniform(size=len(y)),
            "origin": [date(2010, 1, 4) + timedelta(days=7 * i) for i in range(len(y))],
            "Naive": np.full(len(y), 2 * sd),  # twice too wide
            "right": np.full(len(y), sd),
        }
    )
    scores = fxcu.score_density(frame, ["Naive", "right"], steps, reps=200)
    z99 = NormalDist().inv_cdf(0.99)
    assert scores["right"].coverage_98 == pytest.approx(np.mean(np.abs(y - last) <= z99 * sd))
    assert 0.96 <= scores["right"].coverage_98 <= 1.0 and scores["Naive"].coverage_98 == 1.0
    assert scores["right"].pit_p > 0.05 and scores["Naive"].pit_p < 0.01  # too wide: PIT piles up in the middle
    for move in fxcu.BRIER_MOVES:
        event = fxcu.move_label(move)
        threshold = last + math.log1p(move)
        brier = {
            name: np.mean(
                [(1 - NormalDist(m, s).cdf(t) - (v > t)) ** 2 for v, m, t in zip(y, last, threshold, strict=True)]
            )
            for name, s in (("Naive", 2 * sd), ("right", sd))
        }
        skill = scores["right"].brier_skill[event]
        assert skill.value == pytest.approx(1 - brier["right"] / brier["Naive"], rel=1e-9)
        assert 0 < skill.lo <= skill.value <= skill.hi
        assert scores["Naive"].brier_skill[event].value == pytest.approx(0.0, abs=1e-12)
    assert [fxcu.move_label(m) for m in fxcu.BRIER_MOVES] == ["-5%", "-2.5%", "+2.5%", "+5%"]


@pytest.fixture(scope="module")
def real_density_7d():
    return fxcu.density_backtest_all(real_usdclp(), real_copper(), ["7d"], origins=60)["7d"]


@pytest.mark.slow
def test_density_backtest_on_real_data(real_density_7d):
    """60 weekly origins on the real CLP=X history: origins, Naive's width and CRPS checked from the prices alone."""
    db = real_density_7d
    closes = real_usdclp()[fxcu.CLOSE].to_numpy()
    n = len(closes)
    rows = [n - 1 - 65 - 5 * k for k in range(60)][::-1]
    assert list(db.origins) == [real_usdclp()[fxcu.DATE][i] for i in rows]
    logp = np.log(closes)
    sigma = np.array([math.sqrt(5 * np.mean(np.diff(logp[i - 2519 : i + 1]) ** 2)) for i in rows])
    y, last = logp[[i + 5 for i in rows]], logp[rows]
    assert db.models["Naive"].crps == pytest.approx(oracle_crps_normal(y, last, sigma).mean(), rel=1e-9)
    z80, z95 = 1.2815515655446004, 1.959963984540054
    assert db.models["Naive"].coverage_80 == pytest.approx(np.mean(np.abs(y - last) <= z80 * sigma))
    walk = [
        bracher_wis(a, m, {80: (m - z80 * s, m + z80 * s), 95: (m - z95 * s, m + z95 * s)})
        for a, m, s in zip(y, last, sigma, strict=True)
    ]
    assert db.models["Naive"].wis == pytest.approx(np.mean(walk), rel=1e-9)
    assert set(db.models) == {*fxcu.RUN_INTERVAL_MODELS, fxcu.SERVED} and db.copper_ablation_pct is not None
    for m in db.models.values():
        assert m.origins == 60 and m.crps_ratio.lo - 1e-12 <= m.crps_ratio.value <= m.crps_ratio.hi + 1e-12
        assert 0.6 <= m.coverage_80 <= 0.95 and set(m.coverage_by) == {*fxcu.REGIMES, *fxcu.NAMED_WINDOWS}
    assert db.live in fxcu.RUN_INTERVAL_MODELS


def oracle_blend_variance(logp: np.ndarray, steps: int) -> np.ndarray:
    """EWMA_5d_blend's variance of the k-day log return, k = 1..steps, in plain loops (docs/FORECASTING.md's recipe):
    the EWMA (decay 0.97, started at the first) of squared overlapping 5-day returns, per day, blended with their
    mean, today's weight (1 - 0.98^k) / (k (1 - 0.98)) as a variance shock decays, times k."""
    weekly = [(logp[i] - logp[i - 5]) ** 2 for i in range(5, len(logp))]
    level = weekly[0]
    for x in weekly[1:]:
        level = 0.97 * level + 0.03 * x
    daily_now, daily_long = level / 5, sum(weekly) / len(weekly) / 5
    out = []
    for k in range(1, steps + 1):
        weight = (1 - 0.98**k) / (k * (1 - 0.98))
        out.append((weight * daily_now + (1 - weight) * daily_long) * k)
    return np.array(out)


@pytest.mark.slow
def test_forecast_serves_the_chosen_range_and_says_so(real_forecast_7d):
    fc = real_forecast_7d
    assert fc.density is not None and fc.interval_model == fc.density.live
    assert fc.interval_label == "random walk; " + fxcu.INTERVAL_MODELS[fc.interval_model]
    # on the shared data every candidate's picks lost to Naive's range out of sample: Naive's range is served
    assert fc.interval_model == "Naive" and "serving Naive's range" in fc.density.notes[0]
    naive, ens = (fc.path.filter(pl.col("model") == name) for name in ("Naive", fxcu.ENSEMBLE))
    assert np.allclose(ens["lo_80"], naive["lo_80"]) and np.allclose(ens["hi_95"], naive["hi_95"])
    # the random walk's own range: sqrt(steps) times the root mean squared daily log change over 2520 days
    daily = np.diff(np.log(real_usdclp()[fxcu.CLOSE].to_numpy()[-2520:]))
    sd = np.sqrt(np.arange(1, 6) * np.mean(daily**2))
    assert np.log(naive["hi_95"].to_numpy() / naive["forecast"].to_numpy()) == pytest.approx(1.959964 * sd, rel=1e-3)
    # a density backtest that chose another range: the ensemble carries that model's width, Naive keeps its own
    chosen = dataclasses.replace(fc.density, live="EWMA_5d_blend")
    other = fxcu.forecast(real_usdclp(), real_copper(), "7d", backtest_result=fc.backtest, density_result=chosen)
    assert other.interval_model == "EWMA_5d_blend" and "EWMA of 5-day returns blended" in other.interval_label
    var = oracle_blend_variance(np.log(real_usdclp()[fxcu.CLOSE].to_numpy()[-fxcu.HISTORY :]), 5)
    ens2 = other.path.filter(pl.col("model") == fxcu.ENSEMBLE)
    assert np.log(ens2["hi_95"].to_numpy() / ens2["forecast"].to_numpy()) == pytest.approx(1.959964 * np.sqrt(var))
    assert np.log(ens2["forecast"].to_numpy() / ens2["lo_80"].to_numpy()) == pytest.approx(1.2815516 * np.sqrt(var))
    assert other.final["lo_80"] == pytest.approx(ens2["lo_80"][-1]) and not np.isclose(
        other.final["lo_80"], fc.final["lo_80"]
    )
    assert_frame_equal(other.path.filter(pl.col("model") == "Naive"), naive)


def oracle_fhs(logp: np.ndarray, steps: int) -> tuple[float, list[float]]:
    """FHS (docs/FORECASTING.md's recipe) in plain loops: each day's blended 5-day sd, the past `steps`-day returns
    over the sd of their first day (after 65 warm-up days), centred on their median, read at every percentile."""
    weight, ewma_5d, total, sds = (1 - 0.98**steps) / (steps * (1 - 0.98)), 0.0, 0.0, []
    for t in range(len(logp)):
        sq = (logp[t] - logp[t - 5]) ** 2 if t >= 5 else 0.0
        ewma_5d = sq if t == 0 else 0.97 * ewma_5d + 0.03 * sq
        total += sq
        long_run = total / max(t + 1 - 5, 1)
        sds.append(math.sqrt((weight * ewma_5d / 5 + (1 - weight) * long_run / 5) * steps))
    draws = sorted((logp[j + steps] - logp[j]) / sds[j] for j in range(65, len(logp) - steps))
    middle = len(draws) // 2
    median = draws[middle] if len(draws) % 2 else (draws[middle - 1] + draws[middle]) / 2
    draws = [d - median for d in draws]
    shape = []
    for p in range(101):  # numpy's default ("linear") quantile: between the order statistics around p (n - 1)
        at = p / 100 * (len(draws) - 1)
        low = math.floor(at)
        high = min(low + 1, len(draws) - 1)
        shape.append(draws[low] + (at - low) * (draws[high] - draws[low]))
    return sds[-1], shape


def test_fhs_distribution_is_past_returns_over_their_own_scale_by_hand():
    rng = np.random.default_rng(7)
    logp = np.cumsum(rng.standard_t(3, 700) * 0.006) + math.log(900)
    features = fxcu.recal_features(logp, None)
    for steps in (5, 22):
        scale, shape = fxcu.fhs_distribution(logp, features, steps)
        want_scale, want_shape = oracle_fhs(logp, steps)
        assert scale == pytest.approx(want_scale, rel=1e-9) and shape == pytest.approx(want_shape, rel=1e-9, abs=1e-12)
        assert shape[50] == pytest.approx(0, abs=1e-12) and shape == sorted(shape)  # centred: the point is the median
    # fewer than 50 draws after the warm-up: no shape, the Gaussian of the same scale
    short = logp[: 65 + 5 + 49]
    assert fxcu.fhs_distribution(short, fxcu.recal_features(short, None), 5)[1] is None
    assert fxcu.fhs_distribution(short[:-1], fxcu.recal_features(short[:-1], None), 5)[1] is None
    longer = logp[: 65 + 5 + 50]
    assert len(fxcu.fhs_distribution(longer, fxcu.recal_features(longer, None), 5)[1]) == 101


def normal_shape() -> list[float]:
    """A standard normal tabulated as a shape: the percentiles of a large sample, its extremes at +-4.5."""
    from scipy.stats import norm

    return [-4.5, *norm.ppf(np.arange(1, 100) / 100), 4.5]


def test_a_shape_tabulating_the_normal_scores_like_the_normal():
    """A shaped density that is the Gaussian, tabulated: its CRPS, PIT, bounds and Brier match the closed forms."""
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    y, last, sigma = rng.normal(0, 0.02, 300), np.zeros(300), np.full(300, 0.02)
    shapes = [normal_shape()] * 300
    assert fxcu.density_crps(y, last, sigma, shapes) == pytest.approx(oracle_crps_normal(y, last, sigma), rel=0.02)
    # linear between the percentiles: the CDF is off by under half a percent (more only beyond 2.33 sd)
    assert fxcu.pit(y, last, sigma, shapes) == pytest.approx(norm.cdf(y, 0, 0.02), abs=0.006)
    lo, hi = fxcu.density_bounds(last, sigma, 80, shapes)
    assert hi == pytest.approx(0.02 * 1.2815515655446004) and lo == pytest.approx(-0.02 * 1.2815515655446004)
    # a mix: Gaussian rows (None) keep their closed forms exactly
    mixed = [None, *shapes[1:]]
    assert fxcu.density_crps(y, last, sigma, mixed)[0] == oracle_crps_normal(y[:1], last[:1], sigma[:1])[0]
    assert fxcu.pit(y, last, sigma, mixed)[0] == norm.cdf(y[0], 0, 0.02)
    assert fxcu.brier_scores(y, last, sigma, 0.025, shapes) == pytest.approx(
        (norm.sf(math.log1p(0.025), 0, 0.02) - (y > math.log1p(0.025))) ** 2, abs=0.01
    )


def test_a_shaped_candidate_that_is_the_truth_is_chosen_and_served():
    """Skewed outcomes: FHS's shape (at 1.5x its scale, so its column alone is a too-wide Gaussian) is their true
    distribution; scored on its shape it beats Naive's right-sized Gaussian and is served."""
    rng = np.random.default_rng(11)
    n, sd = 260, 0.02
    draws = rng.exponential(1.0, 200_000)
    truth = np.quantile(draws - np.median(draws), fxcu.SHAPE_GRID)
    spread = float(np.std(draws))
    y = (rng.exponential(1.0, n) - math.log(2)) * sd / spread  # the median of Exp(1) is log 2
    frame = pl.DataFrame(
        {
            "ds": np.arange(n) * 5,
            "origin": [date(2015, 1, 5) + timedelta(weeks=i) for i in range(n)],
            "vol20": rng.uniform(0.004, 0.01, n),
            "y": y,
            "last": np.zeros(n),
            "Naive": np.full(n, sd),
            "FHS": np.full(n, 1.5 * sd / spread),
            "FHS_shape": [list(truth / 1.5)] * n,
        }
    )
    choice = fxcu.choose_interval_model(frame, ["Naive", "FHS"], 5)
    assert choice.live == "FHS" and choice.picks[-1] == "FHS" and choice.notes == ()
    assert choice.served_shapes[0] is None and choice.served_shapes[-1] == list(truth / 1.5)  # Naive first
    # without shapes (Gaussian candidates only) nothing is shaped: the served shapes are empty
    assert fxcu.choose_interval_model(frame.drop("FHS_shape"), ["Naive", "FHS"], 5).served_shapes == ()
    # the picks lose to Naive overall (outcomes three times wider from the middle on): Naive is served live, and
    # the picks' shapes are still each origin's served shape, FHS's where FHS was picked
    wide = np.concatenate([y[: n // 2], rng.normal(0, 3 * sd, n - n // 2)])
    lost = fxcu.choose_interval_model(frame.with_columns(pl.Series("y", wide)), ["Naive", "FHS"], 5)
    assert lost.live == "Naive" and "lost to Naive's range" in lost.notes[0] and "FHS" in lost.picks
    assert lost.served_shapes == tuple(list(truth / 1.5) if p == "FHS" else None for p in lost.picks)
    # Naive's range right-sized for those outcomes: every pick is Naive, no note, and no origin is shaped
    right = frame.with_columns(pl.Series("y", rng.normal(0, 3 * sd, n)), pl.Series("Naive", np.full(n, 3 * sd)))
    naive = fxcu.choose_interval_model(right, ["Naive", "FHS"], 5)
    assert set(naive.picks) == {"Naive"} and naive.notes == () and naive.served_shapes == (None,) * n
    scores = fxcu.score_density(
        frame.with_columns(pl.Series("Served", choice.served_sigma), pl.Series("Served_shape", choice.served_shapes)),
        ["Naive", "FHS", "Served"],
        5,
        reps=50,
    )
    assert scores["FHS"].crps < scores["Naive"].crps and scores["Served"].crps < scores["Naive"].crps
    assert scores["FHS"].pit_p > 0.01 and 0.95 <= scores["FHS"].coverage_98 <= 1.0


@pytest.mark.slow
def test_an_fhs_range_is_served_through_forecast_ledger_and_odds(real_forecast_7d, real_bundle, tmp_path):
    """A density backtest that chose FHS: the range is its shape at today's scale, in the path, the quantiles,
    the odds, the ledger, its PIT and `fxcu odds`."""
    fc = real_forecast_7d
    chosen = dataclasses.replace(fc.density, live="FHS")
    other = fxcu.forecast(real_usdclp(), real_copper(), "7d", backtest_result=fc.backtest, density_result=chosen)
    scale, shape = oracle_fhs(np.log(real_usdclp()[fxcu.CLOSE].to_numpy()[-fxcu.HISTORY :]), 5)
    assert other.interval_model == "FHS" and "filtered historical simulation" in other.interval_label
    assert other.scale == pytest.approx(scale, rel=1e-9) and other.shape == pytest.approx(shape, rel=1e-9, abs=1e-12)
    final, point = other.final, other.final["forecast"]
    for lv, tail in ((80, 0.10), (95, 0.025)):
        z = np.interp([tail, 1 - tail], np.linspace(0, 1, 101), shape)
        assert (final[f"lo_{lv}"], final[f"hi_{lv}"]) == pytest.approx(point * np.exp(scale * z), rel=1e-9)
    assert (other.quantile(0.1), other.quantile(0.975)) == (final["lo_80"], final["hi_95"])
    assert other.quantile(0.5) == pytest.approx(point, rel=1e-12)
    assert other.prob_below(other.quantile(0.3)) == pytest.approx(0.3, abs=1e-9)
    assert other.prob_above(point * math.exp(scale * shape[-1]) * 1.01) == 0  # beyond every past move
    # the ledger keeps the shape; the odds and the PIT come from it
    row = fxcu.ledger_entry(other, real_bundle, run_id=None, now=datetime(2024, 7, 16, tzinfo=UTC))
    path = tmp_path / "ledger.parquet"
    fxcu.write_ledger(fxcu.upsert_ledger(fxcu.empty_ledger(), [row]), path)
    ledger = fxcu.read_ledger(path)
    assert ledger["shape"].to_list()[0] == pytest.approx(shape, rel=1e-9, abs=1e-12)
    odds = fxcu.served_odds_table(ledger, "7d", [900.0])
    assert odds["levels"][0]["prob_below"] == pytest.approx(other.prob_below(900.0), abs=1e-12)
    assert odds["quantiles"]["10%"] == pytest.approx(final["lo_80"], rel=1e-12)
    actual = point * 1.01
    prices = pl.DataFrame({fxcu.DATE: [final[fxcu.DATE]], fxcu.CLOSE: [actual]})
    scored = fxcu.score_ledger(ledger, prices)
    want = np.interp(math.log(1.01) / scale, shape, np.linspace(0, 1, 101))
    assert scored["pit"][0] == pytest.approx(want, abs=1e-9)


@pytest.mark.slow
def test_run_offline_prints_json_summary_and_exits_0(offline_run):
    _, _, result = offline_run
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["horizon"] == "7d" and out["last_date"] == "2024-07-15" and out["target_date"] == "2024-07-22"
    assert (
        out["interval_95"][0]
        <= out["interval_80"][0]
        <= out["forecast"]
        <= out["interval_80"][1]
        <= out["interval_95"][1]
    )
    assert out["ratio_to_naive"] <= 1.0 and out["tracked"] and out["copper_available"]
    assert "cached data" in out["degraded"]


@pytest.mark.slow
def test_run_records_params_metrics_tags_and_artifacts_in_mlflow(offline_run):
    folder, elsewhere, result = offline_run
    runs = read_runs(folder, "7d")
    assert len(runs) == 1
    run = runs[0]
    m = run.data.metrics
    # the forecast and its range, told apart; the cached (degraded) data marked first, as in the email's subject
    name = (
        rf"\[degraded\] 7d {m['forecast']:.2f} \[{m['forecast_lo_80']:.1f}–{m['forecast_hi_80']:.1f}\]"
        r" · data 2024-07-15 · \d\d-\d\d \d\d:\d\d:\d\d"
    )
    assert re.fullmatch(name, run.info.run_name) and run.info.status == "FINISHED"
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert p["horizon"] == "7d" and p["copper_available"] == "True" and p["usdclp_source"] == "cache"
    assert p["copper_frequency"] == "daily" and p["data_last_date"] == "2024-07-15" and p["backtest_origins"] == "60"
    assert "version_statsforecast" in p and len(p["input_sha256"]) == 64
    for key in (
        "7d_rmse",
        "7d_mae",
        "7d_mape",
        "7d_ratio_to_naive",
        "7d_coverage_80",
        "Naive_rmse",
        "AutoETS_mape",
        "copper_ablation_pct",
        "seconds_backtest",
        "seconds_fetch",
        "seconds_report",
        "seconds_tracking",
    ):
        assert key in m, key
    assert m["7d_ratio_to_naive"] <= 1.0
    # the history ends 2024-07-15, older than FXCU_MAX_AGE_DAYS (5): stale as well as cached (issue 10)
    assert t["fxcu.degraded"] == "cached data,stale data" and t["fxcu.degraded.cached_data"] == "true"
    assert t["fxcu.degraded.stale_data"] == "true"
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(folder / "mlflow" / "mlruns")
    names = {p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*") if p.is_file()}
    assert {"inputs/warehouse/usdclp.parquet", "inputs/warehouse/copper_hgf_usd_lb.parquet"} <= names
    assert (
        any(n.endswith(".md") for n in names)
        and any(n.endswith(".png") for n in names)
        and any(n.endswith(".csv") for n in names)
    )
    assert not (elsewhere / "mlruns").exists() and not (elsewhere / "mlflow.db").exists()


@pytest.mark.slow
def test_run_carries_the_served_range_through_json_mlflow_and_report(offline_run):
    folder, _, result = offline_run
    out = json.loads(result.stdout)
    model = out["interval_model"]
    words = {  # INTERVAL_MODELS' words, written out: what a reader of the JSON sees
        "Naive": "Naive's range (daily volatility times the square root of trading days)",
        "EWMA": "range from the EWMA of daily returns (RiskMetrics)",
        "EWMA_5d": "range from the EWMA of 5-day returns",
        "EWMA_5d_blend": "range from the EWMA of 5-day returns blended with their long-run variance",
        "Recal": "range from the blended 5-day variance, recalibrated on past outcomes",
        "Recal_copper": "range from the blended 5-day variance and copper's volatility, recalibrated on past outcomes",
        "FHS": "range from past returns rescaled to today's volatility (filtered historical simulation)",
    }
    assert model in fxcu.RUN_INTERVAL_MODELS and out["interval_label"] == f"random walk; {words[model]}"
    assert out["range_origins"] == fxcu.DENSITY_ORIGINS and 0.7 <= out["range_coverage_80"] <= 0.9
    assert out["range_crps_ratio_ci"][0] <= out["range_crps_ratio"] + 1e-9 and set(out["range_coverage_80_by"]) == {
        *fxcu.REGIMES,
        *fxcu.NAMED_WINDOWS,
    }
    run = read_runs(folder, "7d")[0]
    p, m = run.data.params, run.data.metrics
    assert p["interval_model"] == model and p["interval_label"] == out["interval_label"]
    assert (
        m["7d_range_crps_ratio"] == pytest.approx(out["range_crps_ratio"], abs=1e-4)
        and m["range_origins"] == fxcu.DENSITY_ORIGINS
    )
    for key in (
        "range_Naive_crps",
        "range_EWMA_5d_is80_ratio",
        "range_EWMA_5d_blend_crps_ratio_lo",
        "7d_range_is95_ratio_hi",
        "7d_range_wis",
        "range_copper_ablation_pct",
    ):
        assert key in m, key
    for group in ("calm", "middle", "turbulent", "2022", "2019_10_2020_06"):
        assert f"7d_range_coverage_80_{group}" in m and f"range_Naive_coverage_95_{group}" in m
    report = Path(out["report"]).read_text()
    assert "## Range backtest (252 weekly origins" in report and f"Served range: {words[model]}" in report
    assert f"served: {out['interval_label']}" in report


@pytest.mark.slow
def test_run_serves_quantiles_odds_and_calibration_in_json_ledger_report_and_mlflow(offline_run):
    folder, _, result = offline_run
    out = json.loads(result.stdout)
    keys = ["1%", "5%", "10%", "25%", "50%", "75%", "90%", "95%", "99%"]
    assert list(out["quantiles"]) == keys and out["quantiles"]["50%"] == out["forecast"]
    assert [out["quantiles"]["10%"], out["quantiles"]["90%"]] == out["interval_80"]
    values = list(out["quantiles"].values())
    assert values == sorted(values) and len(set(values)) == len(values)
    ledger = fxcu.read_ledger(folder / "warehouse" / fxcu.LEDGER)
    scale = ledger["scale"][-1]  # the served sd: the 95% bound is the median times exp(1.96 sd)
    assert math.log(out["interval_95"][1] / out["forecast"]) == pytest.approx(1.959964 * scale, rel=1e-4)
    report = Path(out["report"]).read_text()
    last = out["last_close"]
    above = 1 - NormalDist(math.log(out["forecast"]), scale).cdf(math.log(last * 1.025))
    assert "## Quantiles and odds for" in report and f"| {last * 1.025:.2f} |" in report and f"{above:.1%}" in report
    assert "Served range's PIT deciles:" in report and "98% cover" in report
    pit_png = Path(out["report"]).with_name(Path(out["report"]).stem + "_pit.png")
    assert pit_png.read_bytes().startswith(b"\x89PNG") and f"]({pit_png.name})" in report
    run = read_runs(folder, "7d")[0]
    m = run.data.metrics
    deciles = [m[f"7d_range_pit_decile_{j}"] for j in range(1, 11)]
    assert sum(deciles) == pytest.approx(1.0) and 0 < m["7d_range_pit_p"] <= 1
    assert 0.9 < m["7d_range_coverage_98"] <= 1 and "range_Naive_bss_up2_5_lo" in m and "7d_range_bss_down5" in m
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert any(p.name == pit_png.name for p in artifacts.rglob("*.png"))


@pytest.mark.slow
def test_run_is_described_timed_sourced_and_comparable_across_horizons(offline_run):
    folder, _, result = offline_run
    out, run = json.loads(result.stdout), read_runs(folder, "7d")[0]
    t, m = run.data.tags, run.data.metrics
    note = t["mlflow.note.content"]
    assert note.startswith(
        f"**USD/CLP 7d: last {out['last_close']:.2f} on 2024-07-15 -> {out['forecast']:.2f} on 2024-07-22** ("
    )
    lo80, hi80 = out["interval_80"]
    assert f"80% {lo80:.2f} – {hi80:.2f}" in note and "Served models: " in note and "degraded: cached data" in note
    assert t["mlflow.source.name"] == "fxcu run 7d" and t["mlflow.source.type"] == "LOCAL" and t["mlflow.user"]
    assert t["fxcu.version"] == fxcu.__version__ == run.data.params["version_fxcu"]
    # the run spans the backtest: created when the command started, ended after the tracking
    assert run.info.end_time - run.info.start_time >= 1000 * m["seconds_backtest"]
    for short in ("rmse", "mae", "mape", "ratio_to_naive", "coverage_80", "coverage_95"):
        assert m[f"served_{short}"] == m[f"7d_{short}"]
    assert run.data.params["target_date"] == "2024-07-22"


# -- Core: formatting results ----------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "words"),
    [
        (datetime(2026, 1, 19, 15, 0, tzinfo=UTC), "2026-01-19 12:00 (Santiago, UTC-03)"),  # summer time
        (datetime(2026, 7, 1, 15, 30, tzinfo=UTC), "2026-07-01 11:30 (Santiago, UTC-04)"),
        (datetime(2026, 7, 1, 2, 0, tzinfo=UTC), "2026-06-30 22:00 (Santiago, UTC-04)"),  # the day before in Santiago
    ],
)
def test_santiago_time(now, words):
    assert fxcu.santiago_time(now) == words


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("copper_returns_1d", math.log(1.02), "+2.00%"),
        ("copper_returns_20d", math.log(0.95), "-5.00%"),
        ("copper_volatility_20d", 0.234, "23.4% a year"),
        ("copper_sma_50", 4.5, "4.5000 USD/lb"),
        ("copper_trend_signal", -1, "down (20-day below 50-day)"),
        ("copper_trend_signal", 0, "flat"),
        ("copper_rsi_14", 52.63, "52.6"),
        ("copper_price_normalized", 1.5, "+1.50 standard deviations"),
        ("copper_usdclp_correlation_90d", -0.234, "-0.23"),
        ("copper_rsi_14", None, "n/a (not enough history)"),
    ],
)
def test_format_feature_gives_units_and_percentages(name, value, words):
    assert fxcu.format_feature(name, value) == words


def test_every_feature_has_words():
    assert set(fxcu.FEATURE_WORDS) == set(fxcu.FEATURES)


def test_forecast_headline_one_horizon_and_a_digest():
    assert (
        fxcu.forecast_headline(950.0, date(2026, 11, 25), [("7d", 951.204, date(2026, 12, 3))])
        == "USD/CLP 7d: last 950.00 on 2026-11-25 -> 951.20 on 2026-12-03"
    )
    several = [("7d", 951.2, date(2026, 12, 3)), ("15d", 952.0, date(2026, 12, 15))]
    assert (
        fxcu.forecast_headline(950.0, "2026-11-25", several)
        == "USD/CLP: last 950.00 on 2026-11-25 -> 7d 951.20, 15d 952.00"
    )


@pytest.mark.slow
def test_chart_of_old_or_seed_data_carries_a_red_banner_with_the_age(real_forecast_7d, real_bundle):
    def texts(bundle) -> list:
        return [
            t for t in fxcu.chart_figure(real_forecast_7d, bundle).axes[0].texts if "DATA NOT CURRENT" in t.get_text()
        ]

    assert texts(real_bundle) == []  # current data: no banner
    seed = fxcu.Reason(
        fxcu.Degraded.SEED, "seed history: USD/CLP from the shipped seed, last date 2024-07-15, 875 days old"
    )
    old = dataclasses.replace(real_bundle, reasons=(*real_bundle.reasons, seed))
    (banner,) = texts(old)
    assert "875 days old" in banner.get_text() and banner.get_bbox_patch().get_facecolor()[:3] == (
        214 / 255,
        39 / 255,
        40 / 255,
    )


@pytest.mark.slow
def test_the_headline_is_the_one_line_every_output_repeats(real_forecast_7d, real_bundle):
    fc, now = real_forecast_7d, datetime(2026, 1, 19, 15, 0, tzinfo=UTC)
    line = f"USD/CLP 7d: last {fc.last_close:.2f} on 2024-07-15 -> {fc.final['forecast']:.2f} on 2024-07-22"
    assert fxcu.headline_of([fc]) == line
    assert fxcu.format_summary(fxcu.summary(fc, real_bundle)).splitlines()[0] == line  # what `run` prints
    assert fxcu.report_title(fc, now=now) == f"{line}, made 2026-01-19 12:00 (Santiago, UTC-03)"
    assert fxcu.email_subject([fc]) == f"fxcu: {line}"
    assert fxcu.email_subject([fc], degraded=True) == f"[degraded] fxcu: {line}"
    low, high = fc.final["lo_80"], fc.final["hi_80"]
    assert (
        fxcu.run_name(fc, now)
        == f"7d {fc.final['forecast']:.2f} [{low:.1f}–{high:.1f}] · data 2024-07-15 · 01-19 12:00:00"
    )
    later = fxcu.run_name(fc, now + timedelta(minutes=5), degraded=True)  # two runs on the same data: told apart
    assert (
        later == f"[degraded] 7d {fc.final['forecast']:.2f} [{low:.1f}–{high:.1f}] · data 2024-07-15 · 01-19 12:05:00"
    )
    assert fxcu.run_note(fc, real_bundle).startswith(f"**{line}** (")
    assert fxcu.chart_figure(fc, real_bundle, now=now).axes[0].get_title("left").startswith(f"{line} (")


@pytest.mark.slow
def test_report_puts_summary_and_backtest_before_the_path_with_santiago_time(real_forecast_7d, real_bundle):
    now = datetime(2026, 1, 19, 15, 0, tzinfo=UTC)
    text = fxcu.format_report(real_forecast_7d, real_bundle, now=now, chart="c.png")
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert (
        headings[0] == f"# USD/CLP 7d: last 898.95 on 2024-07-15 -> {real_forecast_7d.final['forecast']:.2f} on "
        "2024-07-22, made 2026-01-19 12:00 (Santiago, UTC-03)"
    )
    assert [h.split(" (")[0] for h in headings[1:]] == [
        "## Summary",
        "## Chart",
        "## Quantiles and odds for Mon 22 Jul 2024",
        "## Backtest at the horizon date",
        "## Range backtest",
        "## Copper",
        "## Forecast path",
        "## Data and degraded reasons",
    ]
    assert "UTC)" not in text and "| Last close | **898.95** CLP per USD on Mon 15 Jul 2024 |" in text
    assert "| `copper_volatility_20d` | volatility, last 20 days (annualised) | " in text and "% a year |" in text


def test_html_page_inlines_the_given_charts_and_leaves_other_images():
    markdown = "# USD/CLP 7d\n\n![chart](a&b.png)\n\n![other](missing.png)\n\n| x |\n|---|\n| 1 |\n"
    page = fxcu.html_page(markdown, {"a&b.png": b"\x89PNG", "unused.png": b"x"})
    assert '<img style="max-width:100%;height:auto" src="data:image/png;base64,iVBORw==" alt="chart" />' in page
    assert '<img style="max-width:100%;height:auto" src="missing.png" alt="other" />' in page
    assert "<title>USD/CLP 7d</title>" in page and '<h1 style="font-size:20px">USD/CLP 7d</h1>' in page
    assert '<table style="border-collapse:collapse' in page and "<td " in page and "<style>" not in page
    assert fxcu.html_page("![chart](a.png)") == fxcu.html_page("![chart](a.png)", {})  # the email: no images


@pytest.mark.slow
def test_build_email_is_multipart_alternative_with_inline_charts(real_forecast_7d, real_bundle, tmp_path):
    chart = tmp_path / "c.png"
    fxcu.write_chart(real_forecast_7d, real_bundle, chart)
    now = datetime(2026, 1, 19, 15, 0, tzinfo=UTC)
    message = fxcu.build_email(
        [real_forecast_7d],
        real_bundle,
        {"7d": chart.read_bytes()},
        now=now,
        sender="fxcu@bank.cl",
        to=["desk@bank.cl"],
        message_id="<1.2@bank.cl>",
    )
    assert_renders(message, ["7d"])
    assert message["Date"] == "Mon, 19 Jan 2026 12:00:00 -0300" and message["Message-ID"] == "<1.2@bank.cl>"
    assert (
        message["Subject"]
        == f"fxcu: USD/CLP 7d: last 898.95 on 2024-07-15 -> {real_forecast_7d.final['forecast']:.2f} on 2024-07-22"
    )
    text = message.get_payload()[0].get_content()
    assert "## Summary" in text and "## Forecast path" not in text  # the 65-row path stays in the report file


@pytest.mark.slow
def test_digest_sections_table_first_then_each_horizon_then_copper_once(real_forecast_7d, real_bundle):
    sections = fxcu.digest_sections([real_forecast_7d, real_forecast_7d], real_bundle, charts={"7d": "cid:x"})
    keys = [s.key for s in sections]
    assert keys == [
        "digest",
        "summary",
        "chart",
        "odds",
        "backtest",
        "range",
        "summary",
        "chart",
        "odds",
        "backtest",
        "range",
        "copper",
        "data",
    ]
    assert sections[1].title == "7d: Summary"


def test_format_live_says_nothing_is_scored_yet_instead_of_nans():
    first = fxcu.format_live({"live_scored": 0.0})
    assert "nan" not in first.lower() and first.startswith("no served forecast scored yet")
    live = {
        "live_scored": 12.0,
        "live_rmse": 8.456,
        "live_rmse_ratio_rw": 0.98765,
        "live_coverage_80": 0.75,
        "live_coverage_95": 11 / 12,
    }
    assert fxcu.format_live(live) == "12 scored, RMSE 8.46 CLP, 0.9877x the random walk, coverage 75%/92%"


def test_what_changed_names_the_reasons():
    before = ledger_row(date(2024, 5, 3), date(2024, 5, 10), forecast=900.0)
    same = fxcu.what_changed(before, before | {"run_id": "x"})
    assert (
        same["reasons"] == [] and same["forecast_change"] == 0 and "same data, same model" in fxcu.format_change(same)
    )
    after = before | {
        "origin": date(2024, 5, 6),
        "forecast": 903.5,
        "hi_80": 915.0,
        "point_model": "Ensemble:equal",
        "degraded": "no copper",
    }
    change = fxcu.what_changed(before, after)
    assert change["reasons"] == ["new data", "different chosen model", "degraded source"]
    assert change["forecast_change"] == pytest.approx(3.5) and change["hi_80_change"] == pytest.approx(5.0)
    text = fxcu.format_change(change)
    assert "forecast +3.50" in text and "Naive -> Ensemble:equal" in text and "(no copper)" in text
    assert fxcu.what_changed(after, before)["reasons"] == ["new data", "different chosen model", "source recovered"]
    assert fxcu.what_changed(None, before) is None and fxcu.format_change(None).startswith("first forecast")


# -- Core: the track record ------------------------------------------------------------


def test_score_ledger_by_hand_weekends_holidays_and_unrealised_targets():
    # 2024-09-18/19 are Chilean national holidays (Fiestas Patrias): say no close came on either.
    prices = prices_on(
        {
            date(2024, 9, 13): 930.0,
            date(2024, 9, 16): 940.0,
            date(2024, 9, 17): 935.0,
            date(2024, 9, 20): 925.0,
            date(2024, 10, 31): 950.0,
        }
    )
    rows = [
        ledger_row(date(2024, 9, 6), date(2024, 9, 13), forecast=920.0, last=915.0),  # a close on the target date
        ledger_row(date(2024, 9, 7), date(2024, 9, 14), forecast=930.0, last=931.0),  # a Saturday: Monday's close
        ledger_row(
            date(2024, 9, 11), date(2024, 9, 18), forecast=936.0, last=934.0, half80=5.0, half95=9.0
        ),  # holidays: Friday's
        ledger_row(
            date(2024, 10, 1), date(2024, 10, 8), forecast=900.0
        ),  # next close 23 days later: a data gap, unscored
        ledger_row(date(2024, 10, 31), date(2024, 11, 7), forecast=950.0),  # not come yet
    ]
    scored = fxcu.score_ledger(fxcu.upsert_ledger(fxcu.empty_ledger(), rows), prices).sort("origin")
    got = scored.rows_by_key("origin", named=True, unique=True)
    expected = {
        date(2024, 9, 6): (date(2024, 9, 13), 930.0),
        date(2024, 9, 7): (date(2024, 9, 16), 940.0),
        date(2024, 9, 11): (date(2024, 9, 20), 925.0),
    }
    for row in rows:
        out = got[row["origin"]]
        if row["origin"] not in expected:
            assert out["actual"] is None and out["wis"] is None and out["hit_80"] is None
            continue
        day, y = expected[row["origin"]]
        assert out["actual_date"] == day and out["actual"] == y
        assert out["error"] == pytest.approx(row["forecast"] - y) and out["abs_error"] == pytest.approx(
            abs(row["forecast"] - y)
        )
        assert out["pct_error"] == pytest.approx((row["forecast"] - y) / y * 100)
        assert out["hit_80"] == (row["lo_80"] <= y <= row["hi_80"]) and out["hit_95"] == (
            row["lo_95"] <= y <= row["hi_95"]
        )
        assert out["rw_error"] == pytest.approx(row["last_close"] - y)
        assert out["rw_hit_80"] == (row["rw_lo_80"] <= y <= row["rw_hi_80"])
        served = {80: (row["lo_80"], row["hi_80"]), 95: (row["lo_95"], row["hi_95"])}
        walk = {80: (row["rw_lo_80"], row["rw_hi_80"]), 95: (row["rw_lo_95"], row["rw_hi_95"])}
        assert out["wis"] == pytest.approx(bracher_wis(y, row["forecast"], served))
        assert out["rw_wis"] == pytest.approx(bracher_wis(y, row["last_close"], walk))
    holiday = got[date(2024, 9, 11)]
    assert holiday["hit_80"] is False and holiday["hit_95"] is False  # 925 is outside [931, 941] and [927, 945]


def test_score_ledger_scores_a_ledger_that_has_no_score_columns_yet():
    """A ledger of forecasts only (no score column at all, as a frame built by hand) is scored like any other:
    forecast 805 against the close of 810 on the target, random walk 800."""
    rows = [ledger_row(date(2024, 1, 2), date(2024, 1, 9), forecast=805.0, last=800.0)]
    forecasts_only = fxcu.upsert_ledger(fxcu.empty_ledger(), rows).drop(fxcu.SCORE_COLUMNS)
    scored = fxcu.score_ledger(forecasts_only, prices_on({date(2024, 1, 9): 810.0}))
    assert scored.columns == list(fxcu.ledger_schema())
    row = scored.row(0, named=True)
    assert (row["actual_date"], row["actual"], row["error"], row["rw_error"]) == (date(2024, 1, 9), 810.0, -5.0, -10.0)
    assert (row["hit_80"], row["rw_hit_80"]) == (True, True)  # 810 in [795, 815] and in [790, 810]


def test_score_ledger_before_any_target_is_reached_leaves_every_score_empty_and_typed():
    """The first forecasts of a fresh ledger: no target has a close yet. Every score is null, and the WIS and PIT
    columns are still floats (the ledger's parquet schema), so later scored rows stack onto these."""
    rows = [
        ledger_row(date(2024, 1, 5), date(2024, 1, 12)),
        ledger_row(date(2024, 1, 5), date(2024, 1, 26), horizon="15d"),
    ]
    scored = fxcu.score_ledger(fxcu.upsert_ledger(fxcu.empty_ledger(), rows), prices_on({date(2024, 1, 5): 800.0}))
    assert scored.columns == list(fxcu.ledger_schema()) and scored.height == 2
    for column in ("actual", "error", "hit_80", "wis", "rw_wis", "pit"):
        assert scored[column].to_list() == [None, None], column
    assert [scored.schema[c] for c in ("wis", "rw_wis", "pit")] == [pl.Float64] * 3


def test_upsert_ledger_same_origin_replaces_and_kinds_stay_apart():
    first = ledger_row(date(2024, 5, 3), date(2024, 5, 10), forecast=900.0, run_id="a")
    ledger = fxcu.upsert_ledger(
        fxcu.empty_ledger(), [first, ledger_row(date(2024, 5, 3), date(2024, 5, 10), horizon="15d")]
    )
    again = fxcu.upsert_ledger(ledger, [ledger_row(date(2024, 5, 3), date(2024, 5, 10), forecast=905.0, run_id="b")])
    assert again.height == 2
    row = again.filter(pl.col("horizon") == "7d").row(0, named=True)
    assert row["forecast"] == 905.0 and row["run_id"] == "b"
    both = fxcu.upsert_ledger(
        again, [ledger_row(date(2024, 5, 3), date(2024, 5, 10), kind="reconstructed", forecast=1.0)]
    )
    assert both.height == 3 and both.filter(pl.col("kind") == "live", pl.col("horizon") == "7d")[
        "forecast"
    ].to_list() == [905.0]


@pytest.mark.slow
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["7d", "90d"]), st.sampled_from(["live", "reconstructed"])),
        max_size=25,
    ),
    st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["7d", "90d"]), st.sampled_from(["live", "reconstructed"])),
        max_size=25,
    ),
)
@settings(max_examples=40, deadline=None)
def test_upsert_ledger_never_shrinks_and_keeps_one_row_per_key(old, new):
    def rows(keys):
        return [
            ledger_row(date(2024, 1, 1) + timedelta(days=d), date(2024, 1, 8) + timedelta(days=d), horizon=h, kind=k)
            for d, h, k in keys
        ]

    before = fxcu.upsert_ledger(fxcu.empty_ledger(), rows(old))
    after = fxcu.upsert_ledger(before, rows(new))
    assert after.height >= before.height
    assert after.height == len(set(old) | set(new))
    assert not after.select(fxcu.LEDGER_KEY).is_duplicated().any()


def test_binomial_band_matches_the_binomial_distribution():
    n, p = 50, 0.8
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, hi = fxcu.binomial_band(n, p, 0.95)
    # scipy's interval: the smallest k with cdf >= 2.5% and the smallest k with cdf >= 97.5%
    cdf = np.cumsum(pmf)
    assert lo * n == int(np.argmax(cdf >= 0.025)) and hi * n == int(np.argmax(cdf >= 0.975))
    assert sum(pmf[round(lo * n) : round(hi * n) + 1]) >= 0.95


def test_binomial_band_of_no_forecasts_is_everything():
    assert fxcu.binomial_band(0, 0.8) == (0.0, 1.0)


def test_t_test_greater_no_spread_is_no_evidence():
    assert fxcu.t_test_greater([5.0]) == fxcu.t_test_greater([]) == fxcu.t_test_greater([2.0, 2.0, 2.0]) == 1.0
    # a float mean a hair off zero spread would give a huge t and p = 0
    assert fxcu.t_test_greater([0.003, 0.003, 0.003]) == 1.0


def test_check_track_scoring_warns_only_when_forecasts_are_due():
    assert fxcu.check_track_scoring("7d", 0, None) == []
    assert fxcu.check_track_scoring("7d", 3, date(2024, 7, 16)) == [
        ("track 7d scoring", "WARNING", "3 forecasts due since 2024-07-16 not scored (no realised close)")
    ]


@pytest.mark.parametrize("n", [1, fxcu.CHECK_MIN_SCORED - 1])
def test_check_track_coverage_does_not_grade_too_few(n):
    got = fxcu.check_track_coverage("7d", n, {80: 0.0, 95: 0.0}, level=0.99)
    assert got == ("track 7d coverage", "OK", f"{n} scored forecasts (grading starts at {fxcu.CHECK_MIN_SCORED})")


@pytest.mark.parametrize(
    ("n", "band"),  # band: scipy 1.17 binom.interval(0.99, n, 0.8)
    [(fxcu.CHECK_MIN_SCORED, (11, 20)), (60, (40, 55))],
)
def test_check_track_coverage_at_and_just_outside_the_band(n, band):
    lo, hi = band[0] / n, band[1] / n
    cases = [(lo, "OK"), (hi, "OK"), (lo - 1e-9, "WARNING"), (min(hi + 1e-9, 1.0), "WARNING" if hi < 1 else "OK")]
    for cover, level in cases:
        name, got, message = fxcu.check_track_coverage("15d", n, {80: cover, 95: 0.97}, level=0.99)
        assert (name, got) == ("track 15d coverage", level)
        assert message.endswith(f"over the last {n}" + ("" if level == "WARNING" else ", within chance"))


def test_check_track_coverage_says_every_level_in_words():
    """Both levels named, in the order given; bands by hand from scipy's binom.interval(0.99, 60, p): 80% [40, 55]
    and 95% [52, 60] of 60."""
    both_out = fxcu.check_track_coverage("30d", 60, {80: 0.6, 95: 0.8}, level=0.99)
    assert both_out == (
        "track 30d coverage",
        "WARNING",
        "80% coverage 60% outside [67%, 92%]; 95% coverage 80% outside [87%, 100%] over the last 60",
    )
    inside = fxcu.check_track_coverage("30d", 60, {80: 0.8, 95: 0.95}, level=0.99)
    assert inside == ("track 30d coverage", "OK", "80% 80%, 95% 95% over the last 60, within chance")


def test_overall_of_no_checks_is_ok():
    assert fxcu.overall([]) == "OK"
    assert fxcu.overall([("a", "WARNING", ""), ("b", "CRITICAL", ""), ("c", "OK", "")]) == "CRITICAL"


def test_check_track_ratio_does_not_test_too_few():
    errors = [30.0] * (fxcu.RATIO_TEST_MIN - 1)
    got = fxcu.check_track_ratio("7d", errors, [1.0] * len(errors), 1.0)
    assert got[1] == "OK" and "testing starts at 8" in got[2]


@pytest.mark.parametrize(
    ("scale", "level", "p"),  # p: scipy 1.17 ttest_1samp(served**2 - rw**2, 0, alternative="greater")
    [(1.0, "OK", 0.30614195005389455), (1.1, "OK", 0.015059330219643858), (1.15, "WARNING", 0.007749558583063015)],
)
def test_check_track_ratio_warns_at_p_below_one_percent(scale, level, p):
    rw = [3.0, -5.0, 8.0, -2.0, 6.0, -7.0, 4.0, -1.0, 9.0, -4.0, 2.0, -6.0]  # random-walk errors, CLP
    served = [scale * e + 0.5 for e in rw]
    name, got, message = fxcu.check_track_ratio("30d", served, rw, 1.0)
    assert (name, got) == ("track 30d error ratio", level) and message.endswith(f"over 12 non-overlapping (p={p:.3f})")


def levels_of(checks) -> dict[str, str]:
    return {name: level for name, level, _ in checks}


def test_check_track_calibrated_ledger_is_ok():
    ledger, _ = synthetic_ledger(200, z80=1.2816, z95=1.96)
    checks = fxcu.check_track(ledger, today=date(2024, 1, 15))
    assert levels_of(checks) == {"track 7d coverage": "OK", "track 7d error ratio": "OK"}
    assert fxcu.overall(checks) == "OK"


def test_check_track_under_coverage_warns():
    ledger, _ = synthetic_ledger(200, z80=0.6, z95=1.0)  # nominal 45% and 68% ranges sold as 80% and 95%
    checks = fxcu.check_track(ledger, today=date(2024, 1, 15))
    assert levels_of(checks)["track 7d coverage"] == "WARNING"
    assert "80% coverage" in next(m for n, _, m in checks if n == "track 7d coverage")


def test_check_track_error_ratio_worse_than_backtest_warns():
    ledger, _ = synthetic_ledger(
        200, z80=1.2816, z95=1.96, served_scale=2.0
    )  # twice the random walk's error, ranges to match
    checks = levels_of(fxcu.check_track(ledger, today=date(2024, 1, 15)))
    assert checks == {"track 7d coverage": "OK", "track 7d error ratio": "WARNING"}


def test_check_track_skips_rows_an_older_ledger_left_without_errors():
    ledger, _ = synthetic_ledger(200, z80=1.2816, z95=1.96, served_scale=2.0)
    older = ledger.with_columns(
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(None).otherwise(pl.col("rw_error")).alias("rw_error")
    )
    assert levels_of(fxcu.check_track(older, today=date(2024, 1, 15)))["track 7d error ratio"] == "WARNING"
    unratioed = ledger.with_columns(pl.lit(None, dtype=pl.Float64).alias("backtest_ratio"))
    assert levels_of(fxcu.check_track(unratioed, today=date(2024, 1, 15))) == {"track 7d coverage": "OK"}


def test_check_track_unscored_forecasts_warn_and_few_scores_do_not_grade():
    ledger, prices = synthetic_ledger(10, z80=1.2816, z95=1.96)
    stale = fxcu.score_ledger(ledger, prices.head(3))  # the prices stopped coming
    checks = fxcu.check_track(stale, today=date(2023, 2, 1))
    assert levels_of(checks) == {"track 7d scoring": "WARNING", "track 7d coverage": "OK"}
    assert "7 forecasts due since 2023-01-12 not scored" in checks[0][2]
    assert fxcu.check_track(fxcu.empty_ledger(), today=date(2023, 2, 1)) == [
        ("track record", "OK", "no live forecasts in the ledger yet")
    ]


def test_check_track_grades_only_live_rows():
    ledger, _ = synthetic_ledger(200, z80=0.6, z95=1.0)
    assert fxcu.check_track(ledger.with_columns(kind=pl.lit("reconstructed")), today=date(2024, 1, 15))[0][1] == "OK"


def test_score_ledger_matches_the_scores_written_out_by_hand():
    """`score_ledger` on the unscored synthetic ledger gives, column by column, `scored_by_hand`'s scores."""
    by_hand, prices = synthetic_ledger(60, z80=0.6, z95=1.0, seed=5)  # narrow ranges: hits and misses both
    unscored = by_hand.with_columns(pl.lit(None).cast(by_hand.schema[c]).alias(c) for c in fxcu.SCORE_COLUMNS)
    scored = fxcu.score_ledger(unscored, prices)
    assert 0 < by_hand["hit_80"].sum() < 60 and 0 < by_hand["rw_hit_95"].sum() < 60
    assert_frame_equal(scored, by_hand, check_exact=False, rel_tol=1e-9)


def test_track_stats_last_n_and_misses_by_hand():
    ledger, _ = synthetic_ledger(30, z80=1.2816, z95=1.96, seed=3)
    stats = fxcu.track_record(ledger, ["7d"], last=20)["7d"]
    tail = ledger.sort("origin").tail(20)  # scored by hand in synthetic_ledger
    errors, walk = tail["error"].to_list(), tail["rw_error"].to_list()
    rmse = math.sqrt(sum(e * e for e in errors) / 20)
    assert stats["scored"] == 20 and stats["rmse"] == pytest.approx(rmse)
    assert stats["rmse_ratio_rw"] == pytest.approx(rmse / math.sqrt(sum(e * e for e in walk) / 20))
    assert stats["coverage_80"] == sum(tail["hit_80"]) / 20
    missed = [str(o) for o, hit in zip(tail["origin"], tail["hit_80"], strict=True) if not hit]
    assert [m["origin"] for m in stats["misses"]] == missed[::-1][:5]
    assert stats["reconstructed"]["scored"] == 0 and stats["backtest"]["coverage_80"] == 0.8


def test_weekly_origins_take_each_weeks_last_trading_day():
    days = [date(2024, 3, d) for d in (4, 5, 6, 7, 8, 11, 12, 13, 14, 18, 19)]  # Friday 15th missing
    assert fxcu.weekly_origins(days, date(2024, 3, 5)) == [date(2024, 3, 8), date(2024, 3, 14), date(2024, 3, 19)]


def test_live_metrics_names():
    ledger, _ = synthetic_ledger(30, z80=1.2816, z95=1.96)
    metrics = fxcu.live_metrics(fxcu.track_record(ledger, ["7d"])["7d"])
    assert {
        "live_scored",
        "live_rmse",
        "live_rmse_ratio_rw",
        "live_coverage_80",
        "live_coverage_95",
        "live_wis_ratio",
    } <= set(metrics)
    assert fxcu.live_metrics(fxcu.track_record(fxcu.empty_ledger(), ["7d"])["7d"]) == {"live_scored": 0.0}


def test_score_ledger_pit_from_the_served_scale_and_from_an_older_rows_95_width():
    rows = [
        ledger_row(date(2024, 1, 2), date(2024, 1, 9), forecast=800.0, scale=0.02),
        ledger_row(date(2024, 1, 3), date(2024, 1, 10), forecast=800.0, half95=16.0),  # an older row: no scale
        ledger_row(date(2024, 1, 4), date(2024, 1, 11), forecast=800.0, scale=0.02),  # not realised yet
    ]
    prices = prices_on({date(2024, 1, 9): 810.0, date(2024, 1, 10): 790.0})
    scored = fxcu.score_ledger(fxcu.upsert_ledger(fxcu.empty_ledger(), rows), prices)
    old_scale = math.log(816 / 784) / (2 * NormalDist().inv_cdf(0.975))
    expected = [NormalDist().cdf(math.log(810 / 800) / 0.02), NormalDist().cdf(math.log(790 / 800) / old_scale), None]
    assert scored["pit"].to_list()[:2] == pytest.approx(expected[:2]) and scored["pit"][2] is None
    stats = fxcu.track_stats(scored)
    decile = [int(p * 10) for p in expected[:2]]
    assert stats["pit_deciles"] == pytest.approx([decile.count(j) / 2 for j in range(10)])
    assert "PIT deciles" in fxcu.format_track({"7d": stats | {"reconstructed": fxcu.track_stats(scored[:0])}})


def test_score_ledger_pit_of_an_fhs_row_reads_its_shape():
    """A row served with an FHS shape: its PIT is the shape's CDF at the standardised log move, linear between
    percentiles (here a shape whose percentiles are p - 0.5 in z units: the CDF at z is z + 0.5)."""
    shape = [p / 100 - 0.5 for p in range(101)]
    row = ledger_row(date(2024, 1, 2), date(2024, 1, 9), forecast=800.0, scale=0.02, shape=shape)
    scored = fxcu.score_ledger(fxcu.upsert_ledger(fxcu.empty_ledger(), [row]), prices_on({date(2024, 1, 9): 802.0}))
    assert scored["pit"][0] == pytest.approx(math.log(802 / 800) / 0.02 + 0.5)


# -- Core: the run dashboard (runs, compare, stats) ------------------------------------


def test_runs_rows_change_is_against_the_previous_run_of_the_same_horizon():
    runs = [
        stored("7d", 50, forecast=910.0),
        stored("30d", 40, forecast=930.0),
        stored("7d", 30),
        stored("7d", 20, forecast=900.0),
    ]
    rows = fxcu.runs_rows(runs, last=2)
    assert [(r["horizon"], r["change"]) for r in rows] == [("7d", 10.0), ("30d", None), ("7d", None)]
    assert rows[2]["forecast"] is None and rows[0]["status"] == "ok"
    assert rows[0]["served"] == "-"  # no `fxcu.served_models` tag
    tagged = dataclasses.replace(runs[0], tags={"fxcu.served_models": "Ensemble:mean (AutoETS 60%, Naive 40%)"})
    assert fxcu.runs_rows([tagged], last=1)[0]["served"] == "Ensemble:mean (AutoETS 60%, Naive 40%)"


@pytest.mark.slow
@given(
    st.lists(st.tuples(st.sampled_from(["7d", "30d"]), st.one_of(st.none(), st.floats(800, 1000))), max_size=12),
    st.integers(1, 5),
)
@settings(max_examples=100, deadline=None)
def test_runs_rows_changes_add_up_to_the_forecasts(spec, last):
    runs = [stored(h, 100 - i, forecast=f) for i, (h, f) in enumerate(spec)]  # newest first
    rows = fxcu.runs_rows(runs, last)
    for horizon in ("7d", "30d"):
        mine = [r for r in rows if r["horizon"] == horizon]
        assert len(mine) == min(last, sum(h == horizon for h, _ in spec))
        for row in mine:
            older = [
                f
                for h, f in spec[[r.run_id for r in runs].index(row["run_id"]) + 1 :]
                if h == horizon and f is not None
            ]
            expected = None if row["forecast"] is None or not older else row["forecast"] - older[0]
            assert row["change"] == expected


def test_compare_rows_best_coverage_is_closest_to_nominal():
    runs = [
        stored("7d", 9, Naive_coverage_80=0.95, AutoETS_coverage_80=0.78, **{"7d_coverage_80": 0.70}),
        stored("7d", 5, **{"7d_coverage_80": 0.81}),
    ]
    (row,) = fxcu.compare_rows(runs, "coverage_80")
    assert row["best_model"] == "AutoETS" and row["best_served"] == 0.81 and row["best_served_run"] == "r5"
    text = fxcu.render(fxcu.compare_table([row], "coverage_80"), color=False)
    assert text.startswith("80% interval coverage (% of outcomes inside): closest to 80% is best")
    assert "78% *" in text and "95%" in text


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (5, "just now"),
        (90, "1 minute ago"),
        (3 * 3600 + 5, "3 hours ago"),
        (86400, "1 day ago"),
        (9 * 86400, "9 days ago"),
        (15 * 86400, "2 weeks ago"),
    ],
)
def test_age_words(seconds, words):
    assert fxcu.age_words(seconds) == words


def test_render_colours_only_when_asked_and_fits_100_columns():
    runs = [stored("90d", 9, forecast=1234.5)]
    rows = fxcu.runs_rows(runs, last=1)
    rows[0] |= {
        "served": "AutoETS 40%, AutoARIMA 30%, AutoTheta 20%, Naive 10%",
        "status": "degraded: no copper, cached data, removed bad prints",
    }
    plain, colour = fxcu.render(fxcu.runs_table(rows), color=False), fxcu.render(fxcu.runs_table(rows), color=True)
    assert "\x1b[" not in plain and "\x1b[33m" in colour  # yellow: degraded
    assert max(map(len, plain.splitlines())) <= 100 and "1,234.50" in plain


@pytest.mark.parametrize(
    ("name", "values", "best"),
    [
        ("7d_rmse", [20.0, 18.5, 19.0], 18.5),
        ("7d_coverage_80", [0.70, 0.83, 0.95], 0.83),
        ("7d_coverage_95", [0.99, 0.90, 0.96], 0.96),
        ("Naive_copper_direction_hit", [0.5, 0.67, 0.6], 0.67),
    ],
)
def test_metric_rank_best_is_lowest_nominal_or_highest(name, values, best):
    assert min(values, key=fxcu.metric_rank(name)) == best


# -- Core: grading the health check ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "warn", "crit", "level"),
    [
        (5, 5, 30, "OK"),  # at a limit is not past it
        (6, 5, 30, "WARNING"),
        (31, 5, 30, "CRITICAL"),
        (10**9, 10**8, None, "WARNING"),  # no critical limit: never CRITICAL
        (2, 1, 0.1, "OK"),  # crit below warn: lower bounds, as free disk
        (0.5, 1, 0.1, "WARNING"),
        (0.05, 1, 0.1, "CRITICAL"),
        (6, 5, 5, "CRITICAL"),  # equal limits are upper bounds: past both is CRITICAL
        (4, 5, 5, "OK"),
    ],
)
def test_grade_upper_and_lower_limits(value, warn, crit, level):
    assert fxcu.grade(value, warn, crit) == level


@pytest.mark.parametrize(
    ("last", "level"),
    [(date(2026, 11, 25), "OK"), (date(2026, 11, 18), "WARNING"), (date(2026, 9, 1), "CRITICAL"), (None, "CRITICAL")],
)
def test_check_age(last, level):
    assert (
        fxcu.check_age("usdclp", last, today=date(2026, 11, 26), warn_days=5, critical_days=30, missing="CRITICAL")[1]
        == level
    )


@pytest.mark.parametrize(("hours", "level"), [(10, "OK"), (72, "OK"), (90, "WARNING")])
def test_check_runs_allows_a_weekend(hours, level):
    now = datetime(2026, 11, 30, 18, tzinfo=UTC)
    entry = {
        "time": (now - timedelta(hours=hours)).isoformat(),
        "ok": True,
        "tracked": True,
        "forecast": 950.0,
        "target_date": "2026-12-07",
        "degraded": [],
    }
    graded = dict((name, lv) for name, lv, _ in fxcu.check_runs({"7d": entry}, now=now))
    assert graded["run 7d"] == level and graded["run 15d"] == "WARNING"


# Checks graded by hand: the status line names the worst problem, never contradicts the lines below it.
OK_DISK = ("disk", "OK", "50.0 GB free")


def test_headline_is_the_overall_level_and_the_worst_problem():
    checks = [
        ("usdclp data", "OK", "1 days old"),
        ("copper data", "WARNING", "9 days old (last 2026-11-17)"),
        ("run 7d", "WARNING", "never run"),
        OK_DISK,
    ]
    assert fxcu.headline(checks) == "WARNING - copper data: 9 days old (last 2026-11-17) (+1 more problem)"
    checks.append(("usdclp data", "CRITICAL", "40 days old"))
    assert fxcu.headline(checks) == "CRITICAL - usdclp data: 40 days old (+2 more problems)"
    assert fxcu.headline([OK_DISK, OK_DISK]) == "OK - all 2 checks passed"


def test_format_check_puts_perfdata_after_a_bar_on_the_first_line():
    perf = [
        fxcu.Perf("usdclp_age_days", 2, warn="5", crit="30"),
        fxcu.Perf("disk_free", 5e10, "B", warn="1000000000:", crit="100000000:"),
        fxcu.Perf("ratio", 0.25, min=None),
    ]
    text = fxcu.format_check([("usdclp data", "OK", "2 days old"), OK_DISK], perf)
    assert text.splitlines() == [
        (
            "OK - all 2 checks passed | 'usdclp_age_days'=2;5;30;0 "
            "'disk_free'=5e+10B;1000000000:;100000000:;0 'ratio'=0.25"
        ),
        "OK       usdclp data: 2 days old",
        "OK       disk: 50.0 GB free",
    ]


LIMITS = fxcu.Thresholds()
TODAY = date(2026, 11, 26)


@pytest.mark.parametrize(
    ("last", "degraded", "level", "words"),
    [
        (date(2026, 11, 25), [], "OK", "1 days old (last 2026-11-25, 10 rows)"),
        (date(2026, 11, 17), [], "WARNING", "9 days old"),
        (None, None, "WARNING", "no data: forecasts run without copper"),
        (None, ["no copper"], "WARNING", "no data: forecasts run without copper"),
        (date(2026, 11, 25), ["no copper", "cached data"], "WARNING", "the last run had no copper; data 1 days old"),
        (date(2026, 11, 25), ["stale copper"], "WARNING", "the last run had stale copper"),
        (date(2026, 11, 25), ["monthly copper"], "OK", "monthly FRED copper (degraded)"),
    ],
)
def test_check_copper_is_one_verdict(last, degraded, level, words):
    name, got, message = fxcu.check_copper(last, 10 if last else 0, degraded, today=TODAY, limits=LIMITS)
    assert (name, got) == ("copper data", level) and words in message


@given(
    age=st.one_of(st.none(), st.integers(0, 60)),
    degraded=st.one_of(
        st.none(),
        st.lists(st.sampled_from(["no copper", "stale copper", "monthly copper", "cached data"]), unique=True),
    ),
    warn=st.integers(1, 30),
)
def test_check_copper_warns_exactly_when_some_copper_fact_is_bad(age, degraded, warn):
    last = None if age is None else TODAY - timedelta(days=age)
    limits = dataclasses.replace(LIMITS, data_warn_days=warn)
    _, level, message = fxcu.check_copper(last, 5, degraded, today=TODAY, limits=limits)
    bad = last is None or age > warn or bool({"no copper", "stale copper"} & set(degraded or ()))
    assert level == ("WARNING" if bad else "OK")
    assert "days old" in message or message.startswith("no data")  # the age is always said, with any run finding


@pytest.mark.slow
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]), st.sampled_from(["OK", "WARNING", "CRITICAL"]), st.text("xyz ", max_size=5)
        ),
        min_size=1,
    )
)
def test_headline_level_is_the_exit_level(checks):
    assert fxcu.headline(checks).split(" - ")[0] == fxcu.overall(checks)


def test_thresholds_default_to_todays_levels_env_then_flags_win():
    assert fxcu.Thresholds.from_env({}) == fxcu.Thresholds(5, 30, 80, 100, 1.0, 0.1)
    env = {"FXCU_CHECK_DATA_WARN_DAYS": "8", "FXCU_CHECK_RUN_WARN_HOURS": "30"}
    limits = fxcu.Thresholds.from_env(env, data_warn_days=10, run_warn_hours=None)
    assert (limits.data_warn_days, limits.run_warn_hours, limits.data_critical_days) == (10, 30, 30)
    with pytest.raises(fxcu.ConfigError, match="must exceed"):
        fxcu.Thresholds.from_env({}, data_warn_days=40)
    with pytest.raises(fxcu.ConfigError, match="must be below"):
        fxcu.Thresholds.from_env({"FXCU_CHECK_DISK_CRITICAL_GB": "2"})


# check's grading rules, at and around each threshold, on facts built by hand (no files).
LEVEL_RANK = {"OK": 0, "WARNING": 1, "CRITICAL": 2}


def test_thresholds_data_ages_follow_the_configs_stale_age(tmp_path):
    assert fxcu.Thresholds().data_warn_days == fxcu.Config(tmp_path).max_age_days == 5  # the default agrees with run
    assert fxcu.Thresholds.defaults(fxcu.Config(tmp_path)) == fxcu.Thresholds()
    config = fxcu.Config.from_env({"FXCU_DATA_DIR": str(tmp_path), "FXCU_MAX_AGE_DAYS": "8"})
    limits = fxcu.Thresholds.from_env({}, config)
    assert (limits.data_warn_days, limits.data_critical_days) == (8, 30)
    long = fxcu.Config(tmp_path, max_age_days=20)  # critical moves out to twice the stale age, past 30 days
    limits = fxcu.Thresholds.defaults(long)
    assert (limits.data_warn_days, limits.data_critical_days) == (20, 40)
    assert fxcu.Thresholds.from_env({"FXCU_CHECK_DATA_WARN_DAYS": "3"}, long).data_warn_days == 3  # the variable wins
    assert fxcu.Thresholds.from_env({}, long, data_warn_days=2).data_warn_days == 2  # the flag wins


def test_a_critical_age_alone_lowers_a_derived_warning_age_not_a_given_one(tmp_path):
    month = fxcu.Config(tmp_path, max_age_days=30)  # derived: warn 30, critical 60
    limits = fxcu.Thresholds.from_env({}, month, data_critical_days=30)  # `check -c 30`
    assert (limits.data_warn_days, limits.data_critical_days) == (15, 30)
    assert fxcu.Thresholds.from_env({}, month, data_critical_days=45).data_warn_days == 30  # still below: kept
    blank = {"FXCU_CHECK_DATA_WARN_DAYS": " "}  # an empty variable is unset, as for every FXCU_ variable
    assert fxcu.Thresholds.from_env(blank, month, data_critical_days=30).data_warn_days == 15
    with pytest.raises(fxcu.ConfigError, match="must exceed"):  # given, it is the user's to fix
        fxcu.Thresholds.from_env({"FXCU_CHECK_DATA_WARN_DAYS": "30"}, month, data_critical_days=30)
    with pytest.raises(fxcu.ConfigError, match="must exceed"):
        fxcu.Thresholds.from_env({}, month, data_warn_days=30, data_critical_days=30)


@pytest.mark.parametrize(
    ("age", "level"),
    [(0, "OK"), (4, "OK"), (5, "OK"), (6, "WARNING"), (29, "WARNING"), (30, "WARNING"), (31, "CRITICAL")],
)
def test_check_usdclp_at_and_around_its_thresholds(age, level):
    facts = fxcu.SeriesFacts(fxcu.USDCLP_CACHE, TODAY - timedelta(days=age), 100)
    name, got, message = fxcu.check_usdclp(facts, today=TODAY, limits=LIMITS)
    assert (name, got) == ("usdclp data", level) and message == f"{age} days old (last {facts.last}, 100 rows)"


@pytest.mark.parametrize("age", [0, 6, 31, 875])
def test_check_of_a_seed_only_warehouse_warns_whatever_its_age(age):
    """Only the shipped seed stored (an offline first day): a set-up to finish, WARNING, never CRITICAL."""
    last = TODAY - timedelta(days=age)
    facts = fxcu.SeriesFacts(fxcu.USDCLP_CACHE, last, 2855, seed_only=True)
    assert fxcu.check_usdclp(facts, today=TODAY, limits=LIMITS) == (
        "usdclp data",
        "WARNING",
        f"seed history only, {age} days old (last {last}, 2855 rows): "
        "no live source has answered yet (run `fxcu fetch`)",
    )
    _, level, message = fxcu.check_copper(last, 10, [], today=TODAY, limits=LIMITS, seed_only=True)
    assert level == "WARNING" and message.startswith(f"seed history only, {age} days old")
    future = fxcu.SeriesFacts(fxcu.USDCLP_CACHE, TODAY + timedelta(days=9), 1, seed_only=True)
    assert fxcu.check_usdclp(future, today=TODAY, limits=LIMITS)[1] == "CRITICAL"  # a poisoned date stays CRITICAL


def test_check_usdclp_missing_or_unreadable_is_critical():
    missing = fxcu.check_usdclp(fxcu.SeriesFacts(fxcu.USDCLP_CACHE), today=TODAY, limits=LIMITS)
    broken = fxcu.check_usdclp(fxcu.SeriesFacts(fxcu.USDCLP_CACHE, error="ArrowInvalid"), today=TODAY, limits=LIMITS)
    assert missing == ("usdclp data", "CRITICAL", "no data")
    assert broken == ("usdclp data", "CRITICAL", "usdclp.parquet unreadable (ArrowInvalid)")


@settings(max_examples=50)  # a monotone rule: 50 pairs find a step the wrong way
@given(ages=st.lists(st.integers(-1, 400), min_size=2, max_size=2), warn=st.integers(1, 60), extra=st.integers(1, 60))
def test_check_age_level_never_falls_as_data_ages(ages, warn, extra):
    young, old = sorted(ages)
    levels = [
        fxcu.check_age(
            "x", TODAY - timedelta(days=a), today=TODAY, warn_days=warn, critical_days=warn + extra, missing="CRITICAL"
        )[1]
        for a in (young, old)
    ]
    assert LEVEL_RANK[levels[0]] <= LEVEL_RANK[levels[1]]
    assert levels[1] == ("CRITICAL" if old > warn + extra else "WARNING" if old > warn else "OK")


@pytest.mark.parametrize(
    ("size", "level"), [(0, "OK"), (100 * 10**6 - 1, "OK"), (100 * 10**6, "OK"), (100 * 10**6 + 1, "WARNING")]
)
def test_check_database_warns_only_over_100_mb(size, level):
    name, got, message = fxcu.check_database(size, 7, limits=LIMITS)
    assert (name, got) == ("mlflow database", level) and message.startswith("7 runs, ")
    assert ("(over 100 MB)" in message) == (level == "WARNING")


@settings(max_examples=50)  # a monotone rule: 50 pairs find a step the wrong way
@given(sizes=st.lists(st.integers(0, 10**12), min_size=2, max_size=2), limit=st.floats(1, 10**5))
def test_check_database_level_never_falls_as_it_grows(sizes, limit):
    limits = dataclasses.replace(LIMITS, db_warn_mb=limit)
    small, big = (fxcu.check_database(s, 1, limits=limits)[1] for s in sorted(sizes))
    assert LEVEL_RANK[small] <= LEVEL_RANK[big]


@pytest.mark.parametrize(
    ("free", "level"),
    [
        (10**9, "OK"),
        (10**9 - 1, "WARNING"),
        (10**8, "WARNING"),
        (10**8 - 1, "CRITICAL"),
        (0, "CRITICAL"),
        (50 * 10**9, "OK"),
    ],
)
def test_check_disk_at_and_around_1_gb_and_100_mb(free, level):
    assert fxcu.check_disk(free, limits=LIMITS)[:2] == ("disk", level)


@settings(max_examples=50)  # a monotone rule: 50 pairs find a step the wrong way
@given(frees=st.lists(st.integers(0, 10**13), min_size=2, max_size=2))
def test_check_disk_level_never_rises_with_more_free_space(frees):
    low, high = (fxcu.check_disk(f, limits=LIMITS)[1] for f in sorted(frees))
    assert LEVEL_RANK[low] >= LEVEL_RANK[high]


def status_entry(now: datetime, hours: float, **fields) -> dict:
    """A status.json entry of a tracked, successful run `hours` before `now`."""
    entry = {"time": (now - timedelta(hours=hours)).isoformat(), "ok": True, "tracked": True, "forecast": 950.0}
    return entry | {"target_date": "2026-12-07", "degraded": []} | fields


@pytest.mark.parametrize(
    ("hours", "fields", "level"),
    [
        (79.99, {}, "OK"),
        (80, {}, "OK"),
        (80.01, {}, "WARNING"),
        (1, {"tracked": False, "tracking_error": "locked"}, "WARNING"),
        (1, {"ok": False, "error": "no USD/CLP"}, "CRITICAL"),
        (200, {"ok": False}, "CRITICAL"),
    ],
)
def test_check_runs_at_and_around_80_hours(hours, fields, level):
    now = datetime(2026, 11, 30, 18, tzinfo=UTC)
    graded = {name: lv for name, lv, _ in fxcu.check_runs({"30d": status_entry(now, hours, **fields)}, now=now)}
    assert graded == {"run 7d": "WARNING", "run 15d": "WARNING", "run 30d": level, "run 90d": "WARNING"}


@settings(max_examples=50)  # a monotone rule: 50 pairs find a step the wrong way
@given(hours=st.lists(st.floats(0, 1000), min_size=2, max_size=2), limit=st.floats(1, 500))
def test_check_runs_level_never_falls_as_the_run_ages(hours, limit):
    now = datetime(2026, 11, 30, 18, tzinfo=UTC)
    recent, old = (
        next(fxcu.check_runs({"7d": status_entry(now, h)}, now=now, max_age_hours=limit))[1] for h in sorted(hours)
    )
    assert LEVEL_RANK[recent] <= LEVEL_RANK[old]


def test_last_run_degraded_is_the_latest_timed_entrys():
    now = datetime(2026, 11, 30, 18, tzinfo=UTC)
    status = {
        "7d": status_entry(now, 30, degraded=["no copper"]),
        "15d": status_entry(now, 2, degraded=["monthly copper"]),
        "30d": {"time": "yesterday"},
    }
    assert fxcu.last_run_degraded(status) == ["monthly copper"]
    assert fxcu.last_run_degraded({"7d": status_entry(now, 1, degraded="oops")}) == []
    assert fxcu.last_run_degraded({"7d": {"time": "never"}}) is None and fxcu.last_run_degraded({}) is None


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (fxcu.DatabaseFacts(remote="http://mlflow:5000"), ("OK", "remote tracking at http://mlflow:5000 (not probed)")),
        (
            fxcu.DatabaseFacts(missing=Path("/d/mlflow/mlflow.db")),
            ("WARNING", "missing (/d/mlflow/mlflow.db); run `fxcu init`"),
        ),
        (
            fxcu.DatabaseFacts(error="database disk image is malformed"),
            ("CRITICAL", "unreadable (database disk image is malformed)"),
        ),
        (fxcu.DatabaseFacts(runs=412, size_bytes=3_932_160), ("OK", "412 runs, 3.9 MB")),
    ],
)
def test_check_mlflow_grades_each_kind_of_store(facts, expected):
    assert fxcu.check_mlflow(facts, limits=LIMITS) == ("mlflow database", *expected)


SERVER = "http://analyst:***@mlflow.desk:5000"
PROBED_AT = datetime(2026, 11, 26, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (
            {"search_seconds": 0.04, "last_run": PROBED_AT - timedelta(hours=3)},
            ("OK", f"{SERVER} answers: search_runs 0.04 s, newest run 3.0 h ago"),
        ),
        (
            {"search_seconds": 2.5, "last_run": PROBED_AT - timedelta(hours=3)},
            ("WARNING", f"{SERVER} is slow: search_runs 2.50 s (over 2 s)"),
        ),
        ({"search_seconds": 0.04}, ("WARNING", f"{SERVER} answers (search_runs 0.04 s) but holds no fxcu run yet")),
        (
            {"search_seconds": 2.5, "last_run": PROBED_AT - timedelta(hours=81)},
            ("CRITICAL", f"runs stopped arriving: the newest on {SERVER} started 81 h ago (over 80 h)"),
        ),
        (
            {"error": "unreachable (ConnectError: [Errno 111] Connection refused)"},
            (
                "CRITICAL",
                f"{SERVER} unreachable (ConnectError: [Errno 111] Connection refused): runs are not being tracked",
            ),
        ),
        (
            {"error": "answered HTTP 503 (OperationalError: connection failed)"},
            (
                "CRITICAL",
                f"{SERVER} answered HTTP 503 (OperationalError: connection failed): runs are not being tracked",
            ),
        ),
    ],
    ids=["ok", "slow", "empty", "stopped-arriving", "down", "database-down"],
)
def test_check_server_grades_reachability_runs_arriving_and_speed(facts, expected):
    probed = fxcu.DatabaseFacts(remote=SERVER, probed=True, **facts)
    assert fxcu.check_server(probed, now=PROBED_AT, limits=LIMITS) == ("mlflow server", *expected)


def test_check_perf_of_a_server_is_its_search_time_and_newest_runs_age():
    server = fxcu.DatabaseFacts(
        remote=SERVER, probed=True, search_seconds=0.0412, last_run=PROBED_AT - timedelta(minutes=90)
    )
    facts = healthy_facts(PROBED_AT, database=server)
    checks = fxcu.check_findings(facts, now=PROBED_AT, limits=LIMITS)
    assert [c[0] for c in checks][-2:] == ["mlflow server", "disk"]
    perf = fxcu.format_perf(fxcu.check_perf(facts, now=PROBED_AT, limits=LIMITS)).split()
    assert "'mlflow_search_seconds'=0.0412s;2;;0" in perf and "'mlflow_last_run_age_hours'=1.5;;80;0" in perf
    assert not [p for p in perf if p.startswith("'mlflow_db'")]


def healthy_facts(now: datetime, **changes) -> fxcu.CheckFacts:
    """The facts of a healthy install at `now`: fresh data, four fresh tracked runs, a small database, free disk."""
    fresh = now.date() - timedelta(days=1)
    facts = fxcu.CheckFacts(
        usdclp=fxcu.SeriesFacts(fxcu.USDCLP_CACHE, fresh, 4930),
        copper=fxcu.SeriesFacts(fxcu.COPPER_CACHE, fresh, 6590),
        status={h: status_entry(now, 2) for h in fxcu.HORIZONS},
        database=fxcu.DatabaseFacts(runs=412, size_bytes=3_932_160),
        free_bytes=48 * 10**9,
    )
    return dataclasses.replace(facts, **changes)


def test_check_findings_and_perf_of_a_healthy_install():
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    checks = fxcu.check_findings(healthy_facts(now), now=now, limits=LIMITS)
    assert [name for name, _, _ in checks] == [
        "usdclp data", "copper data", "run 7d", "run 15d", "run 30d", "run 90d", "mlflow database", "disk"
    ]  # fmt: skip
    assert fxcu.headline(checks) == "OK - all 8 checks passed"
    perf = fxcu.format_perf(fxcu.check_perf(healthy_facts(now), now=now, limits=LIMITS))
    assert perf == (
        "'usdclp_age_days'=1;5;30;0 'copper_age_days'=1;5;;0 'run_7d_age_hours'=2;80;;0 'run_15d_age_hours'=2;80;;0 "
        "'run_30d_age_hours'=2;80;;0 'run_90d_age_hours'=2;80;;0 'mlflow_db'=3932160B;100000000;;0 "
        "'disk_free'=48000000000B;1000000000:;100000000:;0"
    )


def test_check_findings_of_broken_facts_each_say_what_is_wrong():
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    facts = healthy_facts(
        now,
        copper=fxcu.SeriesFacts(fxcu.COPPER_CACHE, error="OSError"),
        database=fxcu.DatabaseFacts(remote="http://mlflow:5000"),
        ledger_error="forecast ledger unreadable",
        free_bytes=5 * 10**8,
    )
    checks = {name: (lv, message) for name, lv, message in fxcu.check_findings(facts, now=now, limits=LIMITS)}
    assert checks["copper data"] == ("CRITICAL", "copper_hgf_usd_lb.parquet unreadable (OSError)")
    assert checks["track record"] == ("WARNING", "forecast ledger unreadable") and checks["disk"][0] == "WARNING"
    labels = [p.label for p in fxcu.check_perf(facts, now=now, limits=LIMITS)]
    assert "copper_age_days" not in labels and "mlflow_db" not in labels and labels[-1] == "disk_free"


def test_track_perf_reports_live_coverage_of_the_last_scored_forecasts():
    ledger, _ = synthetic_ledger(200, z80=0.6, z95=1.0)
    scored = ledger.filter(pl.col("kind") == "live").drop_nulls("hit_80").sort("origin").tail(fxcu.CHECK_LAST)
    want80 = 100 * sum(scored["hit_80"].to_list()) / scored.height  # counted here from the hits scored by hand
    perf = {p.label: p for p in fxcu.track_perf(ledger)}
    assert set(perf) == {"live_coverage_80_7d", "live_coverage_95_7d"}
    assert (
        perf["live_coverage_80_7d"].value == pytest.approx(want80, abs=0.05) and perf["live_coverage_80_7d"].uom == "%"
    )
    assert fxcu.format_perf([perf["live_coverage_80_7d"]]).startswith(
        f"'live_coverage_80_7d'={perf['live_coverage_80_7d'].value:g}%;"
    )
    assert fxcu.track_perf(fxcu.empty_ledger()) == []


# -- Core: the sources, each described in one place ------------------------------------


def test_every_source_is_described_once():
    for series, sources in fxcu.SOURCES.items():
        assert (
            [s.rank for s in sources] == sorted(s.rank for s in sources) == [fxcu.SOURCE_RANK[s.name] for s in sources]
        )
        assert all(s.series == series and s.plausible is fxcu.PLAUSIBLE[series] for s in sources)
    assert [s.label for ss in fxcu.SOURCES.values() for s in ss] == ["yahoo CLP=X", "mindicador", "yahoo HG=F", "fred"]


# -- Shell: files, locks and processes -------------------------------------------------


@pytest.mark.slow
def test_file_lock_times_out_cleanly(tmp_path):
    lock = tmp_path / ".lock"
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(lock), ready, release))
    holder.start()
    try:
        assert ready.wait(20)
        with pytest.raises(TimeoutError, match="held by another process"), fxcu.file_lock(lock, timeout=0.3):
            pass
    finally:
        release.set()
        holder.join(20)


@pytest.mark.slow
def test_overlapping_run_waits_then_exits_cleanly(data_dir, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(data_dir / ".run.lock"), ready, release))
    holder.start()
    try:
        assert ready.wait(20)
        result = cli(["run", "7d", "--offline"], run_env(data_dir, FXCU_LOCK_TIMEOUT="0.5"), tmp_path)
    finally:
        release.set()
        holder.join(20)
    assert result.code == 1 and result.out == ""
    assert (
        result.err.strip().splitlines()[-1].startswith("fxcu: run lock ")
        and "held by another process after" in result.err
    )
    assert "Traceback" not in result.err and not (data_dir / "reports").exists()
    # said once, at the default log level, with the holder named: a second run never waits in silence
    waiting = [line for line in result.err.splitlines() if "Waiting for run lock" in line]
    assert len(waiting) == 1 and "WARNING" in waiting[0]
    assert re.search(rf"held by pid {holder.pid} on \S+ since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC", waiting[0])


def test_clean_leftovers_removes_only_dead_processes_temp_files(tmp_path):
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    live, host = fxcu.temp_owner().split("@")
    dead, other = f"{dead_pid}@{host}", f"{dead_pid}@another_container"
    (tmp_path / "warehouse").mkdir()
    (tmp_path / f".tmp-{dead}-abc").mkdir()
    (tmp_path / f".tmp-{dead}-abc" / "inputs.parquet").write_text("x")
    (tmp_path / "warehouse" / f".usdclp.parquet.{dead}.tmp").write_text("half")
    (tmp_path / f".tmp-{live}@{host}-mine").mkdir()
    (tmp_path / "warehouse" / f".copper.parquet.{live}@{host}.tmp").write_text("being written")
    (tmp_path / "warehouse" / f".copper.parquet.{other}.tmp").write_text("another container's, maybe live")
    (tmp_path / ".tmp-oldrelease").mkdir()
    (tmp_path / "warehouse" / "usdclp.parquet").write_text("kept")
    assert fxcu.clean_leftovers(tmp_path) == 2
    kept_now = [
        ".tmp-oldrelease",
        f".tmp-{live}@{host}-mine",
        f"warehouse/.copper.parquet.{live}@{host}.tmp",
        f"warehouse/.copper.parquet.{other}.tmp",
    ]
    assert temp_leftovers(tmp_path) == sorted(kept_now)
    assert (
        fxcu.clean_leftovers(tmp_path, now=time.time() + 2 * 3600) == 2
    )  # no owner, or another host's: removed once an hour old
    assert temp_leftovers(tmp_path) == sorted(kept_now[1:3])  # a live process of this host: never, however old
    assert (tmp_path / "warehouse" / "usdclp.parquet").read_text() == "kept"


# -- Shell: HTTP -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected", "tries"),
    [
        (httpx.Response(429, text="Too Many Requests\r\n"), "HTTP 429", 3),
        (httpx.Response(503, text="Service Unavailable"), "HTTP 503", 3),
        (httpx.Response(500, text="<html>oops</html>"), "HTTP 500", 3),
        (httpx.Response(200, text="{not json"), "malformed JSON", 1),
        (
            httpx.Response(
                200, json={"chart": {"result": None, "error": {"code": "Not Found", "description": "No data found"}}}
            ),
            "Not Found",
            1,
        ),
        (
            httpx.Response(
                404, json={"chart": {"result": None, "error": {"code": "Not Found", "description": "No data found"}}}
            ),
            "HTTP 404",
            1,
        ),
    ],
)
def test_fetch_yahoo_failures_become_results(tmp_path, response, expected, tries):
    def answer(request):  # a fresh response each try, as a server sends
        return httpx.Response(response.status_code, headers=response.headers, content=response.content)

    handler, calls = counting(answer)
    config = make_config(tmp_path)
    with mock_client(handler) as client:
        result = fxcu.fetch_source(
            source_named("usdclp", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW
        )
    assert not result.ok and expected in result.error
    assert len(calls) == tries  # only transport errors, 429 and 5xx are retried


@pytest.mark.parametrize(
    "body",
    [
        {"chart": {"result": [None]}},
        {"chart": {"result": [{"meta": "x", "timestamp": [1], "indicators": {"quote": [{"close": [1.0]}]}}]}},
        {"chart": {"result": {"timestamp": [1]}}},
        {
            "chart": {
                "result": [
                    {
                        "meta": {"exchangeTimezoneName": "Mars/Olympus"},
                        "timestamp": [1],
                        "indicators": {"quote": [{"close": [1.0]}]},
                    }
                ]
            }
        },
        {"chart": {"result": [{"timestamp": ["soon"], "indicators": {"quote": [{"close": [1.0]}]}}]}},
        [1, 2, 3],
        "just a string",
    ],
)
def test_fetch_yahoo_any_body_shape_is_a_failed_source_not_a_crash(tmp_path, body):
    config = make_config(tmp_path)
    with mock_client(lambda request: httpx.Response(200, json=body)) as client:
        result = fxcu.fetch_source(
            source_named("usdclp", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW
        )
    assert not result.ok and result.error


def test_describe_error_on_odd_error_bodies():
    request = httpx.Request("GET", "https://x/y?api_key=" + FRED_KEY)
    for body in ('{"chart": null}', "[1]", '{"error_message": "Bad Request.  x"}', "plain"):
        exc = httpx.HTTPStatusError("x", request=request, response=httpx.Response(503, text=body, request=request))
        text = fxcu.describe_error(exc, FRED_KEY)
        assert text.startswith("HTTP 503") and FRED_KEY not in text


def test_fetch_yahoo_timeout_retried_then_reported(tmp_path):
    def handler(request):
        raise httpx.ReadTimeout("timed out", request=request)

    handler, calls = counting(handler)
    config = make_config(tmp_path)
    with mock_client(handler) as client:
        result = fxcu.fetch_source(
            source_named("copper", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW
        )
    assert "timeout" in result.error and len(calls) == 3


def test_fetch_json_does_not_retry_a_name_that_does_not_resolve_or_a_refused_connection(tmp_path):
    """Offline, every name lookup fails at once, and retrying only waits: one try per source."""

    def handler(request):
        raise httpx.ConnectError("[Errno -2] Name or service not known", request=request) from socket.gaierror(
            -2, "Name or service not known"
        )

    handler, calls = counting(handler)
    config = make_config(tmp_path)
    slept: list[float] = []
    with mock_client(handler) as client:
        result = fxcu.fetch_source(
            source_named("usdclp", "yahoo"), config, client, no_wait_fetch(config, slept=slept), since=None, now=NOW
        )
    assert result.error == "connection error (ConnectError: [Errno -2] Name or service not known)"
    assert len(calls) == 1 and slept == []

    def refused():
        raise httpx.ConnectError("[Errno 111] Connection refused") from ConnectionRefusedError(111, "refused")

    with pytest.raises(httpx.ConnectError) as caught:
        refused()
    assert not fxcu._is_transient(caught.value)  # refused: one try too

    def no_route():
        raise httpx.ConnectError("[Errno 101] Network is unreachable") from OSError(errno.ENETUNREACH, "unreachable")

    with pytest.raises(httpx.ConnectError) as caught:
        no_route()
    assert not fxcu._is_transient(caught.value)  # no route to any host: one try
    assert fxcu._is_transient(httpx.ConnectError("[Errno 104] Connection reset by peer"))  # a reset keeps its retries
    assert fxcu._is_transient(httpx.ReadTimeout("timed out"))  # a timeout keeps its retries, as 503 and 429 do


def test_fetch_json_recovers_after_transient_errors(tmp_path):
    responses = iter(
        [httpx.Response(503), httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200, json={"ok": 1})]
    )
    handler, calls = counting(lambda request: next(responses))
    config = make_config(tmp_path)
    slept: list[float] = []
    with mock_client(handler) as client:
        assert no_wait_fetch(config, slept=slept)(client, "https://x/y", {}) == {"ok": 1}
    assert len(calls) == 3
    # the 503 waits the jittered backoff (1 s, plus up to 2 s of jitter); the 429 waits its Retry-After
    assert 1.0 <= slept[0] <= 3.0 and slept[1:] == [1.0]


def test_fetch_json_honours_retry_after_capped_by_config(tmp_path):
    responses = iter(
        [
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503, headers={"Retry-After": "3600"}),
            httpx.Response(503, headers={"Retry-After": "soon"}),  # not a number of seconds: the backoff
            httpx.Response(200, json={"ok": 1}),
        ]
    )
    handler, calls = counting(lambda request: next(responses))
    config = make_config(tmp_path, attempts=4, max_retry_after=12.0)
    slept: list[float] = []
    with mock_client(handler) as client:
        assert no_wait_fetch(config, slept=slept)(client, "https://x/y", {}) == {"ok": 1}
    assert len(calls) == 4 and slept[:2] == [7.0, 12.0]
    assert 4.0 <= slept[2] <= 6.0  # the third try's backoff: 2**2 s plus up to 2 s of jitter


@pytest.fixture
def stopped_clock(monkeypatch) -> float:
    """`time.monotonic` stopped at one instant for the test: the deadlines of `make_fetch_json` and tenacity's retry
    budget see no time pass, so a request stalled on a loaded machine cannot move a wait or a cut."""
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now)
    return now


def test_fetch_json_retry_after_never_outwaits_the_retry_budget(tmp_path, stopped_clock):
    handler, calls = counting(lambda request: httpx.Response(429, headers={"Retry-After": "25"}))
    config = make_config(tmp_path, attempts=2, retry_budget=10.0, max_retry_after=30.0)
    slept: list[float] = []
    with mock_client(handler) as client, pytest.raises(httpx.HTTPStatusError):
        no_wait_fetch(config, slept=slept)(client, "https://x/y", {})
    assert len(calls) == 2 and slept == [10.0]  # Retry-After 25 s, cut to the 10 s budget


def test_fetch_json_retry_after_never_outwaits_the_deadline(tmp_path, stopped_clock):
    handler, calls = counting(lambda request: httpx.Response(503, headers={"Retry-After": "20"}))
    config = make_config(tmp_path, attempts=2)
    slept: list[float] = []
    with mock_client(handler) as client, pytest.raises(httpx.HTTPStatusError):
        no_wait_fetch(config, deadline=stopped_clock + 5, slept=slept)(client, "https://x/y", {})
    assert len(calls) == 2 and slept == [5.0]  # Retry-After 20 s, cut to the 5 s left


def test_fetch_json_never_retries_past_the_deadline(tmp_path, stopped_clock):
    handler, calls = counting(lambda request: httpx.Response(503))
    config = make_config(tmp_path)
    fetch_json = no_wait_fetch(config, deadline=stopped_clock + 0.5)
    with mock_client(handler) as client, pytest.raises(httpx.HTTPStatusError):
        fetch_json(client, "https://x/y", {})
    assert len(calls) == 1  # the real error, not a retry into the deadline
    spent = fxcu.make_fetch_json(config, deadline=stopped_clock - 1)
    with mock_client(handler) as client, pytest.raises(httpx.TimeoutException, match="budget"):
        spent(client, "https://x/y", {})
    assert len(calls) == 1  # nothing sent once the budget is spent


def test_fetch_json_cuts_the_last_timeout_to_the_budget(tmp_path, stopped_clock):
    seen = []

    def handler(request):
        seen.append(request.extensions["timeout"]["read"])
        return httpx.Response(200, json={})

    config = make_config(tmp_path, timeout=20.0)
    with mock_client(handler) as client:
        fxcu.make_fetch_json(config, deadline=stopped_clock + 3)(client, "https://x/y", {})
        fxcu.make_fetch_json(config)(client, "https://x/y", {})
    assert seen == [3.0, 20.0]


def test_retry_after_is_capped():
    request = httpx.Request("GET", "https://x")
    exc = httpx.HTTPStatusError(
        "x", request=request, response=httpx.Response(429, headers={"Retry-After": "3600"}, request=request)
    )
    assert fxcu._retry_after(exc, 30) == 30


def test_fetch_sends_a_browser_user_agent(tmp_path):
    seen = []

    def handler(request):
        seen.append(request.headers["user-agent"])
        return httpx.Response(200, json=yahoo_body("chart_200_EURUSD=X_fx.json"))

    config = make_config(tmp_path)
    with mock_client(handler) as client:
        fxcu.fetch_source(source_named("usdclp", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW)
    assert seen and seen[0].startswith("Mozilla/5.0")


# curl_cffi 0.17's message for a refused connection, verbatim
CURL_REFUSED = (
    "Failed to perform, curl: (7) Failed to connect to 127.0.0.1:50289 after 0 ms: Could not connect to server. "
    "See https://curl.se/libcurl/c/libcurl-errors.html first for more details."
)


def compress(body: bytes, encoding: str) -> bytes:
    """`body` as a server sends it with this Content-Encoding (independent encoders: gzip, zlib, brotli, zstandard)."""
    import brotli
    import zstandard

    return {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "br": brotli.compress,
        "zstd": zstandard.ZstdCompressor().compress,
        "": bytes,
    }[encoding](body)


ENCODINGS = ["gzip", "deflate", "br", "zstd", ""]  # what Chrome advertises, and no encoding


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=5000), cuts=st.lists(st.integers(1, 400), max_size=20), encoding=st.sampled_from(ENCODINGS)
)
def test_decoded_gives_back_the_body_in_any_chunking(data, cuts, encoding):
    sent, chunks = compress(data, encoding), []
    for cut in cuts:
        chunks.append(sent[:cut])
        sent = sent[cut:]
    assert b"".join(fxcu.decoded([*chunks, sent], encoding)) == data


def test_decoded_reads_a_deflate_header_split_across_two_chunks():
    """Found by hypothesis: a zlib body whose two-byte header came one byte at a time was read as raw deflate."""
    sent = zlib.compress(b"[1,2]")
    assert b"".join(fxcu.decoded([sent[:1], sent[1:]], "deflate")) == b"[1,2]"
    assert b"".join(fxcu.decoded([b"", sent[:1], b"", sent[1:]], "deflate")) == b"[1,2]"
    empty = zlib.compress(b"")
    assert b"".join(fxcu.decoded([empty[:1], empty[1:]], "deflate")) == b""


def test_decoded_reads_every_gzip_member_every_zstd_frame_and_raw_deflate():
    import zstandard

    frames = zstandard.ZstdCompressor().compress(b"[1,") + zstandard.ZstdCompressor().compress(b"2]")
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # deflate with no zlib header, as some servers send it
    assert b"".join(fxcu.decoded([gzip.compress(b"[1,") + gzip.compress(b"2]")], "gzip")) == b"[1,2]"
    assert b"".join(fxcu.decoded([frames[:5], frames[5:]], "zstd")) == b"[1,2]"
    assert b"".join(fxcu.decoded([raw.compress(b"[1,2]") + raw.flush()], "deflate")) == b"[1,2]"


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_decoded_yields_small_pieces_of_a_bomb(encoding):
    bomb = compress(b"\0" * 2**26, encoding)  # 64 MB from a few kB
    pieces = fxcu.decoded([bomb], encoding)
    first = [next(pieces) for _ in range(50)]
    assert all(len(p) <= 2 * fxcu.PIECE for p in first) and sum(map(len, first)) <= 50 * 2**17  # not 64 MB at once


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_decoded_bad_body_and_unknown_encoding_are_payload_errors(encoding):
    with pytest.raises(fxcu.PayloadError, match="bad compressed body"):
        b"".join(fxcu.decoded([b"not compressed at all, certainly"], encoding))
    with pytest.raises(fxcu.PayloadError, match="'compress' was not asked for"):
        fxcu.decoded([b"x"], "compress")


@pytest.mark.parametrize(
    ("code", "connected", "expected"),
    [
        (28, False, httpx.ConnectTimeout),
        (28, True, httpx.ReadTimeout),
        (7, False, httpx.ConnectError),
        (60, False, httpx.ConnectError),
        (52, True, httpx.RemoteProtocolError),
        (16, True, httpx.NetworkError),  # HTTP/2 framing: no httpx twin
    ],
)
def test_curl_error_name_is_the_httpx_error_for_the_same_failure(code, connected, expected):
    name = fxcu.curl_error_name(code, connected)
    assert getattr(httpx, name) is expected and fxcu._is_transient(expected("x"))  # retried as httpx's own


def test_curl_message_is_one_short_line():
    assert fxcu.curl_message(CURL_REFUSED) == (
        "curl: (7) Failed to connect to 127.0.0.1:50289 after 0 ms: Could not connect to server."
    )


def test_browser_transport_refused_connection_is_a_connect_error(tmp_path):
    config = make_config(tmp_path, yahoo_url=closed_url(), attempts=1)
    with fxcu.make_client(config) as client:
        result = fxcu.fetch_source(
            source_named("copper", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW
        )
    assert result.error.startswith("connection error (ConnectError: curl: (7) Failed to connect to 127.0.0.1")


def test_fred_missing_key_is_a_result_not_a_request(tmp_path):
    handler, calls = counting(lambda request: httpx.Response(500))
    config = make_config(tmp_path, fred_api_key=None)
    with mock_client(handler) as client:
        result = fxcu.fetch_source(
            source_named("copper", "fred"), config, client, no_wait_fetch(config), since=None, now=NOW
        )
    assert result.error == "FRED_API_KEY is not set" and not calls


def test_fred_5xx_error_redacts_the_key(tmp_path, caplog):
    def handler(request):
        raise httpx.ConnectError(f"failed to connect to {request.url}", request=request)

    config = make_config(tmp_path)
    with caplog.at_level(logging.DEBUG), mock_client(handler) as client:
        result = fxcu.fetch_source(
            source_named("copper", "fred"), config, client, no_wait_fetch(config), since=None, now=NOW
        )
    assert "connection error" in result.error
    assert FRED_KEY not in result.error and FRED_KEY not in caplog.text
    assert "api_key=***" in result.error


def client_hello_fields(hello: bytes) -> tuple[list[int], list[int]]:
    """The cipher suites and extension types of a raw ClientHello record (RFC 8446 section 4.1.2)."""
    at = 5 + 4 + 2 + 32  # record header, handshake header, legacy_version, random
    at += 1 + hello[at]  # session id
    n = int.from_bytes(hello[at : at + 2], "big")
    ciphers = [int.from_bytes(hello[i : i + 2], "big") for i in range(at + 2, at + 2 + n, 2)]
    at += 2 + n
    at += 1 + hello[at]  # compression methods
    end, at, extensions = at + 2 + int.from_bytes(hello[at : at + 2], "big"), at + 2, []
    while at < end:
        extensions.append(int.from_bytes(hello[at : at + 2], "big"))
        at += 4 + int.from_bytes(hello[at + 2 : at + 4], "big")
    return ciphers, extensions


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x0a0a, 0x1a1a, ... 0xfafa): Chrome sends them, OpenSSL never does."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


CRUMB, COOKIE = "fxcuTestCrumb7", "A3=d=fxcu-test-cookie-value"  # fakes, in the shape of Yahoo's


def crumb_yahoo() -> dict:
    """Yahoo as it answers a client it does not trust yet: the chart only with its cookie and crumb, the crumb only
    with the cookie, and the cookie on a 404 page (as fc.yahoo.com does). The cookie URL is `/fc` here."""

    def has_cookie(handler) -> bool:
        return COOKIE in (handler.headers.get("Cookie") or "")

    def chart(handler):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(handler.path).query))
        if query.get("crumb") != CRUMB or not has_cookie(handler):
            return Reply(401, INVALID_CRUMB)
        return good_routes()[YAHOO_CLP if "CLP" in urllib.parse.unquote(handler.path) else YAHOO_HG]

    def getcrumb(handler):
        return Reply(200, CRUMB, "text/plain;charset=utf-8") if has_cookie(handler) else Reply(401, INVALID_CRUMB)

    cookie = Reply(404, "<html>404</html>", "text/html", headers=(("Set-Cookie", f"{COOKIE}; Path=/; HttpOnly"),))
    return {"/fc": cookie, fxcu.YAHOO_CRUMB_PATH: getcrumb, "/v8/finance/chart/": chart}


@pytest.mark.slow
@pytest.mark.parametrize("impersonate", ["off", "chrome"])
def test_yahoo_crumb_fetched_on_demand_retried_once_then_reused_and_kept_secret(tmp_path, caplog, impersonate):
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    with FakeSources(crumb_yahoo()) as api:
        config = make_config(
            tmp_path, yahoo_url=api.url, yahoo_cookie_url=f"{api.url}/fc", impersonate=impersonate, max_age_days=100000
        )
        session = fxcu.YahooSession(config)
        with caplog.at_level(logging.DEBUG), fxcu.make_client(config, session) as client:
            usdclp = fxcu.fetch_series("usdclp", config, client, now=now, fetch_json=no_wait_fetch(config))
            copper = fxcu.fetch_series("copper", config, client, now=now, fetch_json=no_wait_fetch(config))
    assert usdclp.source == "yahoo" and usdclp.frame.height == 4664 and copper.source == "yahoo"
    paths = [urllib.parse.unquote(urllib.parse.urlsplit(p).path) for p in api.requests]
    assert paths == [
        YAHOO_CLP,
        "/fc",
        fxcu.YAHOO_CRUMB_PATH,
        YAHOO_CLP,
        YAHOO_HG,
    ]  # one retry, then the crumb is reused
    assert [f"crumb={CRUMB}" in p for p in api.requests] == [False, False, False, True, True]
    assert session.crumb_state == "fetched" and session.level() == "OK"
    assert "Yahoo asked for a cookie and crumb (HTTP 401): fetching them, retrying once" in caplog.text
    assert CRUMB not in caplog.text and "fxcu-test-cookie" not in caplog.text and CRUMB not in repr(session)
    for path in config.data_dir.rglob("*"):  # never on disk
        assert not path.is_file() or (
            CRUMB.encode() not in path.read_bytes() and b"fxcu-test-cookie" not in path.read_bytes()
        )


@pytest.mark.slow
def test_yahoo_crumb_request_refused_is_asked_once_and_not_retried(tmp_path, caplog):
    with FakeSources(crumb_yahoo()) as api:
        config = make_config(tmp_path, yahoo_url=api.url, yahoo_cookie_url=closed_url())  # the default transport
        session = fxcu.YahooSession(config)
        with caplog.at_level(logging.INFO), fxcu.make_client(config, session) as client:
            result = fxcu.fetch_source(
                source_named("usdclp", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW
            )
    # 401 asks for a crumb, the cookie host refuses the connection: a refused connection is not retried, and the
    # failure says so in one line
    assert not result.ok and result.error.startswith("connection error (ConnectError: curl: (7) Failed to connect")
    assert api.count(YAHOO_CLP) == 1 and api.count(fxcu.YAHOO_CRUMB_PATH) == 0
    assert session.crumb_state == "refused" and session.crumb_text() == "crumb refused (cookie or crumb request failed)"


@pytest.mark.slow
def test_yahoo_transport_presents_chrome_tls_fingerprint_over_https(tmp_path, monkeypatch):
    cafile, context = make_tls_pair(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cafile))  # both transports trust it as httpx does from the environment
    chart = Reply(body=json.dumps(chart_payload(real_copper().tail(30))))
    seen = {}
    for mode in ("chrome", "off"):
        with FakeSources({YAHOO_HG: chart}, tls=context) as api:
            config = make_config(tmp_path, yahoo_url=api.url, impersonate=mode)
            session = fxcu.YahooSession(config)
            with fxcu.make_client(config, session) as client:
                result = fxcu.fetch_source(
                    source_named("copper", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW
                )
        assert result.ok and result.frame.height == 30, result.error
        seen[mode] = (*client_hello_fields(api.hellos[0]), api.headers[0], session.transport_text())
    ciphers, extensions, headers, transport = seen["chrome"]
    assert any(map(is_grease, ciphers)) and any(map(is_grease, extensions))  # RFC 8701 GREASE, as Chrome sends
    assert 0x001B in extensions  # compress_certificate (brotli), a BoringSSL/Chrome extension
    assert "Chrome/" in headers["user-agent"] and headers["user-agent"] != fxcu.USER_AGENT and "sec-ch-ua" in headers
    assert transport.endswith("TLS fingerprint (curl_cffi 0.17.0)") and transport.startswith("chrome")
    ciphers, extensions, headers, transport = seen["off"]
    assert not any(map(is_grease, ciphers + extensions)) and 0x001B not in extensions  # OpenSSL's hello
    assert headers["user-agent"] == fxcu.USER_AGENT and transport == "plain httpx (FXCU_HTTP_IMPERSONATE=off)"
    monkeypatch.delenv("SSL_CERT_FILE")
    with FakeSources({YAHOO_HG: chart}, tls=context) as api:  # a certificate nobody vouches for is refused
        config = make_config(tmp_path, yahoo_url=api.url, impersonate="chrome")
        with fxcu.make_client(config) as client:
            result = fxcu.fetch_source(
                source_named("copper", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW
            )
    assert not result.ok and "connection error" in result.error and api.requests == []


@pytest.mark.slow
def test_only_yahoo_gets_the_browser_fingerprint(tmp_path):
    chart = Reply(body=json.dumps(chart_payload(real_copper().tail(30))))
    with FakeSources({YAHOO_HG: chart}) as yahoo, FakeSources(good_routes()) as others:
        config = make_config(tmp_path, yahoo_url=yahoo.url, mindicador_url=others.url, impersonate="chrome")
        with fxcu.make_client(config) as client:
            assert fxcu.fetch_source(
                source_named("copper", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW
            ).ok
            assert fxcu.fetch_source(
                source_named("usdclp", "mindicador"),
                config,
                client,
                no_wait_fetch(config),
                since=None,
                now=CLP_END,
            ).ok
    assert "sec-ch-ua" in yahoo.headers[0] and yahoo.headers[0]["user-agent"] != fxcu.USER_AGENT  # curl's Chrome
    assert all("sec-ch-ua" not in h and h["user-agent"] == fxcu.USER_AGENT for h in others.headers)  # plain httpx


@pytest.mark.slow
def test_yahoo_transport_falls_back_to_plain_httpx_with_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "curl_cffi", None)  # as where no curl_cffi wheel installs
    with FakeSources({YAHOO_HG: Reply(body=json.dumps(chart_payload(real_copper().tail(30))))}) as api:
        config = make_config(tmp_path, yahoo_url=api.url)
        session = fxcu.YahooSession(config)
        with caplog.at_level(logging.INFO), fxcu.make_client(config, session) as client:
            results = [
                fxcu.fetch_source(
                    source_named("copper", "yahoo"), config, client, no_wait_fetch(config), since=None, now=NOW
                )
                for _ in range(2)
            ]
    assert all(r.ok for r in results) and api.headers[0]["user-agent"] == fxcu.USER_AGENT
    lines = [r for r in caplog.records if "Browser TLS fingerprint unavailable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    assert (
        session.transport_text().startswith("plain httpx: curl_cffi could not load (ModuleNotFoundError")
        and session.level() == "WARNING"
    )


@pytest.mark.slow
def test_check_network_says_which_transport_and_crumb_state(tmp_path, capsys):
    with FakeSources({**crumb_yahoo(), **good_routes()}) as api:
        fxcu.main(["check", "--network", "--json"], fault_env(tmp_path, api.url, FXCU_YAHOO_COOKIE_URL=f"{api.url}/fc"))
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["source yahoo CLP=X"]["level"] == "OK" and checks["source yahoo HG=F"]["level"] == "OK"
    session = checks["yahoo session"]
    assert session["level"] == "OK" and re.fullmatch(
        r"chrome\d+ TLS fingerprint \(curl_cffi [\d.]+\); cookie and crumb fetched on demand", session["message"]
    )
    assert api.count(fxcu.YAHOO_CRUMB_PATH) == 1 and CRUMB not in json.dumps(checks)


# Cassettes: real data in real response shapes.


def read_cassette(name: str) -> list[dict]:
    """The interactions of a vcrpy cassette in cassettes/."""
    import yaml

    return yaml.safe_load((CASSETTES / name).read_text())["interactions"]


def replay_routes(*names: str, encoding: str = "gzip") -> dict[str, Callable]:
    """FakeSources routes that answer each recorded request of these cassettes once, in order, with its recorded
    status, headers and body, the body sent with `encoding` as a CDN sends it; fc.yahoo.com's cookie page is `/fc`.
    (vcrpy cannot play a cassette through curl, which is not an httpx transport: vcrpy#968.)"""
    queues: dict[str, list[Reply]] = {}
    for name in names:
        for step in read_cassette(name):
            url, answer = urllib.parse.urlsplit(step["request"]["uri"]), step["response"]
            kind = next((v[0] for k, v in answer["headers"].items() if k.lower() == "content-type"), "text/plain")
            kept = tuple((k, v[0]) for k, v in answer["headers"].items() if k.lower().startswith("set-cookie"))
            body = compress(answer["body"]["string"].encode(), encoding)
            reply = Reply(answer["status"]["code"], body, kind, headers=kept, encoding=encoding)
            queues.setdefault("/fc" if url.hostname == "fc.yahoo.com" else url.path, []).append(reply)
    return {path: lambda _, q=q: q.pop(0) if q else Reply(500, "cassette played out") for path, q in queues.items()}


@contextlib.contextmanager
def yahoo_replay(tmp_path: Path, monkeypatch, *names: str, encoding: str = "gzip"):
    """These Yahoo cassettes served over HTTPS on 127.0.0.1 (a certificate SSL_CERT_FILE trusts); yields the URLs."""
    cafile, context = make_tls_pair(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cafile))
    with FakeSources(replay_routes(*names, encoding=encoding), tls=context) as api:
        yield api, {"yahoo_url": api.url, "yahoo_cookie_url": f"{api.url}/fc"}


def cassette(*names: str):
    """Play these vcrpy cassettes (FRED and mindicador: plain httpx, which vcrpy intercepts; `-m cassette` selects
    every test that does, e.g. to re-record)."""
    vcr = pytest.mark.vcr(*(str(CASSETTES / n) for n in names))
    return lambda test: pytest.mark.cassette(vcr(test))


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_fetch_yahoo_recorded_clpx_through_the_default_transport_in_each_encoding(tmp_path, monkeypatch, encoding):
    """The Chrome transport (the default) gets the recorded CLP=X body as a CDN sends it to Chrome, decoded once."""
    with yahoo_replay(tmp_path, monkeypatch, "yahoo_clpx_max.yaml", encoding=encoding) as (api, urls):
        config = make_config(tmp_path, **urls)
        with fxcu.make_client(config) as client:
            result = fxcu.fetch_source(
                source_named("usdclp", "yahoo"), config, client, no_wait_fetch(config), since=None, now=CLP_END
            )
    assert result.ok, result.error
    assert result.frame.height == 4666 and result.frame[fxcu.DATE].max() == date(2024, 7, 15)
    recorded = json.loads(read_cassette("yahoo_clpx_max.yaml")[0]["response"]["body"]["string"])
    assert result.frame.equals(fxcu.parse_yahoo_chart(recorded))  # byte for byte what the cassette holds
    assert api.headers[0]["accept-encoding"] == "gzip, deflate, br, zstd"  # as Chrome asks; every one is decoded
    assert "sec-ch-ua" in api.headers[0]  # curl's Chrome, not plain httpx


@pytest.mark.slow
def test_fetch_yahoo_recorded_clpx_on_plain_httpx_off(tmp_path, monkeypatch):
    """The one test of the plain-httpx fallback (FXCU_HTTP_IMPERSONATE=off) on a recorded body, gzip as a CDN sends."""
    with yahoo_replay(tmp_path, monkeypatch, "yahoo_clpx_max.yaml") as (api, urls):
        config = make_config(tmp_path, impersonate="off", **urls)
        with fxcu.make_client(config) as client:
            result = fxcu.fetch_source(
                source_named("usdclp", "yahoo"), config, client, no_wait_fetch(config), since=None, now=CLP_END
            )
    assert result.ok and result.frame.height == 4666 and api.headers[0]["user-agent"] == fxcu.USER_AGENT


@pytest.mark.slow
def test_fetch_series_copper_from_yahoo_cassette_fills_warehouse(tmp_path, monkeypatch, caplog):
    now = datetime(2026, 2, 24, 12, tzinfo=UTC)
    with yahoo_replay(tmp_path, monkeypatch, "yahoo_hgf_max.yaml") as (api, urls):
        config = make_config(tmp_path, max_age_days=10, **urls)
        with caplog.at_level(logging.INFO), fxcu.make_client(config) as client:
            series = fxcu.fetch_series("copper", config, client, now=now)
    assert series.source == "yahoo" and series.frequency == "daily" and series.frame.height == 6399
    assert "Successfully fetched 6399 copper price points from yahoo" in caplog.text
    stored = pl.read_parquet(config.warehouse / fxcu.COPPER_CACHE)
    assert stored.equals(series.frame) and set(stored.columns) == {fxcu.DATE, fxcu.CLOSE, fxcu.SOURCE, fxcu.FETCHED_AT}
    assert (stored[fxcu.DATE].dt.weekday() < 6).all()
    assert any("weekend rows" in note for note in series.notes)


@pytest.mark.slow
@cassette("fred_pcoppusdm.yaml")
def test_fetch_series_copper_falls_back_to_fred_monthly(tmp_path, monkeypatch, caplog):
    now = datetime(2026, 8, 20, tzinfo=UTC)
    with yahoo_replay(tmp_path, monkeypatch, "yahoo_404_not_found.yaml") as (api, urls):
        config = make_config(tmp_path, **urls)
        with caplog.at_level(logging.INFO), fxcu.make_client(config) as client:
            series = fxcu.fetch_series("copper", config, client, now=now)
    assert series.source == "fred" and series.frequency == "monthly"
    assert series.frame.height == 343
    assert "Yahoo Finance copper fetch failed (HTTP 404 Not Found" in caplog.text
    assert "Using FRED backup for copper prices" in caplog.text
    assert any("monthly copper" in note for note in series.notes)
    # monthly copper never lands in the daily warehouse file
    assert not (config.warehouse / fxcu.COPPER_CACHE).exists()
    assert FRED_KEY not in caplog.text


@pytest.mark.slow
@cassette("fred_bad_key.yaml")
def test_fetch_series_copper_all_down_no_cache_is_empty_not_fatal(tmp_path, monkeypatch, caplog):
    with yahoo_replay(tmp_path, monkeypatch, "yahoo_404_not_found.yaml") as (api, urls):
        config = make_config(tmp_path, **urls)
        with caplog.at_level(logging.INFO), fxcu.make_client(config) as client:
            series = fxcu.fetch_series("copper", config, client, now=datetime(2026, 8, 20, tzinfo=UTC))
    assert not series.ok and "not registered" in series.error
    assert "All copper sources failed: continuing without copper (forecasts degraded)" in caplog.text
    assert FRED_KEY not in caplog.text and FRED_KEY not in series.error


@pytest.mark.slow
@cassette("mindicador_dolar_2023_2024.yaml")
def test_fetch_series_usdclp_429_falls_back_to_mindicador(tmp_path, monkeypatch, caplog):
    with yahoo_replay(tmp_path, monkeypatch, "yahoo_429.yaml") as (api, urls):
        config = make_config(tmp_path, **urls)
        fetch_json = no_wait_fetch(config)
        with caplog.at_level(logging.INFO), fxcu.make_client(config) as client:
            series = fxcu.fetch_series("usdclp", config, client, now=CLP_END, fetch_json=fetch_json)
    assert series.source == "mindicador" and series.frame[fxcu.DATE].max() == date(2024, 7, 15)
    assert series.frame[fxcu.DATE].min() == date(2023, 1, 2)
    assert "HTTP 429" in " ".join(series.notes)
    assert "Using mindicador.cl backup for USD/CLP prices" in caplog.text
    # the cassette's cookie and refused getcrumb were played, and the placeholder cookie is in no log line
    assert "Yahoo refused a crumb (getcrumb answered HTTP 429)" in caplog.text and "placeholder" not in caplog.text
    assert api.count("/fc") == 1 and api.count(fxcu.YAHOO_CRUMB_PATH) == 1 and api.count(YAHOO_CLP) == 4


def test_fetch_series_usdclp_fallback_merges_into_cache_without_overwriting(tmp_path):
    config = make_config(tmp_path)
    old = provenance(make_prices(20, start=date(2026, 9, 1), level=950.0), "yahoo")
    fxcu.write_parquet_atomic(old, config.warehouse / fxcu.USDCLP_CACHE)
    now = datetime(2026, 10, 8, 18, tzinfo=UTC)
    real_body = load_json("mindicador", "dolar_200_last31.json")

    def handler(request):
        if request.url.host == "mindicador.cl":
            assert request.url.path == "/api/dolar/2026"
            return httpx.Response(200, json=real_body)
        return httpx.Response(429, text="Too Many Requests\r\n")

    with mock_client(handler) as client:
        series = fxcu.fetch_series("usdclp", config, client, now=now, fetch_json=no_wait_fetch(config))
    assert series.source == "mindicador"
    merged = pl.read_parquet(config.warehouse / fxcu.USDCLP_CACHE)
    assert set(old[fxcu.DATE]) <= set(merged[fxcu.DATE]) and merged[fxcu.DATE].max() == date(2026, 10, 8)
    overlap = merged.filter(pl.col(fxcu.DATE).is_in(old[fxcu.DATE].implode()))
    assert overlap[fxcu.SOURCE].unique().to_list() == ["yahoo"]


def test_fetch_series_all_down_uses_cache_and_never_shrinks_it(tmp_path, caplog):
    config = make_config(tmp_path)
    old = provenance(make_prices(300, start=date(2022, 11, 1)), "yahoo")  # ends before NOW: no future rows
    path = config.warehouse / fxcu.USDCLP_CACHE
    fxcu.write_parquet_atomic(old, path)
    before = path.read_bytes()
    with caplog.at_level(logging.INFO), mock_client(lambda r: httpx.Response(503)) as client:
        series = fxcu.fetch_series("usdclp", config, client, now=NOW, fetch_json=no_wait_fetch(config))
    assert series.source == "cache" and series.frame.height == 300
    assert path.read_bytes() == before
    assert "Both sources failed, using 300 cached USD/CLP data points" in caplog.text
    assert any("cached data" in note for note in series.notes)


def test_fetch_series_all_down_no_cache_usdclp_fails(tmp_path):
    config = make_config(tmp_path)
    with mock_client(lambda r: httpx.Response(503)) as client:
        series = fxcu.fetch_series("usdclp", config, client, now=NOW, fetch_json=no_wait_fetch(config))
    assert not series.ok and "yahoo" in series.error and "mindicador" in series.error


def test_fetch_series_incremental_asks_only_for_the_missing_days(tmp_path):
    config = make_config(tmp_path)
    old = provenance(make_prices(200, start=date(2023, 4, 1), level=4.0), "yahoo")  # copper: USD/lb
    fxcu.write_parquet_atomic(old, config.warehouse / fxcu.COPPER_CACHE)
    last = old[fxcu.DATE].max()
    newer = make_prices(12, start=last - timedelta(days=6), seed=3, level=4.0)
    seen = []

    def handler(request):
        seen.append(dict(request.url.params))
        return httpx.Response(200, json=chart_payload(newer))

    now = datetime.combine(newer[fxcu.DATE].max(), datetime.min.time(), UTC) + timedelta(days=1)
    with mock_client(handler) as client:
        series = fxcu.fetch_series("copper", config, client, now=now, fetch_json=no_wait_fetch(config))
    assert "range" not in seen[0] and int(seen[0]["period1"]) <= int(
        datetime.combine(last, datetime.min.time(), UTC).timestamp()
    )
    assert set(old[fxcu.DATE]) | set(newer[fxcu.DATE]) == set(series.frame[fxcu.DATE])
    # the overlap's revised values replaced the cached ones
    overlap_day = newer[fxcu.DATE][0]
    assert series.frame.filter(pl.col(fxcu.DATE) == overlap_day)[fxcu.CLOSE].item() == newer[fxcu.CLOSE][0]


@pytest.mark.slow
def test_library_fetch_usdclp_and_fetch_copper(tmp_path, monkeypatch):
    with yahoo_replay(tmp_path, monkeypatch, "yahoo_clpx_max.yaml", "yahoo_hgf_max.yaml") as (api, urls):
        config = make_config(tmp_path, **urls)
        usdclp = fxcu.fetch_usdclp(config, now=CLP_END)
        copper = fxcu.fetch_copper(
            config, now=datetime(2026, 2, 24, tzinfo=UTC)
        )  # HG=F runs to 2026: an earlier `now` makes it future-dated
    assert usdclp.ok and usdclp.source == "yahoo" and usdclp.frame.height == 4664
    assert any("2 bad prints" in n for n in usdclp.notes)
    assert copper.ok and copper.source == "yahoo" and copper.frequency == "daily"


def test_fetch_series_offline_uses_only_the_warehouse(tmp_path):
    config = make_config(tmp_path, offline=True)
    fxcu.write_parquet_atomic(
        provenance(make_prices(50, start=date(2023, 11, 1)), "yahoo"), config.warehouse / fxcu.USDCLP_CACHE
    )
    handler, calls = counting(lambda request: httpx.Response(500))
    with mock_client(handler) as client:
        series = fxcu.fetch_series("usdclp", config, client, now=NOW)
    assert series.source == "cache" and not calls


# settle is pure: the real CLP=X closes (data/real) of 2024-06-03 .. 2024-06-28 as the cached history, and
# of 2024-06-24 .. 2024-07-15 as a live answer; the real PCOPPUSDM values of 2024 as monthly FRED copper.
@functools.cache
def real_clp_2024() -> pl.DataFrame:
    return real_usdclp().filter(pl.col(fxcu.DATE) >= date(2024, 6, 1))


def real_clp_between(first: date, last: date, source: str) -> pl.DataFrame:
    return provenance(real_clp_2024().filter(pl.col(fxcu.DATE).is_between(first, last)), source)


def test_settle_merges_a_live_daily_answer_and_stores_it():
    cache = fxcu.Result("cache", frame=real_clp_between(date(2024, 6, 3), date(2024, 6, 28), "yahoo"))
    live = fxcu.Result("mindicador", frame=real_clp_between(date(2024, 6, 24), date(2024, 7, 15), "mindicador"))
    results = [fxcu.Result("yahoo", error="HTTP 429"), live, cache]
    series = fxcu.settle("usdclp", live, cache, results, now=FETCH_DAY, max_age_days=5)
    assert series.source == "mindicador" and series.frequency == "daily" and not series.degraded
    assert series.frame[fxcu.DATE].min() == date(2024, 6, 3) and series.frame[fxcu.DATE].max() == date(2024, 7, 15)
    # the days both hold keep the primary's (Yahoo's) rows
    overlap = series.frame.filter(pl.col(fxcu.DATE).is_between(date(2024, 6, 24), date(2024, 6, 28)))
    assert overlap.height == 5 and overlap[fxcu.SOURCE].unique().to_list() == ["yahoo"]
    assert series.failures == ("yahoo failed: HTTP 429",) and series.notes == ("yahoo failed: HTTP 429",)
    assert fxcu.stored(live) and not fxcu.stored(cache)


def test_settle_a_stale_cache_is_served_cached_and_stale():
    cache = fxcu.Result("cache", frame=real_clp_between(date(2024, 6, 3), date(2024, 6, 28), "yahoo"))
    results = [fxcu.Result("yahoo", error="HTTP 503"), fxcu.Result("mindicador", error="HTTP 503"), cache]
    series = fxcu.settle("usdclp", cache, cache, results, now=FETCH_DAY, max_age_days=5)
    assert series.source == "cache" and series.frame.equals(cache.frame)
    assert [r.kind for r in series.degraded] == [fxcu.Degraded.CACHED, fxcu.Degraded.STALE]
    assert str(series.degraded[1]) == "stale: USD/CLP last date 2024-06-28, 18 days old"
    assert series.notes == ("yahoo failed: HTTP 503", "mindicador failed: HTTP 503", "cached data (18 days old)")


def test_settle_monthly_copper_is_served_unmerged_and_no_answer_is_an_error():
    fred = pl.read_csv(SHARED / "fred_pcoppusdm_monthly_1998_2026.csv", try_parse_dates=True)
    monthly = fred.filter(pl.col("date").dt.year() == 2024).select(
        pl.col("date").alias(fxcu.DATE), (pl.col("value") / fxcu.LB_PER_TONNE).alias(fxcu.CLOSE)
    )
    answer = fxcu.Result("fred", frame=provenance(monthly, "fred"), frequency="monthly")
    no_cache = fxcu.Result("cache", error="no cache")
    now = datetime(2025, 1, 20, tzinfo=UTC)  # December 2024 is 50 days old: within a monthly series' lag
    series = fxcu.settle(
        "copper", answer, no_cache, [fxcu.Result("yahoo", error="HTTP 503"), answer], now=now, max_age_days=5
    )
    assert series.frequency == "monthly" and series.frame.height == 12 and not series.degraded
    assert series.notes == ("yahoo failed: HTTP 503", "monthly copper (FRED PCOPPUSDM)") and not fxcu.stored(answer)
    none = fxcu.Result("none", error="yahoo: HTTP 503; fred: HTTP 503; cache: no cache")
    failed = fxcu.settle("copper", none, no_cache, [no_cache], now=now, max_age_days=5)
    assert not failed.ok and failed.source == "none" and failed.error == none.error and failed.failures == ()


def test_fetch_both_network_budget_spent_falls_back_to_cache(tmp_path, caplog):
    config = make_config(tmp_path, network_budget=-1.0)
    fxcu.write_parquet_atomic(
        provenance(make_prices(50, start=date(2023, 11, 1)), "yahoo"), config.warehouse / fxcu.USDCLP_CACHE
    )
    handler, calls = counting(lambda request: httpx.Response(200, json={}))
    with caplog.at_level(logging.INFO), mock_client(handler) as client:
        usdclp, copper = fxcu.fetch_both(config, client, now=NOW)
    assert not calls  # no source is asked once the budget is spent
    assert usdclp.source == "cache" and not copper.ok
    assert "Network time budget" in caplog.text and "network time budget" in usdclp.notes[0]


def test_cassettes_never_hold_the_fred_key_and_say_their_source():
    for path in CASSETTES.glob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"api_key=\w", text) and FRED_KEY not in text, path.name
        assert text.startswith("#") and "provenance" in text, path.name


# -- Shell: the parquet warehouse ------------------------------------------------------


def test_read_cache_corrupt_file_is_set_aside_not_overwritten(tmp_path, caplog):
    path = tmp_path / fxcu.USDCLP_CACHE
    path.write_bytes(b"PAR1 this is not parquet")
    result = fxcu.read_cache(path, now=NOW)
    assert not result.ok and "corrupt cache" in result.error
    aside = list(tmp_path.glob("usdclp.parquet.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"PAR1 this is not parquet"
    assert not path.exists()


def test_write_parquet_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.parquet"
    old = make_prices(10)
    fxcu.write_parquet_atomic(old, path)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fxcu.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left on device"):
        fxcu.write_parquet_atomic(make_prices(3), path)
    assert pl.read_parquet(path).equals(old)
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]  # no temp file left behind


def _fetch_in_process(args):
    """Run the real fetch_series five times, its Yahoo answering with this process's own dates."""
    data_dir, seed = args
    config = fxcu.Config(data_dir=Path(data_dir), max_age_days=1000, lock_timeout=60)
    frame = make_prices(30, start=date(2024, 1, 1) + timedelta(days=seed * 45), seed=seed)
    payload = chart_payload(frame, symbol="CLP=X", currency="CLP")
    now = datetime(2024, 6, 1, tzinfo=UTC)  # one clock for both: rows after it would be future-dated, and refused
    with mock_client(lambda request: httpx.Response(200, json=payload)) as client:
        for _ in range(5):
            series = fxcu.fetch_series("usdclp", config, client, now=now, fetch_json=no_wait_fetch(config))
            assert series.source == "yahoo"
    return frame[fxcu.DATE].to_list()


@pytest.mark.slow
def test_two_processes_fetching_at_once_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        days = pool.map(_fetch_in_process, [(str(tmp_path), 0), (str(tmp_path), 1)])
    stored = pl.read_parquet(tmp_path / "warehouse" / fxcu.USDCLP_CACHE)
    assert set(stored[fxcu.DATE]) == set(days[0]) | set(days[1])
    assert stored[fxcu.DATE].is_sorted() and stored.height == stored[fxcu.DATE].n_unique()
    assert not list((tmp_path / "warehouse").glob("*.tmp"))


# -- Shell: reports, charts, status ----------------------------------------------------


def test_report_stem_never_reuses_a_name():
    now = datetime(2026, 1, 19, 15, 4, 59, tzinfo=UTC)
    assert fxcu.report_stem("7d", now) == "forecast_7d_2026-01-19_1204"
    assert fxcu.report_stem("7d", now, taken={"forecast_7d_2026-01-19_1204"}) == "forecast_7d_2026-01-19_1204_2"
    assert (
        fxcu.report_stem("7d", now, taken={"forecast_7d_2026-01-19_1204", "forecast_7d_2026-01-19_1204_2"})
        == "forecast_7d_2026-01-19_1204_3"
    )


@pytest.mark.slow
def test_second_report_the_same_minute_keeps_the_first(real_forecast_7d, real_bundle, tmp_path):
    now = datetime(2026, 1, 19, 15, 0, tzinfo=UTC)
    first = fxcu.write_report(real_forecast_7d, real_bundle, tmp_path, now=now)
    before = first.markdown.read_bytes()
    second = fxcu.write_report(real_forecast_7d, real_bundle, tmp_path, now=now)
    assert first.markdown != second.markdown and first.markdown.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"forecast_7d_2026-01-19_1200{n}{ext}" for n in ("", "_2") for ext in (".csv", ".md", ".png", "_pit.png")
    )


def drawn_chart(monkeypatch, fc, bundle, tmp_path):
    """Draw the chart's figure (what `write_chart` saves) for inspection."""
    fig = fxcu.chart_figure(fc, bundle, now=datetime(2026, 1, 19, 15, 0, tzinfo=UTC))
    fig.canvas.draw()
    return fig


@pytest.mark.slow
def test_chart_copper_stops_at_the_origin_in_its_own_panel_and_the_legend_covers_no_data(
    real_forecast_7d, real_bundle, tmp_path, monkeypatch
):
    import matplotlib.dates as mdates

    fc = real_forecast_7d
    fig = drawn_chart(monkeypatch, fc, real_bundle, tmp_path)
    price_ax, copper_ax = fig.axes
    (copper_line,) = [line for line in copper_ax.get_lines() if line.get_label().startswith("copper")]
    assert mdates.date2num(fc.origin) == pytest.approx(max(mdates.date2num(d) for d in copper_line.get_xdata()))
    assert not [line for line in price_ax.get_lines() if "copper" in line.get_label()]
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert (
        labels[0] == "USD/CLP close"
        and any(label.startswith("copper, USD/lb") for label in labels)
        and "95% range" in labels
    )
    assert price_ax.get_legend() is None and copper_ax.get_legend() is None
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    page = fig.bbox  # the whole legend is on the saved page: its long labels are wrapped, not cut at the edges
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0
    texts = [t.get_text() for t in price_ax.texts]
    final = fc.final
    assert "origin 15 Jul 2024" in texts and f"last close {fc.last_close:.2f}" in texts
    assert (
        f"22 Jul: {final['forecast']:.2f}\n80% {final['lo_80']:.0f}-{final['hi_80']:.0f}"
        f"\n95% {final['lo_95']:.0f}-{final['hi_95']:.0f}" in texts
    )
    assert "2026-01-19 12:00 (Santiago, UTC-03)" in price_ax.get_title("right")


@pytest.mark.slow
def test_chart_without_copper_has_one_panel_and_says_so(real_forecast_7d, real_bundle, tmp_path, monkeypatch):
    bundle = dataclasses.replace(real_bundle, copper=None, copper_features=None)
    fig = drawn_chart(monkeypatch, real_forecast_7d, bundle, tmp_path)
    assert len(fig.axes) == 1 and "copper unavailable: forecast made without copper" in [
        t.get_text() for t in fig.axes[0].texts
    ]


# -- Shell: MLflow tracking ------------------------------------------------------------


def test_prices_digest_ignores_fetch_time_and_source_but_not_prices():
    frame = provenance(make_prices(30), "yahoo")
    later = frame.with_columns(
        pl.lit(datetime(2030, 1, 1, tzinfo=UTC)).alias(fxcu.FETCHED_AT), pl.lit("cache").alias(fxcu.SOURCE)
    )
    assert fxcu.prices_digest(later) == fxcu.prices_digest(frame) == fxcu.prices_digest(frame.reverse())
    moved = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.col("close") + 0.01).otherwise(pl.col("close")).alias("close")
    )
    assert fxcu.prices_digest(moved) != fxcu.prices_digest(frame)
    assert fxcu.prices_digest(frame, None) == fxcu.prices_digest(frame) != fxcu.prices_digest(frame, frame)


@pytest.mark.slow
@given(st.lists(st.floats(min_value=100, max_value=2000, allow_nan=False), min_size=1, max_size=40), st.randoms())
@settings(max_examples=60, deadline=None)
def test_prices_digest_depends_on_the_set_of_prices_only(closes, rng):
    frame = provenance(
        pl.DataFrame({"date": [date(2024, 1, 1) + timedelta(days=i) for i in range(len(closes))], "close": closes}),
        "yahoo",
    )
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=rng.randint(0, 2**31)).with_columns(
        pl.lit("cache").alias(fxcu.SOURCE)
    )
    assert fxcu.prices_digest(shuffled) == fxcu.prices_digest(frame)


@pytest.mark.slow
def test_run_logs_an_html_report_with_its_chart_inlined(offline_run):

    folder, _, _ = offline_run
    run = read_runs(folder, "7d")[0]
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    page = next(artifacts.glob("forecast_7d_*.html")).read_text()
    png = next(artifacts.glob("forecast_7d_*.png")).read_bytes()
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert "<table " in page and ">Forecast path" in page and "](forecast_7d_" not in page
    # the Markdown stays as written, with its relative link, for file viewers
    assert "![USD/CLP and forecast](forecast_7d_" in next(artifacts.glob("forecast_7d_*.md")).read_text()


@pytest.mark.slow
def test_run_leaves_no_stray_default_experiment(offline_run):
    from mlflow.tracking import MlflowClient

    folder, elsewhere, _ = offline_run
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["forecaster_7d"]
    assert client.get_experiment("0").lifecycle_stage == "deleted" and not (elsewhere / "mlruns").exists()
    assert (
        client.get_experiment_by_name("forecaster_7d")
        .tags["mlflow.note.content"]
        .startswith("USD/CLP forecast 7 calendar days")
    )


@pytest.mark.slow  # imports mlflow and opens a migrated store
def test_retire_default_experiment_keeps_one_with_runs(data_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}")
    client.create_run("0")
    assert fxcu.retire_default_experiment(client) is False and client.get_experiment("0").lifecycle_stage == "active"


@pytest.mark.parametrize(
    ("weights", "served"),
    [({"Naive": 1.0, "AutoETS": 0.0}, "Naive"), ({"AutoETS": 0.6, "Naive": 0.4}, "AutoETS 60%, Naive 40%")],
)
def test_served_models_names_the_models_with_weight(weights, served):

    assert fxcu.served_models(SimpleNamespace(weights=weights)) == served


@pytest.mark.slow
def test_tracking_is_bounded_in_time(data_dir, monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(fxcu, "mlflow_client", hang)
    config = dataclasses.replace(fxcu.Config.from_env(run_env(data_dir)), tracking_timeout=0.5)
    record = fxcu.RunRecord("7d", "forecast_x", {}, {}, {}, ())
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="MLflow tracking did not finish"):
        fxcu.log_run(config, record, environ={})
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_dashboard_reads_sqlite_without_importing_mlflow(data_dir):
    fxcu.log_run(fxcu.Config.from_env(run_env(data_dir)), record("7d", 20.0), environ={})
    lines, codes, heavy = in_fresh_process([["runs"], ["compare"], ["stats"]], data_dir)
    shown = "\n".join(lines)
    assert codes == [0, 0, 0] and heavy == [] and "903" not in shown and "900.00" in shown


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        (None, "{data}/mlflow/mlflow.db"),
        ("sqlite:////srv/my%20db/m.db", "/srv/my db/m.db"),
        ("sqlite:////srv/m.db?timeout=30", "/srv/m.db"),
        ("http://mlflow:5000", None),
        ("postgresql://u:p@h/db", None),
    ],
)
def test_tracking_store_is_the_uri_given_else_the_data_dirs_sqlite_file(tmp_path, uri, path):
    config = fxcu.Config(data_dir=tmp_path)
    store = fxcu.tracking_store(config, {} if uri is None else {"MLFLOW_TRACKING_URI": uri})
    assert store.uri == (uri or f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    assert store.db == (None if path is None else Path(path.format(data=tmp_path)))
    # a SQLite store's artifacts go under the data dir, whoever names the file; a server picks its own
    assert store.artifacts == (None if path is None else (tmp_path / "mlflow" / "mlruns").as_uri())


@pytest.mark.slow
def test_best_run_on_coverage_is_closest_to_nominal(data_dir):
    config = fxcu.Config.from_env(run_env(data_dir))
    ids = {}
    for cov in (0.70, 0.82, 0.90):
        rec = record("7d", 20.0)
        ids[cov] = fxcu.log_run(
            config, dataclasses.replace(rec, metrics={**rec.metrics, "7d_coverage_80": cov}), environ={}
        )
    assert fxcu.best_run("7d", "coverage_80", config=config, environ={}).info.run_id == ids[0.82]


# Relocatable data dir and a bounded tracking server (issue 10, section 3).
@pytest.mark.slow
def test_moved_data_dir_keeps_its_artifacts_and_never_recreates_the_old_path(tmp_path, migrated_db):
    """Moving the data dir left experiments pointing at the old path, which the next run recreated."""
    old, new = tmp_path / "old" / "data", tmp_path / "new" / "data"
    (old / "mlflow").mkdir(parents=True)
    shutil.copy(migrated_db, old / "mlflow" / "mlflow.db")
    first = fxcu.log_run(
        fxcu.Config(data_dir=old),
        dataclasses.replace(record("7d", 20.0), artifacts=(artifact_file(tmp_path / "a"),)),
        environ={},
    )
    new.parent.mkdir()
    shutil.move(old, new)
    second = fxcu.log_run(
        fxcu.Config(data_dir=new),
        dataclasses.replace(record("7d", 21.0), artifacts=(artifact_file(tmp_path / "b"),)),
        environ={},
    )
    assert not old.exists()  # nothing recreated at the old path
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=fxcu.tracking_store(fxcu.Config(data_dir=new), {}).uri)
    root = (new / "mlflow" / "mlruns").as_uri()
    assert client.get_experiment_by_name("forecaster_7d").artifact_location == root
    for run_id in (first, second):
        assert client.get_run(run_id).info.artifact_uri.startswith(root + "/")
        # the old run's files (the report and its HTML twin), found in their new home
        assert [a.path for a in client.list_artifacts(run_id)] == ["forecast_7d.html", "forecast_7d.md"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["refused", "hanging"])
def test_down_tracking_server_costs_a_run_at_most_15_s(tmp_path, how):
    """A down MLFLOW_TRACKING_URI cost 65 s per run (MLflow's retries); now at most 15 s for all four horizons.

    Counted, not timed: the hanging server counts the connections it is sent, one try and MLflow's one retry
    (MLFLOW_HTTP_BOUNDS: 5 s each, 1 s backoff, 11 s), and the later horizons send none. The clock only guards
    against a hang, at three times the 15 s.
    """
    import mlflow.tracking  # noqa: F401 -- imported first: the bound is on the waiting, not on the import
    from mlflow.exceptions import MlflowException

    listener, accepted = None, []
    if how == "hanging":  # accepts connections and never answers
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def hold() -> None:
            with contextlib.suppress(OSError):  # the listener closed: the test is over
                while True:
                    accepted.append(listener.accept()[0])

        threading.Thread(target=hold, daemon=True).start()
    else:
        uri = closed_url()
    config = fxcu.Config(data_dir=tmp_path)
    started = time.monotonic()
    try:
        errors = []
        for horizon in fxcu.HORIZONS:
            with pytest.raises((MlflowException, ConnectionError)) as caught:
                fxcu.log_run(config, record(horizon, 20.0), environ={"MLFLOW_TRACKING_URI": uri})
            errors.append((type(caught.value), len(accepted)))
    finally:
        if listener:
            listener.close()
        for held in accepted:
            held.close()
    assert time.monotonic() - started < 3 * 15
    first = errors[0][0]
    assert issubclass(first, MlflowException) and not issubclass(first, ConnectionError), first
    assert [e for e, _ in errors[1:]] == [ConnectionError] * 3  # the other horizons do not wait for it again
    if how == "hanging":
        assert 1 <= errors[0][1] <= 2 and [n for _, n in errors] == [errors[0][1]] * 4, errors


@pytest.mark.slow
def test_a_run_still_being_written_when_its_bound_passes_never_ends_finished(data_dir, monkeypatch):
    from mlflow.entities import ViewType

    release, real = threading.Event(), fxcu.tempfile_dir

    @contextlib.contextmanager
    def slow_write(folder):  # the artifacts step of `log_run`, held until the caller has given up
        release.wait(60)
        with real(folder) as tmp:
            yield tmp

    monkeypatch.setattr(fxcu, "tempfile_dir", slow_write)
    config = dataclasses.replace(fxcu.Config.from_env(run_env(data_dir)), tracking_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^MLflow tracking did not finish within 0.5 s$"):
        fxcu.log_run(config, record("7d", 20.0), environ={})
    assert time.monotonic() - started < 5  # the writer that hangs costs the run its bound, no more
    release.set()
    for thread in threading.enumerate():
        if thread.name == "fxcu-MLflow tracking":
            thread.join(60)
    client = fxcu.mlflow_client(fxcu.tracking_store(config, {}))
    experiment = client.get_experiment_by_name("forecaster_7d")
    (run,) = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert (run.info.status, run.info.lifecycle_stage) == ("FAILED", "deleted")
    assert run.data.tags["fxcu.ended"] == "MLflow tracking did not finish within 0.5 s"
    assert run.data.tags["mlflow.note.content"].startswith("**FAILED: MLflow tracking did not finish within 0.5 s**")


@pytest.mark.slow
def test_a_writer_that_fails_ends_its_run_failed_saying_why(data_dir):
    config = fxcu.Config.from_env(run_env(data_dir))
    gone = dataclasses.replace(record("7d", 20.0), artifacts=(data_dir / "reports" / "forecast_7d_gone.md",))
    with pytest.raises(FileNotFoundError):
        fxcu.log_run(config, gone, environ={})
    (run,) = read_runs(data_dir, "7d")
    assert run.info.status == "FAILED" and run.info.end_time
    assert run.data.tags["fxcu.ended"].startswith("tracking failed (FileNotFoundError: ")
    assert run.data.tags["fxcu.pid"] == str(os.getpid()) and run.data.tags["fxcu.host"]


# A tracked run in its own process, stopped while it writes: its artifacts step hangs until the signal comes.
HUNG_WRITER = """
import sys, threading
from pathlib import Path
import fxcu
fxcu.artifact_files = lambda *args: threading.Event().wait()
config = fxcu.Config.from_env({"FXCU_DATA_DIR": sys.argv[1], "FXCU_TRACKING_TIMEOUT": "120"})
an_hour_ago = int(fxcu.time.time() * 1000) - 3_600_000
run = fxcu.RunRecord("7d", "7d · data 2026-01-19", {}, {"forecast": 900.0}, {}, (Path(sys.argv[2]),), an_hour_ago)
with fxcu._sigterm_as_exception():
    try:
        fxcu.log_run(config, run, environ={})
    except (KeyboardInterrupt, fxcu.Terminated):
        sys.exit(130)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "kill-9"])
def test_tracking_cut_by_a_signal_never_leaves_a_run_running(data_dir, tmp_path, sig):
    """A run cut by a signal ended RUNNING forever; now KILLED, saying why, and one a SIGKILL left is closed later."""

    def statuses() -> list[str]:
        with contextlib.closing(sqlite3.connect(data_dir / "mlflow" / "mlflow.db", timeout=30)) as conn:
            return [status for (status,) in conn.execute("select status from runs")]

    writer = subprocess.Popen(
        [sys.executable, "-c", HUNG_WRITER, str(data_dir), str(artifact_file(tmp_path))],
        cwd=HERE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: statuses() == ["RUNNING"] or writer.poll() is not None, timeout=60)
        client = fxcu.mlflow_client(fxcu.tracking_store(fxcu.Config(data_dir=data_dir), {}))
        assert fxcu.close_leftovers(client, bound=0) == 0  # its process is alive: not a leftover
        started = time.monotonic()
        writer.send_signal(sig)
        writer.wait(60)
    finally:
        writer.kill()
    (run,) = read_runs(data_dir, "7d")
    if sig != signal.SIGKILL:
        assert writer.returncode == 130 and "Traceback" not in writer.stderr.read()
        assert time.monotonic() - started < 15  # the writer hangs: the run is ended from the main thread
        said = "interrupted (Ctrl-C)" if sig == signal.SIGINT else "terminated (SIGTERM)"
        assert (run.info.status, run.data.tags["fxcu.ended"]) == ("KILLED", f"the run was {said} while it was tracked")
        return
    assert run.info.status == "RUNNING"  # nothing can end it from inside a process killed with SIGKILL
    later = fxcu.log_run(fxcu.Config.from_env(run_env(data_dir)), record("30d", 20.0), environ={})  # the next start
    left = client.get_run(run.info.run_id)
    assert left.info.status == "FAILED" and client.get_run(later).info.status == "FINISHED"
    host = run.data.tags["fxcu.host"]
    assert left.data.tags["fxcu.ended"] == (
        f"left RUNNING by process {writer.pid} on {host}, which stopped before the run was written"
    )
    assert left.data.tags["mlflow.note.content"].startswith("**FAILED: left RUNNING by process")


@pytest.mark.slow
def test_run_record_takes_package_versions_as_given(real_forecast_7d, real_bundle):
    now = datetime(2026, 1, 19, 15, 0, tzinfo=UTC)
    made = fxcu.run_record(real_forecast_7d, real_bundle, now=now, seconds={}, artifacts=[], versions={"polars": "9.9"})
    bare = fxcu.run_record(real_forecast_7d, real_bundle, now=now, seconds={}, artifacts=[])
    assert made.params["version_polars"] == "9.9" and "version_mlflow" not in made.params
    assert not {k for k in bare.params if k.startswith("version_")} - {"version_fxcu"}
    assert set(fxcu.package_versions(("polars", "no-such-package-fxcu"))) == {"polars"}


# -- Shell: the forecast ledger --------------------------------------------------------


def test_write_ledger_is_atomic_and_refuses_to_shrink(tmp_path, monkeypatch):
    path = tmp_path / "warehouse" / fxcu.LEDGER
    three = fxcu.upsert_ledger(
        fxcu.empty_ledger(), [ledger_row(date(2024, 5, d), date(2024, 5, d + 7)) for d in (1, 2, 3)]
    )
    fxcu.write_ledger(three, path)
    with pytest.raises(fxcu.LedgerError, match="refusing to shrink the forecast ledger from 3 to 1 rows"):
        fxcu.write_ledger(three.head(1), path)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fxcu.os, "replace", broken_replace)
    four = fxcu.upsert_ledger(three, [ledger_row(date(2024, 5, 6), date(2024, 5, 13))])
    with pytest.raises(OSError, match="No space left on device"):
        fxcu.write_ledger(four, path)
    assert_frame_equal(fxcu.read_ledger(path), three)
    assert [p.name for p in path.parent.iterdir()] == [fxcu.LEDGER]  # no temp file left behind


def test_read_ledger_unreadable_is_reported_and_left_alone(tmp_path, capsys):
    write_real_warehouse(tmp_path)
    path = tmp_path / "warehouse" / fxcu.LEDGER
    path.write_bytes(b"not parquet")
    assert fxcu.main(["track"], {"FXCU_DATA_DIR": str(tmp_path)}) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "forecast ledger" in err and "unreadable" in err
    assert path.read_bytes() == b"not parquet"


@pytest.mark.slow  # the real-data forecast behind it, as for the other chart tests
def test_track_chart_of_a_first_run_marks_the_one_realised_close(real_forecast_7d, real_bundle):
    now = datetime(2024, 7, 16, 15, 0, tzinfo=UTC)
    entry = fxcu.ledger_entry(real_forecast_7d, real_bundle, run_id=None, now=now)
    first = fxcu.upsert_ledger(fxcu.empty_ledger(), [entry])  # origin 2024-07-15, the last close
    earlier = fxcu.upsert_ledger(fxcu.empty_ledger(), [entry | {"origin": date(2024, 6, 14)}])
    (alone,) = [ln for ln in fxcu.track_figure(first, real_bundle.usdclp, "7d").axes[0].lines if ln.get_label()]
    (line,) = [ln for ln in fxcu.track_figure(earlier, real_bundle.usdclp, "7d").axes[0].lines if ln.get_label()]
    assert alone.get_label() == line.get_label() == "USD/CLP realised"
    assert len(alone.get_xdata()) == 1 and alone.get_marker() == "o"  # a point, which a line alone would not draw
    assert len(line.get_xdata()) > 20 and line.get_marker() == "None"


# -- Shell: email ----------------------------------------------------------------------


def parse_email(raw: bytes):
    """A received message parsed the way a mail client does."""

    return email.message_from_bytes(raw, policy=email.policy.default)


def relay_env(data_dir: Path, port: int) -> dict[str, str]:
    """A relay on 127.0.0.1 without TLS or login, as inside a bank's network."""
    smtp = {
        "FXCU_SMTP_HOST": "127.0.0.1",
        "FXCU_SMTP_PORT": str(port),
        "FXCU_SMTP_TO": "desk@example.cl",
        "FXCU_SMTP_STARTTLS": "0",
    }
    return run_env(data_dir, **smtp)


@pytest.mark.slow
def test_run_all_fetches_once_forecasts_four_horizons_and_emails_one_digest(
    data_dir, capsys, monkeypatch, shared_models
):
    calls = []
    real = fxcu.fetch_series
    monkeypatch.setattr(fxcu, "fetch_series", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    server = SMTPServer(wait=600)
    env = relay_env(data_dir, server.port)
    code = fxcu.main(["run", "all", "--offline", "--json"], env)
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and calls == ["usdclp", "copper"]
    assert list(out) == ["7d", "15d", "30d", "90d"] and all(s["tracked"] and s["horizon"] == h for h, s in out.items())
    assert {r.data.params["horizon"] for h in fxcu.HORIZONS for r in read_runs(data_dir, h)} == set(fxcu.HORIZONS)
    server.thread.join(10)
    (raw,) = server.messages
    message = parse_email(raw)
    assert_renders(message, ["7d", "15d", "30d", "90d"])
    forecasts = ", ".join(f"{h} {out[h]['forecast']:.2f}" for h in fxcu.HORIZONS)
    # stale copper: the subject says so first
    subject = f"[degraded] fxcu: USD/CLP: last {out['7d']['last_close']:.2f} on 2024-07-15 -> {forecasts}"
    assert message["Subject"] == subject
    html = message.get_body(("html",)).get_content()
    assert all(f"{h}: Summary" in html for h in fxcu.HORIZONS) and html.count("Copper</h2>") == 1


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and a server context using it."""
    return make_tls_pair(tmp_path_factory.mktemp("tls"))


def smtp_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    return run_env(
        data_dir,
        FXCU_SMTP_HOST="127.0.0.1",
        FXCU_SMTP_PORT=str(port),
        FXCU_SMTP_TO="desk@example.cl, treasury@example.cl",
        **extra,
    )


@pytest.mark.slow
def test_run_emails_over_starttls_and_logs_in_only_after_tls(data_dir, tls_pair, caplog, shared_models):
    cafile, context = tls_pair
    server = SMTPServer(tls=context)
    env = smtp_env(
        data_dir, server.port, FXCU_SMTP_USER="fxcu", FXCU_SMTP_PASSWORD="s3cret-pw", FXCU_SMTP_CAFILE=str(cafile)
    )
    with caplog.at_level(logging.INFO):
        assert fxcu.main(["run", "7d", "--offline"], env) == 0
    server.thread.join(10)
    assert len(server.messages) == 1 and "Report emailed to desk@example.cl, treasury@example.cl" in caplog.text
    assert ("STARTTLS", False) in server.verbs and ("AUTH", True) in server.verbs
    assert all(secure for verb, secure in server.verbs if verb in ("AUTH", "MAIL", "DATA"))
    assert "s3cret-pw" not in caplog.text


@pytest.mark.slow
def test_email_refuses_an_unverified_certificate(data_dir, tls_pair, caplog, shared_models):
    _, context = tls_pair
    server = SMTPServer(tls=context)
    env = smtp_env(data_dir, server.port, FXCU_SMTP_USER="fxcu", FXCU_SMTP_PASSWORD="s3cret-pw")
    with caplog.at_level(logging.INFO):
        assert fxcu.main(["run", "7d", "--offline"], env) == 0
    server.thread.join(10)
    assert "Email failed (SSLCertVerificationError" in caplog.text
    assert server.messages == [] and not any(verb == "AUTH" for verb, _ in server.verbs)


@pytest.mark.slow
def test_email_on_port_465_is_tls_from_the_first_byte(data_dir, tls_pair, caplog, monkeypatch, shared_models):

    cafile, context = tls_pair
    server = SMTPServer(tls=context, implicit=True)
    real = smtplib.SMTP_SSL

    class ToTestPort(real):  # the code picks implicit TLS for port 465; the test server listens elsewhere
        def __init__(self, host, port, **kwargs):
            super().__init__(host, server.port, **kwargs)

    monkeypatch.setattr(smtplib, "SMTP_SSL", ToTestPort)
    env = smtp_env(data_dir, 465, FXCU_SMTP_USER="fxcu", FXCU_SMTP_PASSWORD="s3cret-pw", FXCU_SMTP_CAFILE=str(cafile))
    with caplog.at_level(logging.INFO):
        assert fxcu.main(["run", "7d", "--offline"], env) == 0
    server.thread.join(10)
    assert len(server.messages) == 1 and all(secure for _, secure in server.verbs)
    assert ("STARTTLS", False) not in server.verbs and ("AUTH", True) in server.verbs


@pytest.mark.slow
def test_email_never_sends_credentials_in_clear(data_dir, caplog, shared_models):
    server = SMTPServer()
    env = smtp_env(data_dir, server.port, FXCU_SMTP_USER="fxcu", FXCU_SMTP_PASSWORD="s3cret-pw", FXCU_SMTP_STARTTLS="0")
    with caplog.at_level(logging.INFO):
        assert fxcu.main(["run", "7d", "--offline"], env) == 0
    assert "refusing to send SMTP credentials without TLS" in caplog.text
    assert server.verbs == [] and server.messages == []


@pytest.mark.slow
def test_run_emails_the_report_with_its_chart(data_dir, capsys, shared_models):
    server = SMTPServer()
    env = run_env(
        data_dir,
        FXCU_SMTP_HOST="127.0.0.1",
        FXCU_SMTP_PORT=str(server.port),
        FXCU_SMTP_TO="desk@example.cl",
        FXCU_SMTP_STARTTLS="0",
    )  # a relay without TLS or login
    assert fxcu.main(["run", "7d", "--offline"], env) == 0
    server.thread.join(10)
    assert len(server.messages) == 1
    message = parse_email(server.messages[0])
    assert message["Subject"].startswith("[degraded] fxcu: USD/CLP 7d: last ")  # stale data
    assert message["To"] == "desk@example.cl"
    assert_renders(message, ["7d"])
    html = message.get_body(("html",)).get_content()
    assert "Backtest at the horizon date" in html and "Range backtest" in html
    assert "random walk; range" in html or "random walk; Naive's range" in html  # the served range in words


@pytest.mark.slow
def test_email_preview_writes_the_eml_and_sends_nothing(data_dir, tmp_path, shared_models):
    server = SMTPServer()
    env = relay_env(data_dir, server.port)
    assert fxcu.main(["run", "7d", "--offline", "--email-preview", str(tmp_path / "preview.eml")], env) == 0
    assert server.messages == [] and server.verbs == []
    message = parse_email((tmp_path / "preview.eml").read_bytes())
    assert_renders(message, ["7d"])
    assert message["To"] == "desk@example.cl"


@pytest.mark.slow
def test_email_failure_never_fails_the_run(data_dir, caplog, shared_models):
    env = run_env(
        data_dir, FXCU_SMTP_HOST="127.0.0.1", FXCU_SMTP_PORT=str(refused_port()), FXCU_SMTP_TO="desk@example.cl"
    )
    with caplog.at_level(logging.INFO):
        assert fxcu.main(["run", "7d", "--offline"], env) == 0
    assert "Email failed" in caplog.text


@pytest.mark.slow
def test_skip_email_sends_nothing(data_dir, shared_models):
    server = SMTPServer()
    env = run_env(data_dir, FXCU_SMTP_HOST="127.0.0.1", FXCU_SMTP_PORT=str(server.port), FXCU_SMTP_TO="desk@example.cl")
    assert fxcu.main(["run", "7d", "--offline", "--skip-email"], env) == 0
    assert server.messages == []


# -- Shell: the facts `check` grades ---------------------------------------------------


def test_check_corrupt_warehouse_is_critical_not_a_traceback(tmp_path, capsys):
    (tmp_path / "warehouse").mkdir()
    (tmp_path / "warehouse" / fxcu.USDCLP_CACHE).write_bytes(b"garbage")
    assert fxcu.main(["check"], {"FXCU_DATA_DIR": str(tmp_path)}) == 2
    assert "usdclp.parquet unreadable" in capsys.readouterr().out


def test_read_server_facts_of_a_down_server_says_unreachable_without_its_password(tmp_path):
    environ = {"MLFLOW_TRACKING_URI": f"http://analyst:{ANALYST_PASSWORD}@127.0.0.1:{refused_port()}"}
    facts = fxcu.read_database_facts(fxcu.Config(data_dir=tmp_path), environ)
    assert (
        facts.probed
        and facts.search_seconds is None
        and facts.remote == f"http://analyst:***@127.0.0.1:{refused_port()}"
    )
    assert facts.error.startswith("unreachable (ConnectError: ") and ANALYST_PASSWORD not in facts.error


def test_server_error_is_the_servers_message_first_line_redacted():
    body = {
        "error_code": "INTERNAL_ERROR",
        "message": "connect to postgresql://fxcu:s3cret@db:5432/mlflow failed\nmore",
    }
    request = httpx.Request("POST", "http://mlflow.desk:5000/api/2.0/mlflow/runs/search")
    failed = httpx.HTTPStatusError("503", request=request, response=httpx.Response(503, json=body, request=request))
    said = "answered HTTP 503 (connect to postgresql://***@db:5432/mlflow failed)"
    assert fxcu._server_error(failed) == said
    gateway = httpx.Response(502, text="Bad Gateway", request=request)
    assert (
        fxcu._server_error(httpx.HTTPStatusError("502", request=request, response=gateway))
        == "answered HTTP 502 (Bad Gateway)"
    )


# -- Commands: fetch, validate, run ----------------------------------------------------


def test_main_fetch_offline_prints_each_series(tmp_path, capsys):
    config = make_config(tmp_path)
    fxcu.write_parquet_atomic(
        provenance(make_prices(50, start=date(2024, 1, 1)), "yahoo"), config.warehouse / fxcu.USDCLP_CACHE
    )
    code = fxcu.main(["fetch", "--offline"], {"FXCU_DATA_DIR": str(config.data_dir), "FXCU_SEED": "0"})
    out = capsys.readouterr().out
    assert code == 0 and "usdclp: cache, 50 rows" in out and "copper: unavailable" in out


def test_main_fetch_offline_without_cache_exits_1(tmp_path, capsys):
    code = fxcu.main(["fetch", "--offline"], {"FXCU_DATA_DIR": str(tmp_path), "FXCU_SEED": "0"})
    assert code == 1 and "usdclp: unavailable" in capsys.readouterr().out


def test_main_bad_env_value_is_one_line_exit_2(tmp_path, capsys):
    code = fxcu.main(["fetch"], {"FXCU_DATA_DIR": str(tmp_path), "FXCU_OFFLINE": "perhaps"})
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "FXCU_OFFLINE" in err


@pytest.mark.slow
def test_run_artifacts_replay_the_same_forecast_offline(offline_run, tmp_path):
    folder, _, result = offline_run
    run = read_runs(folder, "7d")[0]
    inputs = Path(run.info.artifact_uri.removeprefix("file://")) / "inputs"
    replay = tmp_path / "replay"
    shutil.copytree(inputs, replay)
    code = subprocess.run(
        [sys.executable, str(HERE / "fxcu.py"), "-q", "run", "7d", "--offline", "--json"],
        env={
            **os.environ,
            **run_env(replay, FXCU_TRACKING_TIMEOUT="1", MLFLOW_TRACKING_URI=f"sqlite:///{replay}/x.db/y.db"),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    original, again = json.loads(result.stdout), json.loads(code.stdout)
    assert again["forecast"] == original["forecast"] and again["interval_95"] == original["interval_95"]


@pytest.mark.slow
def test_run_never_leaks_the_fred_key(offline_run):
    folder, _, result = offline_run
    assert FRED_KEY not in result.stdout + result.stderr
    for path in folder.rglob("*"):
        if path.is_file():
            assert FRED_KEY.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_report_has_chart_path_backtest_and_copper(offline_run):
    folder, _, _ = offline_run
    report = next((folder / "reports").glob("forecast_7d_*.md")).read_text()
    assert "![USD/CLP and forecast](forecast_7d_" in report
    for needle in (
        "## Forecast path",
        "## Backtest at the horizon date",
        "ratio to Naive",
        "copper_rsi_14",
        "degraded: cached data",
        "Copper ablation",
    ):
        assert needle in report
    png = next((folder / "reports").glob("forecast_7d_*.png")).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.slow
def test_tracking_failure_keeps_forecast_and_report(data_dir, capsys, caplog, shared_models):
    env = run_env(
        data_dir,
        MLFLOW_TRACKING_URI=f"sqlite:///{data_dir}/warehouse/usdclp.parquet/mlflow.db",
        FXCU_TRACKING_TIMEOUT="20",
    )
    with caplog.at_level(logging.INFO):
        code = fxcu.main(["run", "7d", "--offline", "--skip-email"], env)
    out = capsys.readouterr().out
    assert code == 0 and "tracked: no" in out
    assert "MLflow tracking failed" in caplog.text
    assert list((data_dir / "reports").glob("*.md"))
    status = json.loads((data_dir / "status.json").read_text())["7d"]
    assert status["ok"] and not status["tracked"] and status["tracking_error"]
    # check reports it
    assert fxcu.main(["check"], run_env(data_dir)) >= 1
    assert "NOT tracked" in capsys.readouterr().out


@pytest.mark.slow
def test_two_runs_at_once_are_both_recorded(data_dir):
    cmd = [sys.executable, str(HERE / "fxcu.py"), "-q", "run", "7d", "--offline", "--skip-email"]
    env = {**os.environ, **run_env(data_dir)}
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = read_runs(data_dir, "7d")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert pl.read_parquet(data_dir / "warehouse" / fxcu.USDCLP_CACHE).height == real_usdclp().height


def test_run_unknown_horizon_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        fxcu.main(["run", "8d"], {})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown horizon '8d'" in err and "Traceback" not in err and err.count("\n") == 1


def test_run_without_usdclp_exits_1(tmp_path, capsys):
    code = fxcu.main(["run", "7d", "--offline"], {"FXCU_DATA_DIR": str(tmp_path), "FXCU_SEED": "0"})
    assert code == 1 and "no usable USD/CLP" in capsys.readouterr().err
    assert not json.loads((tmp_path / "status.json").read_text())["7d"]["ok"]


def test_run_with_too_little_history_exits_1_and_records_it(tmp_path, capsys):
    fxcu.write_parquet_atomic(
        provenance(real_usdclp().tail(400), "mindicador"), tmp_path / "warehouse" / fxcu.USDCLP_CACHE
    )
    code = fxcu.main(["run", "7d", "--offline"], {"FXCU_DATA_DIR": str(tmp_path)})
    err = capsys.readouterr().err
    assert code == 1 and "fxcu: cannot forecast: 400 trading days are too few for 60 backtest origins" in err
    status = json.loads((tmp_path / "status.json").read_text())["7d"]
    assert not status["ok"] and "too few" in status["error"]


@pytest.mark.slow
def test_run_all_stops_tracking_after_a_timeout(data_dir, capsys, caplog, shared_models):
    # a tracking server that accepts connections (the kernel's backlog) and never answers: the first
    # horizon's write hangs until its 0.5 s bound
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        env = run_env(
            data_dir, FXCU_TRACKING_TIMEOUT="0.5", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{listener.getsockname()[1]}"
        )
        with caplog.at_level(logging.INFO):
            code = fxcu.main(["run", "all", "--offline", "--json", "--skip-email"], env)
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and all(s["report"] and not s["tracked"] for s in out.values())
    assert out["7d"]["tracking_error"].startswith("TimeoutError: MLflow tracking did not finish within 0.5 s")
    assert [out[h]["tracking_error"] for h in ("15d", "30d", "90d")] == [
        "skipped: MLflow tracking timed out for 7d"
    ] * 3
    assert caplog.text.count("MLflow tracking failed") == 4


def test_stages_time_each_stage_in_order_and_add_repeats():
    stages = fxcu.Stages()
    with stages("fetch"):
        pass
    with pytest.raises(ValueError, match="the stage failed"), stages("backtest"):  # a failed stage still counts
        raise ValueError("the stage failed")
    other = fxcu.Stages()
    with other("fetch"):
        time.sleep(0.01)  # a measured duration, not a retry
    stages.merge(other)
    assert list(stages.seconds) == ["fetch", "backtest"]
    assert stages.seconds["fetch"] >= other.seconds["fetch"] >= 0.01
    assert fxcu.format_stages({"fetch": 0.123, "report": 2}) == "fetch 0.12 s, report 2.00 s"


@pytest.mark.slow
def test_charts_are_drawn_without_pyplot(real_forecast_7d, real_bundle, tmp_path):

    (tmp_path / "inputs.pickle").write_bytes(pickle.dumps((real_forecast_7d, real_bundle)))
    code = (
        "import pickle, sys\nimport fxcu\n"
        f"fc, bundle = pickle.loads(open({str(tmp_path / 'inputs.pickle')!r}, 'rb').read())\n"
        f"fxcu.write_chart(fc, bundle, fxcu.Path({str(tmp_path / 'chart.png')!r}))\n"
        "print('matplotlib.figure' in sys.modules, 'matplotlib.pyplot' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "False"], done.stderr
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_run_copper_off_runs_without_copper(data_dir, capsys, shared_models):
    code = fxcu.main(["run", "30d", "--offline", "--json"], run_env(data_dir, FXCU_COPPER="off"))
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and not out["copper_available"] and "no copper" in out["degraded"]


@pytest.mark.slow
def test_run_report_write_failure_still_prints_and_tracks(data_dir, monkeypatch, capsys, shared_models):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fxcu, "write_text_atomic", full)
    code = fxcu.main(["run", "7d", "--offline"], run_env(data_dir))
    out = capsys.readouterr().out
    assert code == 1 and "report: NOT WRITTEN" in out and "tracked: yes" in out
    assert not list((data_dir / "reports").glob("*.md"))


@pytest.mark.slow
def test_check_healthy_after_a_run_and_critical_without_data(data_dir, tmp_path, capsys, shared_models):
    assert fxcu.main(["run", "7d", "--offline"], run_env(data_dir)) == 0
    capsys.readouterr()
    code = fxcu.main(["check", "--json"], run_env(data_dir))
    report = json.loads(capsys.readouterr().out)
    levels = {c["name"]: c["level"] for c in report["checks"]}
    assert levels["run 7d"] == "OK" and levels["run 15d"] == "WARNING" and levels["mlflow database"] == "OK"
    assert levels["usdclp data"] == "CRITICAL"  # the real history ends in 2024
    assert code == 2 and report["status"] == "CRITICAL"
    assert fxcu.main(["check"], {"FXCU_DATA_DIR": str(tmp_path / "empty")}) == 2
    assert "CRITICAL usdclp data: no data" in capsys.readouterr().out


# -- Commands: the tracking store (init, ui, runs, compare, stats, backup) -------------


@pytest.mark.slow
def test_best_run_runs_compare_stats_on_known_runs(data_dir, capsys):
    config = fxcu.Config.from_env(run_env(data_dir))
    forecasts = {21.0: 900.0, 19.5: 905.5, 20.2: 903.0}  # logged in this order: 903.0 is the newest 7d forecast
    ids = {rmse: fxcu.log_run(config, record("7d", rmse, forecast=forecasts[rmse]), environ={}) for rmse in forecasts}
    fxcu.log_run(config, record("30d", 40.0, degraded="no copper"), environ={})
    best = fxcu.best_run("7d", "rmse", config=config, environ={})
    assert best.info.run_id == ids[19.5] and best.data.metrics["7d_rmse"] == 19.5
    assert fxcu.best_run("7d", "7d_rmse", config=config, environ={}).info.run_id == ids[19.5]
    assert fxcu.best_run("90d", "rmse", config=config, environ={}) is None

    assert fxcu.main(["runs", "--json"], run_env(data_dir)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["horizon"], r["forecast"]) for r in rows if r["horizon"] == "7d"] == [
        ("7d", 903.0),
        ("7d", 905.5),
        ("7d", 900.0),
    ]
    assert [r["change"] for r in rows if r["horizon"] == "7d"] == [-2.5, 5.5, None]
    assert {r["horizon"]: r["status"] for r in rows} == {"7d": "ok", "30d": "degraded: no copper"}
    assert (
        rows[0]["data_date"] == "2026-01-19" and rows[0]["target_date"] == "2026-01-26" and rows[0]["served"] == "Naive"
    )
    assert fxcu.main(["runs", "7d", "--last", "2"], run_env(data_dir)) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert max(map(len, lines)) <= 100 and "\x1b[" not in table
    assert lines[2].split() == ["data", "h", "target", "forecast", "80%", "range", "change", "served", "status"]
    assert lines[4].split() == ["2026-01-19", "7d", "2026-01-26", "903.00", "890.50–915.50", "-2.50", "Naive", "ok"]
    assert lines[5].split()[5] == "+5.50" and len(lines) == 6  # --last 2, yet the change of the older one is known

    assert fxcu.main(["compare", "--metric", "rmse", "--json"], run_env(data_dir)) == 0
    compared = json.loads(capsys.readouterr().out)
    assert (compared["label"], compared["unit"], compared["better"]) == ("RMSE", "CLP per USD", "lower is better")
    per = {r["horizon"]: r for r in compared["horizons"]}
    assert per["7d"]["best_served"] == 19.5 and per["7d"]["best_served_run"] == ids[19.5]
    assert (
        per["7d"]["models"]["Naive"] == 20.0
        and per["7d"]["best_model"] == "Naive"
        and per["30d"]["models"]["Ensemble"] == 40.0
    )
    assert fxcu.main(["compare", "--metric", "rmse"], run_env(data_dir)) == 0
    text = capsys.readouterr().out
    assert text.startswith("RMSE (CLP per USD): lower is better") and max(map(len, text.splitlines())) <= 100
    naive = next(line for line in text.splitlines() if line.split()[:1] == ["Naive"])
    # 7d: Naive's 20.0 beats the served 20.2; 30d: Naive's 20.0 beats the served 40.0
    assert naive.split() == ["Naive", "20.00", "*", "20.00", "*"]

    assert fxcu.main(["stats", "--json"], run_env(data_dir)) == 0
    stats = json.loads(capsys.readouterr().out)
    per = {e["experiment"]: e for e in stats["experiments"]}
    assert (
        per["forecaster_7d"]["runs"] == 3
        and per["forecaster_7d"]["success_rate"] == 1.0
        and per["forecaster_7d"]["last_run"] == "just now"
    )
    assert per["forecaster_90d"]["runs"] == 0 and stats["database_bytes"] > 0 and per["forecaster_30d"]["degraded"] == 1
    assert fxcu.main(["stats"], run_env(data_dir)) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.split()[:1] == ["forecaster_7d"])
    assert row.split() == ["forecaster_7d", "3", "100%", "0", "0", "just", "now", "2026-01-19"] and "1.0000" not in text


def test_dashboard_without_a_database_says_so(tmp_path, capsys):
    assert fxcu.main(["runs"], {"FXCU_DATA_DIR": str(tmp_path)}) == 0
    assert capsys.readouterr().out.startswith("no runs yet")
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()


@pytest.mark.slow
def test_init_twice_changes_nothing(tmp_path, migrated_db, capsys):
    (tmp_path / "mlflow").mkdir()
    shutil.copy(migrated_db, tmp_path / "mlflow" / "mlflow.db")
    assert fxcu.main(["init"], {"FXCU_DATA_DIR": str(tmp_path)}) == 0
    first = capsys.readouterr().out
    assert first.count("created") == 4 and str(tmp_path / "mlflow" / "mlruns") in first
    db = tmp_path / "mlflow" / "mlflow.db"
    kinds = "select count(*) from experiment_tags where key = 'mlflow.experimentKind' and value = ?"
    with contextlib.closing(sqlite3.connect(db)) as conn:  # MLflow 3.17's UI opens these on their runs, not GenAI
        assert conn.execute(kinds, ("custom_model_development",)).fetchone()[0] == 4
        with conn:
            conn.execute("delete from experiment_tags where key = 'mlflow.experimentKind'")  # made by an older fxcu
    assert fxcu.main(["init"], {"FXCU_DATA_DIR": str(tmp_path)}) == 0
    second = capsys.readouterr().out
    assert second.count("created") == 0 and second.count("exists") == 4
    with contextlib.closing(sqlite3.connect(db)) as conn:  # existing experiments get the tag too
        assert conn.execute(kinds, ("custom_model_development",)).fetchone()[0] == 4


@pytest.mark.slow
def test_backup_is_a_consistent_archive(data_dir, tmp_path, capsys):

    config = fxcu.Config.from_env(run_env(data_dir))
    fxcu.log_run(config, record("7d", 20.0), environ={})
    assert fxcu.main(["backup", str(tmp_path / "bk")], run_env(data_dir)) == 0
    archive = next((tmp_path / "bk").glob("fxcu_mlflow_*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "out", filter="data")
    with sqlite3.connect(tmp_path / "out" / "mlflow" / "mlflow.db") as conn:
        assert conn.execute("select count(*) from runs").fetchone()[0] == 1


@pytest.mark.slow
def test_mlflow_server_serves_the_runs_over_http(data_dir, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    config = fxcu.Config.from_env(run_env(data_dir))
    run_id = fxcu.log_run(config, record("7d", 18.5), environ={})

    def start(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--artifacts-destination",
                str(tmp_path / "server-artifacts"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=tmp_path,
        )

    server, url = serve_on_a_port(start)
    try:
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("forecaster_7d")
        runs = client.search_runs([experiment.experiment_id])
        assert [r.info.run_id for r in runs] == [run_id] and runs[0].data.metrics["7d_rmse"] == 18.5
        # MLFLOW_TRACKING_URI wins: fxcu logs through the server, artifacts included, where the server keeps them
        report = tmp_path / "forecast_7d_2026-11-26.md"
        report.write_text("# a report\n")
        remote = dataclasses.replace(record("15d", 25.0), artifacts=(report,))
        remote_id = fxcu.log_run(config, remote, environ={"MLFLOW_TRACKING_URI": url})
        assert capsys.readouterr().out == ""  # MLflow's "View run ... at" line goes to stderr: stdout holds results
        logged = client.get_run(remote_id)
        assert logged.data.metrics["15d_rmse"] == 25.0 and logged.info.status == "FINISHED"
        assert not logged.info.artifact_uri.startswith((data_dir / "mlflow" / "mlruns").as_uri())
        assert [a.path for a in client.list_artifacts(remote_id)] == [
            "forecast_7d_2026-11-26.html",
            "forecast_7d_2026-11-26.md",
        ]
        assert fxcu.main(["runs", "--json"], {"FXCU_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": url}) == 0
        captured = capsys.readouterr()
        assert {r["run_id"] for r in json.loads(captured.out)} == {run_id, remote_id}, captured
    finally:
        os.killpg(server.pid, 15)
        server.wait(20)


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 90) -> bool:
    """Poll `url`/health until the server answers (no sleep-and-retry on results: only while it boots).

    False when the server exited first (`serve_on_a_port` retries); an error when it never answered.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.5)
    if server.poll() is not None:
        return False
    os.killpg(server.pid, 15)
    raise AssertionError(f"no MLflow server at {url} in {seconds} s")


@pytest.mark.slow
def test_fxcu_ui_serves_the_store_and_its_rest_answers_what_the_browser_shows(offline_run, tmp_path):
    folder, _, result = offline_run
    out = json.loads(result.stdout)

    def start(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(HERE / "fxcu.py"), "ui", "--port", str(port)],
            env={**os.environ, "FXCU_DATA_DIR": str(folder)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            cwd=tmp_path,
        )

    server, url = serve_on_a_port(start)
    port = int(url.rsplit(":", 1)[1])
    try:
        assert server.stdout.readline().startswith(f"MLflow UI: {url}/#/experiments")
        # the experiment list the UI draws: fxcu's experiment, described, and no `Default`
        experiments = httpx.get(f"{url}/ajax-api/2.0/mlflow/experiments/search", params={"max_results": 100}).json()[
            "experiments"
        ]
        assert [e["name"] for e in experiments] == ["forecaster_7d"]
        assert any(t["key"] == "mlflow.note.content" for t in experiments[0]["tags"])
        kind = {"key": "mlflow.experimentKind", "value": "custom_model_development"}  # opens on its runs, not GenAI
        assert kind in experiments[0]["tags"]
        # the runs table and the run page: name, times, source, user, description, datasets
        runs = httpx.post(
            f"{url}/ajax-api/2.0/mlflow/runs/search", json={"experiment_ids": [experiments[0]["experiment_id"]]}
        ).json()["runs"]
        assert len(runs) == 1
        info, tags = runs[0]["info"], {t["key"]: t["value"] for t in runs[0]["data"]["tags"]}
        low, high = out["interval_80"]
        name = rf"\[degraded\] 7d {out['forecast']:.2f} \[{low:.1f}–{high:.1f}\] · data 2024-07-15 · "
        name += r"\d\d-\d\d \d\d:\d\d:\d\d"
        assert re.fullmatch(name, info["run_name"]) and int(info["end_time"]) > int(info["start_time"])
        assert tags["mlflow.source.name"] == "fxcu run 7d" and tags["mlflow.user"]
        headline = f"USD/CLP 7d: last {out['last_close']:.2f} on {out['last_date']} -> {out['forecast']:.2f}"
        assert f"**{headline} on {out['target_date']}**" in tags["mlflow.note.content"]
        assert {d["dataset"]["name"] for d in runs[0]["inputs"]["dataset_inputs"]} == {"usdclp", "copper"}
        metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
        assert metrics["served_rmse"] == metrics["7d_rmse"] and metrics["forecast"] == pytest.approx(
            out["forecast"], abs=1e-4
        )
        # the artifact viewer's request for the HTML report: the chart travels inside it
        listed = httpx.get(f"{url}/ajax-api/2.0/mlflow/artifacts/list", params={"run_uuid": info["run_id"]}).json()[
            "files"
        ]
        page = next(f["path"] for f in listed if f["path"].endswith(".html"))
        body = httpx.get(f"{url}/get-artifact", params={"path": page, "run_uuid": info["run_id"]}).text
        assert ' src="data:image/png;base64,' in body
        # SIGTERM to fxcu alone (systemd's stop): the real mlflow server and its uvicorn workers stop within 10 s
        children = descendants(server.pid)
        assert children and listening(port)
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while (listening(port) or any(map(alive, children))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not listening(port) and not [pid for pid in children if alive(pid)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(20)


FAKE_SERVER = """
import socket, subprocess, sys, time
port = int(sys.argv[1])
if sys.argv[2:] == ["worker"]:  # a worker that listens, as uvicorn's do
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        time.sleep(600)
else:  # the master: starts its worker and waits, as `mlflow server` does
    subprocess.Popen([sys.executable, __file__, str(port), "worker"])
    time.sleep(600)
"""

UI_WITH_FAKE_SERVER = """
import sys
import fxcu
fxcu.ui_command = lambda config, uri, host, port: [sys.executable, sys.argv[2], str(port)]
raise SystemExit(fxcu.main(["ui", "--port", sys.argv[1]]))
"""


def descendants(pid: int) -> set[int]:
    """Every living process under `pid`, read from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_ui_stopped_by_a_signal_leaves_nothing_listening_and_no_worker_alive(tmp_path, sig):
    """`fxcu ui` under SIGTERM, SIGHUP or Ctrl-C stops its server's whole process group: within 10 s the port is
    free and no child is alive (a master and a worker that listens stand in for `mlflow server` and uvicorn)."""
    (tmp_path / "server.py").write_text(FAKE_SERVER)
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-c", UI_WITH_FAKE_SERVER, str(port), str(tmp_path / "server.py")],
        env={**clean_environ(), "FXCU_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(HERE)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as from a terminal: a runner started in the background hands its children SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    children: set[int] = set()
    try:
        assert ui.stdout.readline().startswith(f"MLflow UI: http://127.0.0.1:{port}/#/experiments")
        deadline = time.monotonic() + 30
        while not listening(port) and time.monotonic() < deadline and ui.poll() is None:
            time.sleep(0.1)  # the worker is booting: polled for readiness, no result depends on it
        children = descendants(ui.pid)
        assert listening(port) and len(children) == 2, children
        ui.send_signal(sig)  # to fxcu alone, as systemd, a closed terminal or Ctrl-C would
        code = ui.wait(10)
        deadline = time.monotonic() + 10
        while (listening(port) or any(map(alive, children))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not listening(port) and not [pid for pid in children if alive(pid)]
        assert code == 128 + sig.value and "Traceback" not in ui.stderr.read()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_ui_refuses_a_tracking_server_uri(tmp_path, capsys):
    assert (
        fxcu.main(
            ["ui"], {"FXCU_DATA_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": "http://user:pw@mlflow.internal:5000"}
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pw" not in err and "open its own UI" in err


def test_ui_command_points_the_server_at_the_data_dir(tmp_path):
    config = fxcu.Config(data_dir=tmp_path)
    cmd = fxcu.ui_command(config, f"sqlite:///{tmp_path}/mlflow/mlflow.db", "127.0.0.1", 5000)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--default-artifact-root") + 1] == (tmp_path / "mlflow" / "mlruns").as_uri()
    assert cmd[cmd.index("--host") + 1 :][:3] == ["127.0.0.1", "--port", "5000"]


@pytest.mark.slow
def test_data_dir_restored_from_backup_elsewhere_just_works(tmp_path, migrated_db):
    """`fxcu backup` restored elsewhere: `init`, `runs` and new runs use the new path, the original is untouched."""

    original, restored = tmp_path / "original", tmp_path / "restored"
    (original / "mlflow").mkdir(parents=True)
    shutil.copy(migrated_db, original / "mlflow" / "mlflow.db")
    fxcu.log_run(
        fxcu.Config(data_dir=original),
        dataclasses.replace(record("7d", 20.0), artifacts=(artifact_file(tmp_path / "a"),)),
        environ={},
    )
    assert cli(["backup", str(tmp_path / "b")], run_env(original), tmp_path).code == 0
    (archive,) = (tmp_path / "b").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(restored, filter="data")
    files = sorted(p for p in original.rglob("*") if p.is_file() and p.name != "mlflow.db")
    init = cli(["init"], run_env(restored), tmp_path)
    runs = cli(["runs", "7d", "--json"], run_env(restored), tmp_path)
    fxcu.log_run(
        fxcu.Config(data_dir=restored),
        dataclasses.replace(record("7d", 21.0), artifacts=(artifact_file(tmp_path / "c"),)),
        environ={},
    )
    assert init.code == 0 and f"artifacts {(restored / 'mlflow' / 'mlruns').as_uri()})" in init.out, init.out + init.err
    assert runs.code == 0 and len(json.loads(runs.out)) == 1
    assert (
        sorted(p for p in original.rglob("*") if p.is_file() and p.name != "mlflow.db") == files
    )  # nothing new at the old path
    assert len(list((restored / "mlflow" / "mlruns").rglob("forecast_7d.md"))) == 2


def test_compose_team_profile_is_postgresql_and_a_server_the_forecaster_tracks_to():
    """compose.yaml is not run here (no container engine): its team profile is checked as written."""
    import tomllib

    import yaml

    services = yaml.safe_load((HERE / "compose.yaml").read_text())["services"]
    pins = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
    mlflow_pin = next(d.split("==")[1] for d in pins["dependencies"] if d.startswith("mlflow=="))
    team = {name for name, service in services.items() if "team" in service.get("profiles", [])}
    assert team == {"postgres", "mlflow", "forecaster-team"}
    postgres, server, forecaster = services["postgres"], services["mlflow"], services["forecaster-team"]
    assert postgres["image"] == "postgres:15" and postgres["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert f"FROM ghcr.io/mlflow/mlflow:v{mlflow_pin}" in server["build"]["dockerfile_inline"]
    assert " ".join(pins["optional-dependencies"]["server"]) in server["build"]["dockerfile_inline"]
    command = server["command"].split()
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    assert command[command.index("--backend-store-uri") + 1].startswith("postgresql+psycopg://mlflow:")
    assert command[command.index("--backend-store-uri") + 1].endswith("@postgres:5432/mlflow")
    assert command[command.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert (
        forecaster["extends"] == "forecaster"
        and forecaster["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    )


# An analyst's `fxcu run 7d` in its own process; the models were computed once by the test (pickled), so the
# process does what differs between analysts: the report, the ledger and the tracking.
ANALYST_RUN = """
import pickle, sys
import fxcu
made = pickle.loads(open(sys.argv[1], "rb").read())
fxcu.make_forecasts = lambda *args, **kwargs: made
raise SystemExit(fxcu.main(["run", "7d", "--offline", "--skip-email"]))
"""


def assert_password_nowhere(texts: list[str], folders: list[Path]) -> None:
    """The analysts' password is in no output and no file under the data dirs (reports, status, ledger)."""
    for text in texts:
        assert ANALYST_PASSWORD not in text and "Traceback" not in text
    for folder in folders:
        for path in folder.rglob("*"):
            assert not path.is_file() or ANALYST_PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.slow
@pytest.mark.xdist_group("team_server")
def test_four_analysts_track_into_one_server_at_once(team_server, data_dir, tmp_path, shared_models, capsys):
    """Four `run 7d` from four data dirs at the same moment against one server on PostgreSQL: all four tracked."""
    from mlflow.tracking import MlflowClient

    config = fxcu.Config.from_env({**run_env(data_dir), "FXCU_OFFLINE": "1"})
    made = fxcu.make_forecasts(config, None, ["7d"], now=datetime.now(UTC), stages=fxcu.Stages())
    (tmp_path / "made.pickle").write_bytes(pickle.dumps(made))
    folders = [tmp_path / f"analyst{i}" for i in range(4)]
    for folder in folders:
        shutil.copytree(data_dir / "warehouse", folder / "warehouse")
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", ANALYST_RUN, str(tmp_path / "made.pickle")],
            # a generous bound: on a loaded 2-core runner four writers at once can take longer than run_env's 30 s
            env={
                **clean_environ(),
                **run_env(folder, FXCU_TRACKING_TIMEOUT="120"),
                "MLFLOW_TRACKING_URI": team_server.analyst_uri(folder.name),
            },
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder in folders
    ]
    outs = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, outs
    found = [re.search(r"; tracked: yes, run (\w+)$", out, re.M) for out, _ in outs]
    untracked = [(out.splitlines()[-1:], err[-3000:]) for (out, err), m in zip(outs, found, strict=True) if not m]
    assert not untracked, untracked  # every analyst's run tracked
    ids = [m[1] for m in found]
    client = MlflowClient(tracking_uri=team_server.url)
    tracked = [client.get_run(run_id) for run_id in ids]
    assert max(r.info.start_time for r in tracked) < min(r.info.end_time for r in tracked)  # all four at once
    for run in tracked:
        metrics, run_id = run.data.metrics, run.info.run_id
        assert run.info.status == "FINISHED" and metrics["served_rmse"] == metrics["7d_rmse"] > 0
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # uploaded through the server
        listed = [a.path for a in client.list_artifacts(run_id)]
        page = next(p for p in listed if p.endswith(".html"))
        assert (
            "inputs" in listed
            and 'src="data:image/png;base64,'
            in Path(client.download_artifacts(run_id, page, str(tmp_path / run_id))).read_text()
        )
        words = [*run.data.tags.values(), *run.data.params.values()]
        assert not [w for w in words if ANALYST_PASSWORD in w or PG_PASSWORD in w]
    # the dashboard and the probe, through the server
    env = {"FXCU_DATA_DIR": str(folders[0]), "MLFLOW_TRACKING_URI": team_server.analyst_uri()}
    assert fxcu.main(["runs", "7d", "--last", "100", "--json"], env) == 0
    assert set(ids) <= {r["run_id"] for r in json.loads(capsys.readouterr().out)}
    assert fxcu.main(["compare", "--json"], env) == 0
    (row,) = json.loads(capsys.readouterr().out)["horizons"]
    assert row["horizon"] == "7d" and row["models"]["Naive"] == tracked[0].data.metrics["Naive_rmse"]
    assert row["best_served"] == tracked[0].data.metrics["7d_rmse"]  # the four runs served the same forecast
    assert fxcu.main(["compare", "--metric", "coverage_80", "--json"], env) == 0
    (row,) = json.loads(capsys.readouterr().out)["horizons"]
    assert row["best_served"] == tracked[0].data.metrics["7d_coverage_80"]
    assert fxcu.main(["stats", "--json"], env) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["server"] == f"http://analyst:***@127.0.0.1:{team_server.port}"
    assert stats["experiments"][0]["experiment"] == "forecaster_7d" and stats["experiments"][0]["runs"] >= 4
    fxcu.main(["check"], env)  # the data is years old (CRITICAL): the server's own line is the point
    assert re.search(
        r"^OK +mlflow server: http://analyst:\*\*\*@\S+ answers: search_runs [\d.]+ s, newest run 0.0 h ago",
        capsys.readouterr().out,
        re.M,
    )
    fxcu.main(["check", "--server-warn-seconds", "1e-6"], env)
    slow = capsys.readouterr().out
    assert re.search(r"^WARNING +mlflow server: \S+ is slow: search_runs [\d.]+ s \(over 1e-06 s\)$", slow, re.M)
    assert "'mlflow_search_seconds'=" in slow.splitlines()[0]
    assert fxcu.main(["backup"], env) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "back up its database where it runs (pg_dump)" in said
    assert_password_nowhere([*(o for pair in outs for o in pair), slow, said], folders)


@pytest.mark.slow
@pytest.mark.xdist_group("team_server")
def test_runs_logging_the_same_new_dataset_at_the_same_moment_all_get_it(team_server):
    """The race that failed a CI run: four runs log one new dataset at once; MLflow refuses all but one insert.

    Without `log_datasets`' second try this fails on most rounds with `UniqueViolation ... "dataset_pk"`.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=team_server.url)
    experiment = client.create_experiment(f"race-{uuid.uuid4().hex[:8]}")
    errors: list[str] = []
    for _ in range(5):
        digest, runs = uuid.uuid4().hex[:10], [client.create_run(experiment).info.run_id for _ in range(4)]
        barrier = threading.Barrier(len(runs))

        def log(run_id: str, digest: str = digest, barrier: threading.Barrier = barrier) -> None:
            dataset = DatasetInput(Dataset("usdclp", digest, "local", "{}"), [InputTag("mlflow.data.context", "x")])
            barrier.wait(30)
            try:
                fxcu.log_datasets(client, run_id, [dataset])
            except Exception as exc:  # collected: the assertion below shows them
                errors.append(str(exc)[:200])

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for run_id in runs:
            assert [i.dataset.digest for i in client.get_run(run_id).inputs.dataset_inputs] == [digest], errors
    assert errors == []


def test_log_datasets_tries_again_only_after_a_unique_key_refusal():
    """A duplicate-key refusal is tried again (then the row exists); any other error is raised on the first try."""
    from mlflow.exceptions import RestException

    duplicate = "BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique constraint"
    duplicate += ' "dataset_pk"'
    other = "BAD_REQUEST: (psycopg.errors.NotNullViolation) null value in column"

    class Client:
        def __init__(self, answers: list[str | None]) -> None:
            self.answers, self.calls = answers, 0

        def log_inputs(self, run_id: str, datasets: list[str]) -> None:
            self.calls += 1
            answer = self.answers.pop(0)
            if answer is not None:
                raise RestException({"error_code": "BAD_REQUEST", "message": answer})

    client = Client([duplicate, None])
    fxcu.log_datasets(client, "r", ["d"])
    assert client.calls == 2
    client = Client([other, None])
    with pytest.raises(RestException, match="NotNullViolation"):
        fxcu.log_datasets(client, "r", ["d"])
    assert client.calls == 1
    client = Client([duplicate] * 3)
    with pytest.raises(RestException, match="dataset_pk"):
        fxcu.log_datasets(client, "r", ["d"])
    assert client.calls == 3


@pytest.mark.slow
@pytest.mark.xdist_group("team_server")
def test_postgresql_stopped_behind_a_live_server_costs_a_run_its_tracking_only(
    team_server, data_dir, capsys, shared_models
):
    env = {**run_env(data_dir, FXCU_TRACKING_TIMEOUT="10"), "MLFLOW_TRACKING_URI": team_server.analyst_uri()}
    team_server.stop_postgres()
    try:
        started = time.monotonic()
        code = fxcu.main(["run", "7d", "--offline", "--skip-email"], env)
        took, run = time.monotonic() - started, capsys.readouterr()
        assert fxcu.main(["check"], env) == 2
        check = capsys.readouterr()
    finally:
        team_server.start_postgres()
    assert code == 0 and run.out.startswith("USD/CLP 7d: last ") and took < 10 + 5  # FXCU_TRACKING_TIMEOUT + 5 s
    assert re.search(
        r"; tracked: no \(server http://analyst:\*\*\*@127.0.0.1:\d+: answered an error on every try", run.out
    )
    assert list((data_dir / "reports").glob("forecast_7d_*.md"))
    assert re.search(
        r"^CRITICAL mlflow server: \S+ answered HTTP 50\d \(.*psycopg.*\): runs are not being tracked$", check.out, re.M
    )
    assert_password_nowhere([run.out, run.err, check.out, check.err], [data_dir])


@pytest.mark.slow
@pytest.mark.xdist_group("team_server")
def test_tracking_server_killed_mid_run_costs_a_run_its_tracking_only(
    team_server, data_dir, capsys, monkeypatch, shared_models
):
    real = fxcu.artifact_files

    def kill_then_list(*args):  # the run is created and its metrics logged: the server dies before the artifacts
        team_server.kill_mlflow()
        return real(*args)

    monkeypatch.setattr(fxcu, "artifact_files", kill_then_list)
    env = {**run_env(data_dir, FXCU_TRACKING_TIMEOUT="10"), "MLFLOW_TRACKING_URI": team_server.analyst_uri()}
    started = time.monotonic()
    code = fxcu.main(["run", "7d", "--offline", "--skip-email"], env)
    took, run = time.monotonic() - started, capsys.readouterr()
    assert code == 0 and run.out.startswith("USD/CLP 7d: last ") and took < 10 + 5  # FXCU_TRACKING_TIMEOUT + 5 s
    assert re.search(
        r"; tracked: no \(server http://analyst:\*\*\*@127.0.0.1:\d+: unreachable \(connection failed\)\)$",
        run.out,
        re.M,
    )
    assert not json.loads((data_dir / "status.json").read_text())["7d"]["tracked"]
    assert fxcu.main(["check"], env) == 2
    check = capsys.readouterr()
    assert re.search(
        r"^CRITICAL mlflow server: \S+ unreachable \(ConnectError: .*\): runs are not being tracked$", check.out, re.M
    )
    assert_password_nowhere([run.out, run.err, check.out, check.err], [data_dir])


# -- Commands: track and check ---------------------------------------------------------


def test_check_reads_fxcu_max_age_days(tmp_path, capsys):
    write_real_warehouse(tmp_path)  # ends 2024-07-15
    fxcu.main(["check", "--json"], {"FXCU_DATA_DIR": str(tmp_path), "FXCU_MAX_AGE_DAYS": "20"})
    perf = {p["label"]: p for p in json.loads(capsys.readouterr().out)["perfdata"]}
    assert (perf["usdclp_age_days"]["warn"], perf["usdclp_age_days"]["crit"]) == ("20", "40")
    assert perf["copper_age_days"]["warn"] == "20"


def test_check_first_line_matches_the_exit_code_and_thresholds_move_it(tmp_path, capsys):
    write_real_warehouse(tmp_path)  # the real history ends 2024-07-15: hundreds of days old
    env = {"FXCU_DATA_DIR": str(tmp_path)}
    code = fxcu.main(["check"], env)
    first, *rest = capsys.readouterr().out.splitlines()
    assert (
        code == 2 and first.startswith("CRITICAL - usdclp data: ") and " days old (last 2024-07-15, 4664 rows)" in first
    )
    assert re.search(
        r"\| 'usdclp_age_days'=\d+;5;30;0 'copper_age_days'=\d+;5;;0 'disk_free'=\d+B;1000000000:;100000000:;0$", first
    )
    assert [line for line in rest if "copper" in line] == [
        next(line for line in rest if line.startswith("WARNING  copper data: "))
    ]
    code = fxcu.main(["check", "-w", "5000", "-c", "9000", "--json"], {**env, "FXCU_CHECK_RUN_WARN_HOURS": "1"})
    report = json.loads(capsys.readouterr().out)
    levels = {c["name"]: c["level"] for c in report["checks"]}
    assert levels["usdclp data"] == levels["copper data"] == "OK" and code == 1 and report["status"] == "WARNING"
    assert report["headline"] == "WARNING - run 7d: never run (+4 more problems)"
    assert {"label": "usdclp_age_days", "warn": "5000", "crit": "9000"}.items() <= report["perfdata"][0].items()


def test_check_a_broken_status_entry_is_a_finding_not_a_traceback(tmp_path, capsys):
    (tmp_path / "status.json").write_text(json.dumps({"7d": {"time": "yesterday", "ok": True}}))
    assert fxcu.main(["check"], {"FXCU_DATA_DIR": str(tmp_path)}) == 2  # CRITICAL: no USD/CLP data at all
    out = capsys.readouterr().out
    assert "WARNING  run 7d: status.json entry malformed (no valid time)" in out and "Traceback" not in out


@pytest.mark.slow
def test_check_does_not_import_mlflow_or_statsforecast(tmp_path):
    _, _, heavy = in_fresh_process([["check"]], tmp_path)
    assert heavy == []


def test_check_with_a_ledger_grades_live_coverage_and_the_t_test(tmp_path, capsys):
    write_real_warehouse(tmp_path)  # real CLP=X closes; each origin serves its close +0.2%, the random walk its close
    prices = pl.read_parquet(tmp_path / "warehouse" / fxcu.USDCLP_CACHE).filter(pl.col(fxcu.DATE) >= date(2024, 1, 1))
    days, closes = prices[fxcu.DATE].to_list(), prices[fxcu.CLOSE].to_list()
    rows = [
        ledger_row(origin, target, forecast=close * 1.002, last=close)
        for origin, target, close in zip(days, days[5:], closes, strict=False)
    ]
    fxcu.write_ledger(fxcu.upsert_ledger(fxcu.empty_ledger(), rows), tmp_path / "warehouse" / fxcu.LEDGER)
    fxcu.main(["check"], {"FXCU_DATA_DIR": str(tmp_path)})
    graded = [line for line in capsys.readouterr().out.splitlines() if line.split()[1:3] == ["track", "7d"]]
    assert any("7d coverage: " in line for line in graded) and any("(p=" in line for line in graded)  # both tests ran


def test_main_check_grades_the_ledger_against_the_warehouse(tmp_path, capsys):
    write_real_warehouse(tmp_path)
    prices = pl.read_parquet(tmp_path / "warehouse" / fxcu.USDCLP_CACHE).filter(pl.col(fxcu.DATE) >= date(2023, 1, 1))
    days = prices[fxcu.DATE].to_list()
    rows = [
        ledger_row(origin, target, forecast=close + 50, last=close + 50)  # every range misses by 50 CLP
        for origin, target, close in zip(days, days[5:], prices[fxcu.CLOSE].to_list()[5:], strict=False)
    ]
    rows.append(ledger_row(date(2024, 7, 15), date(2024, 7, 22)))  # aims past the end of the real history
    fxcu.write_ledger(
        fxcu.upsert_ledger(fxcu.empty_ledger(), rows), tmp_path / "warehouse" / fxcu.LEDGER
    )  # stored unscored
    fxcu.main(["check", "--json"], {"FXCU_DATA_DIR": str(tmp_path)})
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert (
        checks["track 7d coverage"]["level"] == "WARNING"
        and "80% coverage 0%" in checks["track 7d coverage"]["message"]
    )
    assert (
        checks["track 7d scoring"]["level"] == "WARNING"
    )  # the real history ends in 2024: that target is never scored


def odds_ledger(folder: Path) -> None:
    """Two served 7d forecasts (the later one answers), a later reconstructed one and no 30d forecast."""
    rows = [
        ledger_row(date(2024, 7, 1), date(2024, 7, 8), forecast=800.0, scale=0.02),
        ledger_row(date(2024, 7, 8), date(2024, 7, 15), forecast=820.0, last=818.0, scale=0.03, run_id="abc"),
        ledger_row(date(2024, 7, 12), date(2024, 7, 19), kind="reconstructed", forecast=700.0, scale=0.01),
    ]
    fxcu.write_ledger(fxcu.upsert_ledger(fxcu.empty_ledger(), rows), folder / "warehouse" / fxcu.LEDGER)


def test_odds_answers_from_the_last_served_forecast(tmp_path, capsys):
    odds_ledger(tmp_path)
    assert fxcu.main(["odds", "7d", "850", "800", "-q", "0.95", "--json"], {"FXCU_DATA_DIR": str(tmp_path)}) == 0
    odds = json.loads(capsys.readouterr().out)
    served = NormalDist(math.log(820), 0.03)
    assert (odds["origin"], odds["target"], odds["run_id"]) == ("2024-07-08", "2024-07-15", "abc")
    assert odds["recorded_at"] == "2024-01-01T00:00:00+00:00"
    assert [o["level"] for o in odds["levels"]] == [850, 800]
    assert odds["levels"][0]["prob_above"] == pytest.approx(1 - served.cdf(math.log(850)))
    assert odds["levels"][1]["prob_below"] == pytest.approx(served.cdf(math.log(800)))
    assert odds["quantiles"] == {"95%": pytest.approx(math.exp(served.inv_cdf(0.95)))}
    assert fxcu.main(["odds", "7d", "850"], {"FXCU_DATA_DIR": str(tmp_path)}) == 0
    out = capsys.readouterr().out
    assert "forecast made on 2024-07-08" in out and "Mon 15 Jul 2024" in out
    assert f"above 850.00: {1 - served.cdf(math.log(850)):.1%}" in out and "50% 820.00" in out


def test_odds_reads_a_ledger_written_before_the_scale_was_stored(tmp_path, capsys):
    row = ledger_row(date(2024, 7, 8), date(2024, 7, 15), forecast=820.0, half95=30.0)
    old = fxcu.upsert_ledger(fxcu.empty_ledger(), [row]).drop("scale", "pit")
    (tmp_path / "warehouse").mkdir()
    old.write_parquet(tmp_path / "warehouse" / fxcu.LEDGER)
    assert fxcu.main(["odds", "7d", "850", "--json"], {"FXCU_DATA_DIR": str(tmp_path)}) == 0
    scale = math.log(850 / 790) / (2 * NormalDist().inv_cdf(0.975))  # from its 95% bounds, 790 and 850
    assert json.loads(capsys.readouterr().out)["levels"][0]["prob_above"] == pytest.approx(
        1 - NormalDist(math.log(820), scale).cdf(math.log(850))
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["7d", "0"], "must be a positive number"),
        (["7d", "-5"], "must be a positive number"),
        (["7d", "abc"], "is not a number"),
        (["7d", "nan"], "must be a positive number"),
        (["7d", "-q", "1.5"], "strictly between 0 and 1"),
        (["7d", "-q", "0"], "strictly between 0 and 1"),
        (["30d", "950"], "run `fxcu run 30d` first"),
        (["31d", "950"], "unknown horizon"),
    ],
)
def test_odds_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, words):
    odds_ledger(tmp_path)
    try:
        code = fxcu.main(["odds", *args], {"FXCU_DATA_DIR": str(tmp_path)})
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_odds_reads_the_ledger_and_imports_no_statsforecast_or_mlflow(tmp_path):
    odds_ledger(tmp_path)
    lines, codes, heavy = in_fresh_process([["odds", "7d", "850", "--json"]], tmp_path)
    assert codes == [0] and heavy == [] and json.loads("\n".join(lines))["origin"] == "2024-07-08"


def test_track_without_prices_is_one_line(tmp_path, capsys):
    assert fxcu.main(["track"], {"FXCU_DATA_DIR": str(tmp_path)}) == 1
    assert capsys.readouterr().err.startswith("fxcu: no USD/CLP history")


@pytest.mark.slow
def test_run_logs_live_metrics_and_the_track_chart(offline_run):
    folder, _, result = offline_run
    run = read_runs(folder, "7d")[0]
    assert run.data.metrics["live_scored"] == 0 and run.data.tags["fxcu.changed"] == "first"
    assert "seconds_score" in run.data.metrics
    assert json.loads(result.stdout)["changed"] is None
    report = next((folder / "reports").glob("forecast_7d_*.md")).read_text()
    assert "## What changed since the last run" in report and "## Live track record (7d)" in report
    assert "![Realised USD/CLP against the served ranges](track_7d_" in report
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    chart = next(artifacts.glob("track_7d_*.png")).read_bytes()
    assert chart.startswith(b"\x89PNG") and len(chart) > 10_000


@pytest.mark.slow
def test_replay_runs_as_of_successive_dates_then_track_matches_independent_scores(data_dir, capsys):
    """Runs on the real history cut at successive Fridays (and a Saturday rerun), then `track` on the full history."""
    full = pl.read_parquet(data_dir / "warehouse" / fxcu.USDCLP_CACHE)
    env = run_env(data_dir, FXCU_TRACKING_TIMEOUT="300")  # every run must be tracked, however loaded the machine
    config = dataclasses.replace(fxcu.Config.from_env(env), offline=True)
    served = {}
    for clock, cutoff in [
        (datetime(2024, 5, 31, 18, tzinfo=UTC), date(2024, 5, 31)),
        (datetime(2024, 6, 7, 18, tzinfo=UTC), date(2024, 6, 7)),
        (datetime(2024, 6, 8, 9, tzinfo=UTC), date(2024, 6, 7)),  # Saturday: same data, same origin, replaces
        (datetime(2024, 6, 14, 18, tzinfo=UTC), date(2024, 6, 14)),
        (datetime(2024, 6, 21, 18, tzinfo=UTC), date(2024, 6, 21)),
    ]:
        fxcu.write_parquet_atomic(full.filter(pl.col(fxcu.DATE) <= cutoff), data_dir / "warehouse" / fxcu.USDCLP_CACHE)
        server = SMTPServer() if clock.day == 21 else None  # the last run emails its report
        mail = (
            {
                "FXCU_SMTP_HOST": "127.0.0.1",
                "FXCU_SMTP_PORT": str(server.port),
                "FXCU_SMTP_TO": "desk@example.cl",
                "FXCU_SMTP_STARTTLS": "0",
            }
            if server
            else {}
        )
        assert (
            fxcu.cmd_run(config, None, ["7d"], now=clock, environ=env | mail, skip_email=server is None, as_json=True)
            == 0
        )
        out = json.loads(capsys.readouterr().out)
        naive = (
            pl.read_csv(Path(out["report"]).with_suffix(".csv"))
            .filter(pl.col("model") == "Naive")
            .tail(1)
            .row(0, named=True)
        )
        served[out["last_date"]] = (out, naive)
        if len(served) == 1:
            assert out["changed"] is None  # the first forecast in the ledger
        elif clock.weekday() == 5:
            assert out["changed"]["reasons"] == [] and out["changed"]["forecast_change"] == 0
        else:
            assert "new data" in out["changed"]["reasons"]
        if server:
            server.thread.join(10)
            body = server.messages[0].decode()
            assert "## What changed since the last run" in body and "since the run from 2024-06-14" in body
    fxcu.write_parquet_atomic(full, data_dir / "warehouse" / fxcu.USDCLP_CACHE)
    assert fxcu.main(["track", "7d", "--json"], env) == 0
    track = json.loads(capsys.readouterr().out)["7d"]

    closes = dict(zip(full[fxcu.DATE].to_list(), full[fxcu.CLOSE].to_list(), strict=True))
    errors, walk, hits80, hits95, scores, rw_scores = [], [], [], [], [], []
    for out, naive in served.values():
        target = date.fromisoformat(out["target_date"])
        day = next(target + timedelta(days=k) for k in range(10) if target + timedelta(days=k) in closes)
        y = closes[day]
        (lo80, hi80), (lo95, hi95) = out["interval_80"], out["interval_95"]
        errors.append(out["forecast"] - y)
        walk.append(out["last_close"] - y)
        hits80.append(lo80 <= y <= hi80)
        hits95.append(lo95 <= y <= hi95)
        scores.append(bracher_wis(y, out["forecast"], {80: (lo80, hi80), 95: (lo95, hi95)}))
        rw_scores.append(
            bracher_wis(
                y, out["last_close"], {80: (naive["lo_80"], naive["hi_80"]), 95: (naive["lo_95"], naive["hi_95"])}
            )
        )
    rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
    assert track["scored"] == len(served) == 4 and track["forecasts"] == 4
    assert track["rmse"] == pytest.approx(rmse, rel=1e-4)  # the JSON summary rounds to 4 decimals
    assert track["rmse_ratio_rw"] == pytest.approx(rmse / math.sqrt(sum(e * e for e in walk) / len(walk)), rel=1e-3)
    assert track["coverage_80"] == sum(hits80) / 4 and track["coverage_95"] == sum(hits95) / 4
    assert track["wis_ratio"] == pytest.approx(sum(scores) / sum(rw_scores), rel=1e-3)
    assert track["reconstructed"]["forecasts"] == 0
    last = max(read_runs(data_dir, "7d"), key=lambda r: r.info.start_time)
    assert last.data.metrics["live_scored"] == 3  # the run of 06-21 saw the three forecasts whose day had come


@pytest.mark.slow
def test_backfill_reconstructs_weekly_origins_with_no_look_ahead(data_dir, capsys):
    usdclp, copper = real_usdclp(), real_copper()
    origin = date(2024, 5, 31)
    with_future = list(fxcu.reconstruct(usdclp, copper, [origin], ["7d"], now=CLP_END))
    cut = list(
        fxcu.reconstruct(
            usdclp.filter(pl.col(fxcu.DATE) <= origin),
            copper.filter(pl.col(fxcu.DATE) <= origin),
            [origin],
            ["7d"],
            now=CLP_END,
        )
    )
    assert with_future == cut and cut[0]["kind"] == "reconstructed" and cut[0]["run_id"] is None
    # three weeks: one origin whose 7d outcome is known, two that aim past the end (each week costs a full run)
    assert fxcu.main(["track", "--backfill", "2024-07-01", "--json"], run_env(data_dir)) == 0
    record = json.loads(capsys.readouterr().out)
    for horizon in fxcu.HORIZONS:
        # the last trading day of the weeks of 07-01, 07-08 and 07-15 (the history ends on Monday 07-15)
        assert record[horizon]["forecasts"] == 0 and record[horizon]["reconstructed"]["forecasts"] == 3
    assert record["7d"]["reconstructed"]["scored"] == 1  # 07-12 and 07-15 aim past the end of the history
    assert fxcu.main(["track"], run_env(data_dir)) == 0
    text = capsys.readouterr().out
    assert "| 7d | live |" not in text and "| 7d | reconstructed |" in text


@pytest.mark.slow
def test_check_network_probes_each_source(tmp_path, capsys):
    with FakeSources(good_routes()) as api:
        code = fxcu.main(["check", "--network", "--json"], fault_env(tmp_path, api.url))
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    for name in ("source yahoo CLP=X", "source yahoo HG=F", "source mindicador", "source fred"):
        assert checks[name]["level"] == "OK", checks[name]
    assert api.count(YAHOO_CLP) == 1 and api.count(FRED) == 1
    assert checks["yahoo session"]["message"].endswith("; no cookie or crumb asked for")
    assert code == 2  # no data yet in this data dir


def test_check_network_reports_sources_down_without_the_key(tmp_path, capsys):
    fxcu.main(["check", "--network"], fault_env(tmp_path, closed_url()))
    out = capsys.readouterr().out
    assert "WARNING  source yahoo CLP=X: connection error" in out and "WARNING  source fred: connection error" in out
    assert FRED_KEY not in out


# -- CLI -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", [["runs"], ["stats"], ["compare"], ["init"], ["backup", "{tmp}/bk"]])
def test_mlflow_commands_on_a_corrupt_database_are_one_line(tmp_path, command, capsys):
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "mlflow.db").write_text("not a database\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    assert fxcu.main(args, {"FXCU_DATA_DIR": str(tmp_path)}) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"fxcu: {command[0]} failed (") and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["check", "-w", "soon"], {}, "fxcu check: error: argument -w/--data-warn-days: 'soon' is not a number"),
        (["check", "-w", "40"], {}, "UNKNOWN - data critical age (30 days) must exceed the warning age (40)"),
        (["check"], {"FXCU_CHECK_DB_WARN_MB": "-1"}, "UNKNOWN - FXCU_CHECK_DB_WARN_MB='-1' must be positive"),
    ],
)
def test_check_bad_thresholds_are_unknown_exit_3(tmp_path, capsys, args, env, line):
    try:
        code = fxcu.main(args, {"FXCU_DATA_DIR": str(tmp_path), **env})
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    assert code == 3 and (out.out + out.err).strip().splitlines()[0].startswith(line)


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys; sys.argv=['fxcu','--help']\nimport fxcu\ntry: fxcu.main()\nexcept SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'mlflow','statsforecast','httpx'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, timeout=60)
    assert "fetch" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_check_help_and_a_new_client_do_not_import_curl_cffi(tmp_path):
    code = (
        "import sys, fxcu\nfxcu.main(['check'], {'FXCU_DATA_DIR': sys.argv[1]})\n"
        "try: fxcu.main(['--help'])\nexcept SystemExit: pass\n"
        "fxcu.make_client(fxcu.Config.from_env({})).close()\n"  # curl_cffi loads on the first Yahoo request only
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'curl_cffi', 'httpx_curl_cffi'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=HERE, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


@pytest.mark.parametrize("args", [["track", "--backfill", "2024-13-01"], ["track", "8d"], ["track", "--last", "0"]])
def test_track_bad_arguments_are_one_line(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        fxcu.main(args, {})
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1


# The fault matrix (docs/RELIABILITY.md): the CLI driven end to end. Every row runs the real CLI
# (`python fxcu.py ...`, or `fxcu.main` in-process where retries would sleep) against Yahoo, FRED
# and mindicador played by a local HTTP server, then proves the exit code, the lines the user sees,
# that the warehouse and the MLflow database lost nothing, and that the FRED key is nowhere: not in
# any output, file under the data dir or cassette (the last two by `guarded`, in the builders).

TOO_MANY = "Too Many Requests\r\n"  # Yahoo's real 429 body: 19 bytes of text, not JSON (yahoo/ERRORS_AND_429.md)
FRED_BAD_KEY = (  # verbatim (fred/ERRORS.md): two spaces after each sentence, `\/` escapes
    '{"error_code":400,"error_message":"Bad Request.  The value for variable api_key is not registered.  '
    'Read https:\\/\\/fred.stlouisfed.org\\/docs\\/api\\/api_key.html for more information."}'
)


def yahoo_reply(name: str) -> Reply:
    """A real recorded Yahoo answer (status and body) from data/real/yahoo."""
    response = load_json("yahoo", name)["response"]
    return Reply(response["status"], response.get("body") or json.dumps(response["bodyJson"]))


# Yahoo: every answer that is not a price history.


@pytest.mark.slow
@pytest.mark.parametrize(
    ("reply", "seen"),
    [
        (Reply(429, TOO_MANY, "text/plain"), "HTTP 429 Too Many Requests: Too Many Requests"),
        (
            Reply(500, "<html><body>Internal Server Error</body></html>", "text/html"),
            "HTTP 500 Internal Server Error: <html><body>Internal Server Error</body></html>",
        ),
        (Reply(503, "Service Unavailable", "text/plain"), "HTTP 503 Service Unavailable: Service Unavailable"),
    ],
    ids=["429", "500", "503"],
)
def test_fault_yahoo_429_and_5xx_retry_then_fall_back(data_dir, inprocess, reply, seen):
    with (
        guarded(data_dir, unchanged=(fxcu.COPPER_CACHE,), db_unchanged=True) as guard,
        FakeSources(routes(clp=reply, hg=reply)) as api,
    ):
        result = guard(inprocess(["fetch"], fault_env(data_dir, api.url)))
    assert result.code == 0 and "Traceback" not in result.err
    # three tries each, then the backups; Yahoo's 429 text asks for a crumb: one cookie and getcrumb (refused, a 404 on
    # this server) and one retry of CLP=X on the first try, none for HG=F once a crumb was refused
    crumb = reply.status == 429
    assert api.count(YAHOO_CLP) == 3 + crumb and api.count(YAHOO_HG) == 3 and api.count(fxcu.YAHOO_CRUMB_PATH) == crumb
    assert ("WARNING fxcu: Yahoo refused a crumb (getcrumb answered HTTP 404)" in result.err) is crumb
    assert (
        f"WARNING fxcu: Retrying 127.0.0.1:{api.url.rsplit(':', 1)[1]}/v8/finance/chart/CLP=X "
        f"(try 1 of 3 failed: {seen})" in result.err
    )
    assert f"WARNING fxcu: Yahoo Finance USD/CLP fetch failed ({seen})" in result.err
    assert "WARNING fxcu: Using mindicador.cl backup for USD/CLP prices" in result.err
    assert "WARNING fxcu: Using FRED backup for copper prices (monthly, degraded)" in result.err
    assert re.search(r"^usdclp: mindicador, 4\d{3} rows, 2006-05-16 \.\. 2026-10-08$", result.out, re.M)
    assert f"  yahoo failed: {seen}" in result.out and "copper: fred, monthly, 343 rows" in result.out
    before, after = guard.before.dates[fxcu.USDCLP_CACHE], guard.after.dates[fxcu.USDCLP_CACHE]
    assert len(after) > len(before)  # mindicador's days merged in


@pytest.mark.slow
def test_fault_yahoo_timeout_is_bounded_and_falls_back(data_dir, inprocess):
    slow = dataclasses.replace(good_routes()[YAHOO_CLP], delay=5)
    with (
        guarded(data_dir, unchanged=(fxcu.COPPER_CACHE,), db_unchanged=True) as guard,
        FakeSources(routes(clp=slow, hg=slow)) as api,
    ):
        result = guard(inprocess(["fetch"], fault_env(data_dir, api.url, FXCU_TIMEOUT="0.3")))
    assert result.code == 0 and "Traceback" not in result.err
    assert result.seconds < 8  # 2 symbols x 3 tries x 0.3 s, then the backups answer at once
    assert "WARNING fxcu: Yahoo Finance USD/CLP fetch failed (timeout (no complete answer in 0.3 s))" in result.err
    assert "  yahoo failed: timeout (no complete answer in 0.3 s)" in result.out
    assert "usdclp: mindicador, " in result.out and "copper: fred, monthly, 343 rows" in result.out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("reply", "seen"),
    [
        # built in the test, not at collection: a missing data file fails a test, never the collection
        (lambda: Reply(200, json.dumps(real_usdclp_payload())[:5000]), "malformed JSON (Expecting"),
        (
            lambda: yahoo_reply("chart_404_not_found.json"),
            'HTTP 404 Not Found: {"code": "Not Found", "description": "No data found, symbol may be delisted"}',
        ),
        (
            lambda: yahoo_reply("chart_200_AAPL_empty_result.json"),
            "PayloadError: empty result: no bars (no 'timestamp')",
        ),
    ],
    ids=["garbage-json", "chart-error-404", "empty-result"],
)
def test_fault_yahoo_bad_body_is_not_retried_and_falls_back(data_dir, tmp_path, reply, seen):
    with (
        guarded(data_dir, unchanged=(fxcu.COPPER_CACHE,), db_unchanged=True) as guard,
        FakeSources(routes(clp=reply(), hg=reply())) as api,
    ):
        result = guard(cli(["fetch"], fault_env(data_dir, api.url), tmp_path))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert api.count(YAHOO_CLP) == 1 and api.count(YAHOO_HG) == 1  # a bad body is an answer: no retry
    assert f"WARNING fxcu: Yahoo Finance USD/CLP fetch failed ({seen}" in result.err
    assert f"WARNING fxcu: Yahoo Finance copper fetch failed ({seen}" in result.err
    assert f"  yahoo failed: {seen}" in result.out
    assert "usdclp: mindicador, " in result.out and "copper: fred, monthly, 343 rows" in result.out


# Hostile bodies: answers built to exhaust the parser, the memory or the clock.


@functools.cache
def gzip_bomb() -> bytes:
    """About 1 MB of gzip that inflates to 1 GiB: `[` then spaces then `]`, valid JSON if read whole."""

    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)  # 16: a gzip header
    block = b" " * 2**24
    parts = (
        [packer.compress(b"[")] + [packer.compress(block) for _ in range(64)] + [packer.compress(b"]"), packer.flush()]
    )
    return b"".join(parts)


RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(f'peak_rss_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def cli_rss(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> tuple[Outcome, float]:
    """`python fxcu.py ARGS` in a fresh process, and that process's peak RSS in MB.

    The peak is read by a small wrapper process (RUSAGE_CHILDREN): Linux carries a process's peak over fork and
    exec, so fxcu started straight from this (large) test process would report this process's peak as its own.
    """
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, sys.executable, str(HERE / "fxcu.py"), *args],
        env={**clean_environ(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    err, rss = proc.stderr.rsplit("peak_rss_kb=", 1)
    return Outcome(proc.returncode, proc.stdout, err, time.monotonic() - started), int(rss) / 1024


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["chrome", "off"])
@pytest.mark.parametrize(
    ("body", "seen"),
    [
        (Reply(body=gzip_bomb(), encoding="gzip"), "response body over 32 MB (decompressed)"),  # ~1 MB -> 1 GiB
        (Reply(body=b"[" + b" " * 40 * 2**20 + b"]"), "response body over 32 MB"),  # 40 MB, not compressed
    ],
    ids=["gzip-bomb", "40-MB-plain"],
)
def test_fault_oversized_body_is_cut_at_the_size_cap_and_falls_back(data_dir, tmp_path, transport, body, seen):
    """Over HTTPS, as Yahoo is reached: the 1 GiB bomb cost 2.3 GB of RSS on the Chrome transport (curl inflated it
    whole) and a decode error; now each transport reads to 32 MB and the source fails on the cap."""
    cafile, context = make_tls_pair(tmp_path)
    with (
        guarded(data_dir, unchanged=(fxcu.COPPER_CACHE,), db_unchanged=True) as guard,
        FakeSources(routes(clp=body, hg=body), tls=context) as api,
    ):
        env = fault_env(data_dir, api.url, FXCU_HTTP_IMPERSONATE=transport, SSL_CERT_FILE=str(cafile))
        result, rss = cli_rss(["fetch"], env, tmp_path)
        guard(result)
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert f"WARNING fxcu: Yahoo Finance USD/CLP fetch failed (PayloadError: {seen}" in result.err
    assert "usdclp: mindicador, " in result.out and "copper: fred, monthly, 343 rows" in result.out
    assert api.count(YAHOO_CLP) == 1  # an oversized body is an answer: no retry
    assert rss <= 400, rss  # the cap (32 MB) and a read, on top of what `fetch` imports; not 1 GB


@pytest.mark.slow
def test_fault_json_nested_100k_deep_is_a_failed_source(data_dir, tmp_path):
    """`[[[[...` 100,000 deep raised RecursionError out of json.loads: a traceback. Now Yahoo just failed."""
    deep = Reply(body="[" * 100_000 + "]" * 100_000)
    with (
        guarded(data_dir, unchanged=(fxcu.COPPER_CACHE,), db_unchanged=True) as guard,
        FakeSources(routes(clp=deep, hg=deep)) as api,
    ):
        result = guard(cli(["fetch"], fault_env(data_dir, api.url), tmp_path))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert (
        "WARNING fxcu: Yahoo Finance USD/CLP fetch failed (PayloadError: malformed JSON (nested too deeply))"
        in result.err
    )
    assert "usdclp: mindicador, " in result.out and "copper: fred, monthly, 343 rows" in result.out
    assert api.count(YAHOO_CLP) == 1 and api.count(YAHOO_HG) == 1


def test_fault_deep_json_error_body_is_quoted_not_a_crash():
    deep = "[" * 100_000 + "]" * 100_000
    response = httpx.Response(503, text=deep, request=httpx.Request("GET", "http://x"))
    line = fxcu.describe_error(httpx.HTTPStatusError("", request=response.request, response=response), None)
    assert line.startswith("HTTP 503 Service Unavailable: [[[[") and len(line) < 260


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["chrome", "off"])
@pytest.mark.parametrize("slow", ["body", "headers"])
def test_fault_trickling_server_cannot_hold_a_run_past_the_network_budget(data_dir, tmp_path, transport, slow):
    """One byte a second, of the body or of the headers, never trips a 2 s read timeout; each request's deadline
    (FXCU_TIMEOUT) and then the 6 s budget cut it, on both transports, over HTTPS."""
    cafile, context = make_tls_pair(tmp_path)
    trickle = dataclasses.replace(good_routes()[YAHOO_CLP], trickle=1.0, chunk=1, slow_headers=slow == "headers")
    with (
        guarded(data_dir, unchanged=(fxcu.USDCLP_CACHE, fxcu.COPPER_CACHE), db_unchanged=True) as guard,
        FakeSources(routes(clp=trickle, hg=trickle, mindicador=trickle, fred=trickle), tls=context) as api,
    ):
        env = fault_env(
            data_dir,
            api.url,
            FXCU_TIMEOUT="2",
            FXCU_NETWORK_BUDGET="6",
            FXCU_HTTP_IMPERSONATE=transport,
            SSL_CERT_FILE=str(cafile),
        )
        result = guard(cli(["fetch"], env, tmp_path))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert "WARNING fxcu: Yahoo Finance USD/CLP fetch failed (timeout (" in result.err
    assert "(try 1 of 3 failed: timeout (no complete answer in 2 s))" in result.err  # the request's own deadline
    assert "usdclp: cache, 4664 rows" in result.out and "copper: cache, 5993 rows" in result.out
    # three times the 6 s budget (a loaded machine, the interpreter's start): uncut, a trickled answer takes minutes
    assert result.seconds < 3 * 6


# FRED: the copper backup.


@pytest.mark.slow
def test_fault_fred_bad_key_uses_the_copper_cache(data_dir, tmp_path):
    bad_key = Reply(400, FRED_BAD_KEY, "application/json; charset=UTF-8")
    with (
        guarded(data_dir, unchanged=(fxcu.COPPER_CACHE,), db_unchanged=True) as guard,
        FakeSources(routes(hg=yahoo_reply("chart_404_not_found.json"), fred=bad_key)) as api,
    ):
        result = guard(cli(["fetch"], fault_env(data_dir, api.url), tmp_path))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert [q["api_key"] for q in api.queries(FRED)] == [FRED_KEY]  # the key was sent, once (400 is not retried)
    seen = (
        "HTTP 400 Bad Request: Bad Request.  The value for variable api_key is not registered.  "
        "Read https://fred.stlouisfed.org/docs/api/api_key.html"
    )
    assert f"WARNING fxcu: FRED copper fetch failed ({seen}" in result.err
    assert "WARNING fxcu: Both sources failed, using 5993 cached copper data points" in result.err
    assert "copper: cache, 5993 rows, 2000-08-30 .. 2024-07-15" in result.out and f"  fred failed: {seen}" in result.out
    assert "usdclp: yahoo, 4664 rows" in result.out


@pytest.mark.slow
@pytest.mark.parametrize("dots", [3, 343], ids=["last-3-months", "every-value"])
def test_fault_fred_dot_values_are_dropped(data_dir, tmp_path, dots):
    body = fred_pcoppusdm_body()
    rows = body["observations"]
    dotted = {
        **body,
        "observations": rows[: len(rows) - dots] + [{**r, "value": "."} for r in rows[len(rows) - dots :]],
    }
    with (
        guarded(data_dir, unchanged=(fxcu.COPPER_CACHE,), db_unchanged=True) as guard,
        FakeSources(routes(hg=yahoo_reply("chart_404_not_found.json"), fred=Reply(200, dotted))) as api,
    ):
        result = guard(cli(["fetch"], fault_env(data_dir, api.url), tmp_path))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert api.count(FRED) == 1
    if dots == 3:
        assert "copper: fred, monthly, 340 rows, 1998-01-01 .. 2026-04-01" in result.out
        assert "  fred: removed 3 null or non-positive bars (2026-05-01, 2026-06-01, 2026-07-01)" in result.out
    else:
        assert "WARNING fxcu: FRED copper fetch failed (no rows)" in result.err
        assert (
            "copper: cache, 5993 rows" in result.out and "  fred: removed 343 null or non-positive bars" in result.out
        )


@pytest.mark.slow
def test_fault_fred_5xx_echoing_the_key_run_redacts_it_everywhere(data_dir, inprocess, shared_models):
    """A proxy page echoing the request line (api_key too) flows into logs, notes, the report and MLflow: redacted."""
    page = Reply(503, "<html><body>503 Service Unavailable: upstream timed out", "text/html", echo=True)
    with (
        guarded(data_dir, unchanged=(fxcu.COPPER_CACHE,), runs_added=1) as guard,
        FakeSources(routes(hg=yahoo_reply("chart_404_not_found.json"), fred=page)) as api,
    ):
        result = guard(inprocess(["run", "7d", "--skip-email"], fault_env(data_dir, api.url)))
    assert result.code == 0, result.err
    assert [q["api_key"] for q in api.queries(FRED)] == [FRED_KEY] * 3  # sent three times, never shown
    assert (
        "/fred/series/observations (try 2 of 3 failed: HTTP 503 Service Unavailable: <html><body>503 Service "
        "Unavailable: upstream timed out for GET /fred/series/observations?series_id=PCOPPUSDM&api_key=***"
        in result.err
    )
    assert "sources: usdclp yahoo, copper cache (daily)" in result.out and "; tracked: yes, run " in result.out
    report = next((data_dir / "reports").glob("forecast_7d_*.md")).read_text()
    assert "- fred failed: HTTP 503 Service Unavailable: " in report and "api_key=***" in report


# mindicador, and everything at once.


@pytest.mark.slow
def test_fault_mindicador_down_after_yahoo_failed_uses_the_usdclp_cache(data_dir, inprocess):
    with (
        guarded(data_dir, unchanged=(fxcu.USDCLP_CACHE,), db_unchanged=True) as guard,
        FakeSources(routes(clp=yahoo_reply("chart_200_AAPL_empty_result.json"))) as api,
    ):
        result = guard(inprocess(["fetch"], fault_env(data_dir, api.url, FXCU_MINDICADOR_URL=closed_url())))
    assert result.code == 0 and "Traceback" not in result.err
    refused = "connection error (ConnectError: [Errno 111] Connection refused)"
    # a refused connection is said at INFO (the network may be down); what it costs, the cache, at WARNING
    assert f"INFO fxcu: mindicador.cl USD/CLP fetch failed ({refused})" in result.err
    assert "WARNING fxcu: Both sources failed, using 4664 cached USD/CLP data points" in result.err
    assert "No network" not in result.err  # Yahoo answered: the network is up
    assert (
        "usdclp: cache, 4664 rows, 2006-05-16 .. 2024-07-15" in result.out
        and f"  mindicador failed: {refused}" in result.out
    )
    assert "copper: yahoo, " in result.out
    before, after = guard.before.dates[fxcu.COPPER_CACHE], guard.after.dates[fxcu.COPPER_CACHE]
    assert len(after) > len(before)  # HG=F 2024-2026 merged in


@pytest.mark.slow
def test_fault_all_sources_down_with_a_cache_run_forecasts_from_it(data_dir, inprocess, shared_models):
    with guarded(data_dir, unchanged=(fxcu.USDCLP_CACHE, fxcu.COPPER_CACHE), runs_added=1) as guard:
        down = closed_url()
        env = fault_env(data_dir, down)
        result = guard(inprocess(["run", "7d", "--skip-email"], env))
    assert result.code == 0, result.err
    assert "WARNING fxcu: Both sources failed, using 4664 cached USD/CLP data points" in result.err
    assert "WARNING fxcu: Both sources failed, using 5993 cached copper data points" in result.err
    assert "sources: usdclp cache, copper cache (daily)" in result.out and "degraded: cached data" in result.out
    assert "; tracked: yes, run " in result.out and list((data_dir / "reports").glob("forecast_7d_*.md"))


@pytest.mark.parametrize("args", [["fetch"], ["run", "7d"]], ids=["fetch", "run"])
def test_fault_all_sources_down_without_a_cache_is_one_line_exit_1(tmp_path, inprocess, args):
    data = tmp_path / "empty"
    # the three sources share one closed port here, so Yahoo's curl mount would carry all of them: the wording
    # asserted is httpx's (curl's own is checked in test_browser_transport_refused_connection_is_a_connect_error)
    result = inprocess(args, fault_env(data, closed_url(), FXCU_HTTP_IMPERSONATE="off"))
    assert result.code == 1 and "Traceback" not in result.err
    refused = "connection error (ConnectError: [Errno 111] Connection refused)"
    why = f"yahoo: {refused}; mindicador: {refused}; cache: no cache at {data / 'warehouse' / fxcu.USDCLP_CACHE}"
    if args == ["fetch"]:
        assert f"usdclp: unavailable ({why})" in result.out.splitlines()
        assert result.messages == []
    else:
        assert result.messages == [f"fxcu: no usable USD/CLP data: {why}"]
        status = json.loads((data / "status.json").read_text())["7d"]
        assert (
            status["ok"] is False and status["tracked"] is False and status["error"] == f"no usable USD/CLP data: {why}"
        )
    assert f"ERROR fxcu: All USD/CLP sources failed: {why}" in result.err
    assert not (data / "warehouse" / fxcu.USDCLP_CACHE).exists() and mlflow_runs(data) == 0
    assert_key_nowhere(data, result)


# The warehouse and the MLflow database.


@pytest.mark.slow
def test_fault_corrupt_warehouse_is_set_aside_and_run_continues_live(data_dir, tmp_path):
    garbage = b"PAR1\x00\x00 half-written by a crash PAR1"
    (data_dir / "warehouse" / fxcu.USDCLP_CACHE).write_bytes(garbage)
    with guarded(data_dir, runs_added=1) as guard, FakeSources(good_routes()) as api:
        result = guard(cli(["run", "7d", "--skip-email"], fault_env(data_dir, api.url), tmp_path))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert re.search(
        r"ERROR fxcu: Corrupt cache usdclp\.parquet \(\w+\): moved to usdclp\.parquet\.corrupt-\d{8}T\d{6}$",
        result.err,
        re.M,
    )
    assert api.queries(YAHOO_CLP)[0]["range"] == "max"  # the whole history again, from the live source
    assert "sources: usdclp yahoo, copper yahoo (daily)" in result.out and "; tracked: yes, run " in result.out
    aside = list((data_dir / "warehouse").glob("usdclp.parquet.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage  # kept for a post-mortem, never overwritten
    assert pl.read_parquet(data_dir / "warehouse" / fxcu.USDCLP_CACHE).height == 4664


@pytest.mark.slow
@pytest.mark.parametrize("how", ["locked", "under-a-regular-file"])
def test_fault_mlflow_unavailable_run_exits_0_with_report_not_tracked(data_dir, tmp_path, how):
    config = fxcu.Config.from_env(run_env(data_dir))
    fxcu.log_run(config, record("7d", 20.0), environ={})  # one run already recorded, which must survive
    with guarded(data_dir) as guard:  # the earlier run is still there, nothing half-written
        extra = {"FXCU_TRACKING_TIMEOUT": "3"}
        if how == "under-a-regular-file":
            extra["MLFLOW_TRACKING_URI"] = f"sqlite:///{data_dir / 'warehouse' / fxcu.USDCLP_CACHE / 'mlflow.db'}"
        lock = sqlite3.connect(data_dir / "mlflow" / "mlflow.db", isolation_level=None)
        try:
            if how == "locked":
                lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database for the whole run
            with FakeSources(good_routes()) as api:
                result = guard(cli(["run", "7d", "--skip-email"], fault_env(data_dir, api.url, **extra), tmp_path))
        finally:
            if lock.in_transaction:
                lock.rollback()
            lock.close()
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert re.search(r"^  report: \S+forecast_7d_\d{4}-\d\d-\d\d_\d{4}\.md; tracked: no$", result.out, re.M)
    assert re.search(
        r"ERROR fxcu: MLflow tracking failed \(.+\): the forecast and its report are kept$", result.err, re.M
    )
    assert list((data_dir / "reports").glob("forecast_7d_*.md")) and list(
        (data_dir / "reports").glob("forecast_7d_*.png")
    )
    status = json.loads((data_dir / "status.json").read_text())["7d"]
    assert status["ok"] and not status["tracked"] and status["tracking_error"]


# Permissions and bad files: unreadable is not corrupt, wrong types are converted or set aside.


@functools.cache
def unprivileged() -> tuple[str, ...] | None:
    """A command prefix under which file permissions bind (root without CAP_DAC_OVERRIDE and friends), or None.

    A real non-root user cannot run this interpreter here (pyenv's Python lives under /root, mode
    0700), so root drops the capabilities that let it ignore permissions: the kernel then checks
    the same mode bits it checks for any user.
    """
    if os.geteuid() != 0:
        return ()
    drop = "-dac_override,-dac_read_search,-fowner"
    prefix = ("setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--")
    if not shutil.which("setpriv"):
        return None
    folder = Path(tempfile.mkdtemp())
    try:
        (folder / "secret").write_text("x")
        (folder / "secret").chmod(0)
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", f"open({str(folder / 'secret')!r}).read()"],
            capture_output=True,
            check=False,
        )
        return prefix if probe.returncode != 0 else None
    finally:
        shutil.rmtree(folder)


def cli_unprivileged(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> Outcome:
    prefix = unprivileged()
    if prefix is None:
        pytest.skip(
            "cannot run without root's power over file permissions (no setpriv, or dropping capabilities had no effect)"
        )
    started = time.monotonic()
    proc = subprocess.run(
        [*prefix, sys.executable, str(HERE / "fxcu.py"), *args],
        env={**clean_environ(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def chmod_tree(folder: Path, *, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755 if writable else 0o555)
        else:
            path.chmod(0o644 if writable else 0o444)


@pytest.mark.slow
def test_fault_unreadable_cache_is_not_corrupt_and_never_replaced(data_dir, tmp_path):
    """A permission error on usdclp.parquet renamed a good cache aside for good; now it stays, untouched."""
    cache = data_dir / "warehouse" / fxcu.USDCLP_CACHE
    with guarded(data_dir, unchanged=(fxcu.USDCLP_CACHE,), db_unchanged=True) as guard:
        cache.chmod(0)
        try:
            with FakeSources(good_routes()) as api:
                result = guard(cli_unprivileged(["fetch"], fault_env(data_dir, api.url), tmp_path))
        finally:
            cache.chmod(0o644)
    assert "Traceback" not in result.err, result.err
    assert "ERROR fxcu: Cache usdclp.parquet unreadable (Permission denied): left in place, not replaced" in result.err
    assert (
        "ERROR fxcu: Warehouse usdclp.parquet not updated (Permission denied): using the fetched data for this run only"
        in result.err
    )
    assert result.code == 0 and "usdclp: yahoo, 4664 rows" in result.out
    assert not list(cache.parent.glob("*.corrupt-*"))


@pytest.mark.slow
def test_fault_read_only_data_dir_serves_the_forecast_with_one_line_errors(data_dir, tmp_path):
    """Every write fails: the forecast is still printed, each failure is one log line, nothing on disk changes."""
    (data_dir / ".run.lock").touch()
    (data_dir / "warehouse" / ".lock").touch()
    with guarded(data_dir, unchanged=(fxcu.USDCLP_CACHE, fxcu.COPPER_CACHE), db_unchanged=True) as guard:
        listing = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*"))
        chmod_tree(data_dir, writable=False)
        try:
            with FakeSources(good_routes()) as api:
                env = fault_env(data_dir, api.url)
                fetch = guard(cli_unprivileged(["fetch"], env, tmp_path))
                run = guard(cli_unprivileged(["run", "7d", "--skip-email"], env, tmp_path))
                check = guard(cli_unprivileged(["check"], env, tmp_path))
        finally:
            chmod_tree(data_dir, writable=True)
    for result in (fetch, run, check):
        assert "Traceback" not in result.err + result.out, result.err
    assert (
        fetch.code == 0
        and "usdclp: yahoo, 4664 rows" in fetch.out
        and "  warehouse not updated (Permission denied)" in fetch.out
    )
    assert run.code == 1 and run.out.startswith("USD/CLP 7d: last ") and "report: NOT WRITTEN; tracked: no" in run.out
    assert "ERROR fxcu: Report for 7d could not be written (Permission denied)" in run.err
    assert "ERROR fxcu: MLflow tracking failed (PermissionError" in run.err
    assert run.messages == []  # every failure is a log record: no stray traceback or print
    assert check.code in (1, 2)
    assert (
        sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*")) == listing
    )  # nothing created, no temp file left


@pytest.mark.slow
@pytest.mark.parametrize("convertible", [True, False], ids=["strings-that-convert", "not-a-number"])
def test_fault_wrong_column_types_are_converted_or_set_aside_never_persisted(data_dir, tmp_path, convertible):
    """A cache whose date and close were strings was a traceback, and `fetch` then persisted the strings."""
    cache = data_dir / "warehouse" / fxcu.USDCLP_CACHE
    good = pl.read_parquet(cache)
    bad = good.with_columns(pl.col(fxcu.DATE).cast(pl.String), pl.col(fxcu.CLOSE).cast(pl.String))
    if not convertible:
        bad = bad.with_columns(
            pl.when(pl.int_range(pl.len()) == 10).then(pl.lit("n/a")).otherwise(pl.col(fxcu.CLOSE)).alias(fxcu.CLOSE)
        )
    bad.write_parquet(cache)
    with FakeSources(good_routes()) as api:
        result = cli(["fetch"], fault_env(data_dir, api.url), tmp_path)
    assert result.code == 0 and "Traceback" not in result.err, result.err
    stored = pl.read_parquet(cache)
    assert stored.schema == fxcu.cache_schema()
    assert set(good[fxcu.DATE]) <= set(stored[fxcu.DATE])
    if convertible:
        assert (
            "WARNING fxcu: Cache usdclp.parquet had columns of the wrong type (date String, close String): converted"
            in result.err
        )
        assert "period1" in api.queries(YAHOO_CLP)[0]  # the converted cache counts: an incremental fetch
    else:
        assert (
            "ERROR fxcu: Corrupt cache usdclp.parquet (InvalidOperationError): moved to usdclp.parquet.corrupt-"
            in result.err
        )
        assert len(list(cache.parent.glob("usdclp.parquet.corrupt-*"))) == 1


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("[]", "WARNING  run 7d: never run"),
        ('{"7d": "x"}', "WARNING  run 7d: status.json entry malformed (no valid time); the next run rewrites it"),
        (
            '{"7d": {"ok": true, "tracked": true}}',
            "WARNING  run 7d: status.json entry malformed (no valid time); the next run rewrites it",
        ),
        (
            '{"7d": {"time": "2026-01-01T00:00:00", "ok": true}}',
            "WARNING  run 7d: status.json entry malformed (no valid time); the next run rewrites it",
        ),
        (
            '{"7d": {"time": 5, "degraded": 7}, '
            '"15d": {"time": "2026-01-01T00:00:00+00:00", "ok": true, "tracked": true, "degraded": 3}}',
            "WARNING  run 7d: status.json entry malformed (no valid time); the next run rewrites it",
        ),
        ("[" * 100_000, "WARNING  run 7d: never run"),
    ],
    ids=["list", "string-entry", "no-time", "naive-time", "odd-types", "deep"],
)
def test_fault_malformed_status_json_is_handled_by_check_and_rewritten_by_run(data_dir, body, line, capsys):
    (data_dir / "status.json").write_text(body)
    code = fxcu.main(["check"], run_env(data_dir))
    out = capsys.readouterr().out
    assert code in (1, 2) and line in out.splitlines()
    # a real run rewrites it: one that fails fast (400 days of history) and records why, as every run does
    fxcu.write_parquet_atomic(provenance(real_usdclp().tail(400), "yahoo"), data_dir / "warehouse" / fxcu.USDCLP_CACHE)
    assert fxcu.main(["run", "7d", "--offline"], run_env(data_dir)) == 1
    status = json.loads((data_dir / "status.json").read_text())
    assert isinstance(status, dict) and status["7d"]["ok"] is False and "too few" in status["7d"]["error"]
    assert datetime.fromisoformat(status["7d"]["time"]).tzinfo is not None
    if "15d" in body:  # the valid entry beside the malformed one is kept
        assert status["15d"] == {"time": "2026-01-01T00:00:00+00:00", "ok": True, "tracked": True, "degraded": 3}
    capsys.readouterr()
    fxcu.main(["check"], run_env(data_dir))
    assert line not in capsys.readouterr().out.splitlines()


# Bad input: nothing is fetched, nothing is written.


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "extra", "code", "line"),
    [
        (
            ["run", "8d"],
            {},
            2,
            "fxcu run: error: argument {7d,15d,30d,90d,all}: unknown horizon '8d': "
            "choose one of 7d, 15d, 30d, 90d (see fxcu run --help)",
        ),
        (
            ["fetch"],
            {"FXCU_OFFLINE": "maybe"},
            2,
            "fxcu: FXCU_OFFLINE='maybe' is not a boolean (use 1/0, true/false, on/off)",
        ),
        (["fetch"], {"FXCU_TIMEOUT": "-1"}, 2, "fxcu: FXCU_TIMEOUT='-1' must be positive"),
        (
            ["fetch"],
            {"FXCU_TIMEOUT": "inf"},
            2,
            "fxcu: FXCU_TIMEOUT='inf' is too large (at most 1000000)",
        ),  # was a traceback
        (
            ["run", "7d"],
            {"FXCU_MAX_AGE_DAYS": "1e400"},
            2,
            "fxcu: FXCU_MAX_AGE_DAYS='1e400' is too large (at most 1000000)",
        ),  # was a traceback
        (["fetch"], {"FXCU_DATA_DIR": "{file}"}, 2, "fxcu: FXCU_DATA_DIR {file} is not a directory"),
        (["run", "7d"], {"FXCU_DATA_DIR": "{file}"}, 2, "fxcu: FXCU_DATA_DIR {file} is not a directory"),
    ],
    ids=[
        "unknown-horizon",
        "offline-maybe",
        "timeout-negative",
        "timeout-inf",
        "max-age-overflow",
        "data-dir-is-a-file-fetch",
        "data-dir-is-a-file-run",
    ],
)
def test_fault_bad_input_is_one_line(data_dir, tmp_path, args, extra, code, line):
    file = tmp_path / "not-a-dir"
    file.write_text("a regular file\n")
    extra = {k: v.replace("{file}", str(file)) for k, v in extra.items()}
    line = line.replace("{file}", str(file))
    with (
        guarded(data_dir, unchanged=(fxcu.USDCLP_CACHE, fxcu.COPPER_CACHE), db_unchanged=True) as guard,
        FakeSources(good_routes()) as api,
    ):
        result = guard(cli(args, fault_env(data_dir, api.url, **extra), tmp_path))
    assert result.code == code and "Traceback" not in result.err, result.err
    assert result.messages == [line]  # one line, no usage block
    assert result.out == "" and api.requests == []
    assert file.read_text() == "a regular file\n"
    assert not (data_dir / "status.json").exists()


@pytest.mark.slow
def test_fault_malformed_source_url_is_a_source_failure(data_dir, tmp_path):
    """FXCU_YAHOO_URL=http://[::1 made httpx raise InvalidURL, which escaped as a traceback; now Yahoo just failed."""
    with (
        guarded(data_dir, unchanged=(fxcu.COPPER_CACHE,), db_unchanged=True) as guard,
        FakeSources(good_routes()) as api,
    ):
        result = guard(cli(["fetch"], fault_env(data_dir, api.url, FXCU_YAHOO_URL="http://[::1"), tmp_path))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert "WARNING fxcu: Yahoo Finance USD/CLP fetch failed (InvalidURL: Invalid port: ':1')" in result.err
    assert "usdclp: mindicador, " in result.out and "copper: fred, monthly, 343 rows" in result.out
    assert api.count(YAHOO_CLP) == 0 and api.count(MINDICADOR) and api.count(FRED) == 1


# Hostile sources (issue 10): answers that are well-formed but wrong. Each row is a failed source
# (the next one answers), says why in the log, in stdout and in `degraded`, and stores nothing wrong.


FROZEN_NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)  # "now" of the in-process commands that name tomorrow or an age


@pytest.fixture
def frozen_clock(monkeypatch) -> datetime:
    """fxcu's clock stopped at FROZEN_NOW, so a test that crosses midnight sees the same "tomorrow" as fxcu."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return FROZEN_NOW.astimezone(tz) if tz else FROZEN_NOW.replace(tzinfo=None)

    monkeypatch.setattr(fxcu, "datetime", Frozen)
    return FROZEN_NOW


@pytest.fixture
def hostile_dir(tmp_path, migrated_db, frozen_clock) -> Path:
    """The real warehouse with USD/CLP cut at CACHE_END (the hostile answer brings new days), a migrated MLflow db;
    fxcu's clock frozen (`frozen_clock`)."""
    folder = tmp_path / "data"
    write_real_warehouse(folder)
    path = folder / "warehouse" / fxcu.USDCLP_CACHE
    fxcu.write_parquet_atomic(pl.read_parquet(path).filter(pl.col(fxcu.DATE) <= CACHE_END), path)
    (folder / "mlflow").mkdir(parents=True)
    shutil.copy(migrated_db, folder / "mlflow" / "mlflow.db")
    return folder


TOMORROW = FROZEN_NOW.date() + timedelta(days=1)  # fxcu's tomorrow under `frozen_clock`, never the test's clock
SEEN = {  # mode -> the reason fxcu logs, prints and records (its Finding sentence)
    "1e308": "1 closes outside 300..2000 CLP per USD (last 1e+308 on 2024-07-15)",
    "infinity": "1 non-finite closes (first on 2024-07-15)",
    "last-x10": "1 closes outside 300..2000 CLP per USD (last 8989.52 on 2024-07-15)",
    "last-three-1.0": "3 closes outside 300..2000 CLP per USD (last 1 on 2024-07-15)",
    "copper-under-clp": (
        "wrong symbol: asked for CLP=X, meta says 'HG=F'; wrong currency: expected CLP, meta says 'USD'"
    ),
    "duplicated+50%": "14 dates sent twice with closes 41% (log) apart",
    "dated-2099": f"1 bars dated after {TOMORROW} (last 2099-01-05)",
    "year-33658": f"1 bars dated after {TOMORROW} (last +33658-09-27)",
    "negative-year": "1 bars dated before 1984-01-01 (first -0002-11-26)",
    "last+50%": "newest bars jump 39% (log) on 2024-07-15 to 1348.43, over the credible 16%",
}


def assert_nothing_implausible_stored(data_dir: Path) -> None:
    stored = pl.read_parquet(data_dir / "warehouse" / fxcu.USDCLP_CACHE)
    assert stored[fxcu.CLOSE].is_between(300, 2000).all() and stored[fxcu.DATE].max() <= TOMORROW
    assert stored[fxcu.DATE].min() >= date(1984, 1, 1) and stored[fxcu.CLOSE].null_count() == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(SEEN))
def test_hostile_yahoo_answer_is_a_failed_source_and_never_stored(hostile_dir, inprocess, mode):
    with (
        guarded(hostile_dir, db_unchanged=True) as guard,  # copper grew: HG=F answered well
        FakeSources(routes(clp=Reply(body=json.dumps(hostile_chart(mode))))) as api,
    ):
        result = guard(inprocess(["fetch"], fault_env(hostile_dir, api.url)))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert (
        api.count(YAHOO_CLP) == 1 and api.count(MINDICADOR) == 3
    )  # refused once (no retry), then mindicador 2024..2026
    assert f"WARNING fxcu: Yahoo Finance USD/CLP fetch failed ({SEEN[mode]})" in result.err
    assert re.search(r"^usdclp: mindicador, \d+ rows, 2006-05-16 \.\. 2026-10-08$", result.out, re.M)
    assert (
        f"  yahoo failed: {SEEN[mode]}" in result.out
        and f"  degraded: rejected yahoo USD/CLP: {SEEN[mode]}" in result.out
    )
    before, after = guard.before, guard.after
    stored = pl.read_parquet(hostile_dir / "warehouse" / fxcu.USDCLP_CACHE)
    assert (stored.filter(pl.col(fxcu.DATE) > CACHE_END)[fxcu.SOURCE] == "mindicador").all()  # not one Yahoo bar merged
    assert stored.filter(pl.col(fxcu.DATE) <= CACHE_END).equals(
        pl.read_parquet(io.BytesIO(before.files[fxcu.USDCLP_CACHE]))
    )
    assert len(after.dates[fxcu.USDCLP_CACHE]) == len(before.dates[fxcu.USDCLP_CACHE]) + 31
    assert_nothing_implausible_stored(hostile_dir)


@pytest.mark.slow
def test_hostile_copper_chart_under_clpx_is_refused_on_a_fresh_install(tmp_path, inprocess, frozen_clock):
    """No cache and no seed: the meta check alone stops copper's 5.8 becoming the peso's price."""
    data = tmp_path / "empty"
    with FakeSources(routes(clp=Reply(body=json.dumps(chart_payload(real_copper()))))) as api:
        result = inprocess(["fetch"], fault_env(data, api.url))
    assert (
        result.code == 0
        and "Yahoo Finance USD/CLP fetch failed (wrong symbol: asked for CLP=X, meta says 'HG=F'" in result.err
    )
    assert "usdclp: mindicador, 31 rows, 2026-08-26 .. 2026-10-08" in result.out
    assert_nothing_implausible_stored(data)


@pytest.mark.slow
def test_hostile_jump_confirmed_by_the_next_source_is_accepted(hostile_dir, inprocess):
    """A +50% last bar that mindicador shows too is real: Yahoo's answer is stored, not refused."""
    body = hostile_chart("last+50%")
    quote = body["chart"]["result"][0]
    day = fxcu.parse_yahoo_chart(body).tail(1).row(0, named=True)  # 2024-07-15 at 1348.43
    fecha = datetime.combine(day[fxcu.DATE], datetime.min.time()).replace(hour=4).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    mindicador = {
        **load_json("mindicador", "dolar_200_last31.json"),
        "serie": [{"fecha": fecha, "valor": round(day[fxcu.CLOSE] * 1.01, 2)}],
    }
    assert quote["indicators"]["quote"][0]["close"][-1] == day[fxcu.CLOSE]
    with FakeSources(routes(clp=Reply(body=json.dumps(body)), mindicador=Reply(body=json.dumps(mindicador)))) as api:
        result = inprocess(["fetch"], fault_env(hostile_dir, api.url))
    assert (
        result.code == 0
        and "Yahoo Finance USD/CLP: the jump from 2024-07-15 is confirmed by mindicador.cl" in result.err
    )
    assert re.search(r"^usdclp: yahoo, \d+ rows, 2006-05-16 \.\. 2024-07-15$", result.out, re.M)
    assert "  yahoo: jump from 2024-07-15 confirmed by mindicador" in result.out and "rejected" not in result.out
    stored = pl.read_parquet(hostile_dir / "warehouse" / fxcu.USDCLP_CACHE)
    assert stored.filter(pl.col(fxcu.DATE) == day[fxcu.DATE])[fxcu.CLOSE].item() == day[fxcu.CLOSE]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["infinity", "year-33658", "negative-year"])
def test_bad_values_run_goes_on_records_why_and_the_next_run_is_clean(hostile_dir, inprocess, mode, shared_models):
    """Section 2's bad values: no crash, no exit 1, status.json says what happened, and the next run works."""
    with FakeSources(routes(clp=Reply(body=json.dumps(hostile_chart(mode))))) as api:
        first = inprocess(["run", "7d", "--skip-email"], fault_env(hostile_dir, api.url))
    assert first.code == 0 and "Traceback" not in first.err, first.err
    assert (
        "sources: usdclp mindicador, copper yahoo (daily)" in first.out
        and f"rejected yahoo USD/CLP: {SEEN[mode]}" in first.out
    )
    status = json.loads((hostile_dir / "status.json").read_text())["7d"]
    assert status["ok"] and "rejected source" in status["degraded"]
    assert any(
        f"rejected yahoo USD/CLP: {SEEN[mode]}" in line
        for line in (hostile_dir / "reports").glob("*.md").__next__().read_text().splitlines()
    )
    with FakeSources(good_routes()) as api:
        second = inprocess(["run", "7d", "--skip-email"], fault_env(hostile_dir, api.url))
    assert (
        second.code == 0
        and "sources: usdclp yahoo, copper yahoo (daily)" in second.out
        and "rejected" not in second.out
    )
    status = json.loads((hostile_dir / "status.json").read_text())["7d"]
    assert status["ok"] and status["tracked"] and "rejected source" not in status["degraded"]
    assert_nothing_implausible_stored(hostile_dir)
    assert mlflow_runs(hostile_dir) == 2


@pytest.mark.slow
def test_poisoned_warehouse_is_repaired_not_served(data_dir, inprocess, capsys):
    """A warehouse an older release wrote from bad answers: a 2099 bar at 1e308, the last 3 days +50%, a null close."""
    path = data_dir / "warehouse" / fxcu.USDCLP_CACHE
    real = pl.read_parquet(path)
    poisoned = pl.concat(
        [
            real.head(real.height - 3).with_columns(
                pl.when(pl.int_range(pl.len()) == 1000).then(None).otherwise(pl.col(fxcu.CLOSE)).alias(fxcu.CLOSE)
            ),
            real.tail(3).with_columns(pl.col(fxcu.CLOSE) * 1.5),
            real.tail(1).with_columns(pl.lit(date(2099, 1, 5)).alias(fxcu.DATE), pl.lit(1e308).alias(fxcu.CLOSE)),
        ]
    )
    fxcu.write_parquet_atomic(poisoned, path)
    assert fxcu.main(["check"], fault_env(data_dir, closed_url())) == 2
    assert (
        "CRITICAL usdclp data: last 2099-01-05 is in the future: the file holds implausible rows"
        in capsys.readouterr().out
    )
    offline = inprocess(["fetch", "--offline"], fault_env(data_dir, closed_url()))
    assert (
        offline.code == 0
        and "WARNING fxcu: Cache usdclp.parquet held rows that cannot be right (1 rows null closes; 1 rows dated after"
        in offline.err
    )
    assert (
        f"usdclp: cache, {real.height - 4} rows, 2006-05-16 .. 2024-07-10" in offline.out
        and "  degraded: repaired cache: usdclp.parquet dropped " in offline.out
    )
    repaired = pl.read_parquet(path)
    assert repaired.equals(real.head(real.height - 3).filter(pl.int_range(pl.len()) != 1000))
    assert pl.read_parquet(next(path.parent.glob("usdclp.parquet.rejected-*"))).height == 5  # kept for a post-mortem
    # still CRITICAL: 2024 is old at the default stale age (fault_env accepts any age, and check
    # follows it); not "future"
    assert fxcu.main(["check"], fault_env(data_dir, closed_url(), FXCU_MAX_AGE_DAYS="5")) == 2
    assert re.search(r"usdclp data: \d+ days old \(last 2024-07-10, ", capsys.readouterr().out)
    with FakeSources(good_routes()) as api:
        live = inprocess(["fetch"], fault_env(data_dir, api.url))
    assert live.code == 0 and "usdclp: yahoo, 4664 rows, 2006-05-16 .. 2024-07-15" in live.out
    assert (
        pl.read_parquet(path).select(fxcu.DATE, fxcu.CLOSE).equals(real.select(fxcu.DATE, fxcu.CLOSE))
    )  # every dropped day back, real


@pytest.mark.slow
def test_stale_sources_without_a_cache_serve_the_freshest_loudly(tmp_path, inprocess, frozen_clock):
    """Every source answers with old data and there is no cache: the freshest is served, said to be stale, exit 0."""
    data = tmp_path / "empty"
    with FakeSources(good_routes()) as api:
        result = inprocess(["fetch"], fault_env(data, api.url, FXCU_MAX_AGE_DAYS="5"))
    age = (frozen_clock.date() - date(2026, 10, 8)).days
    assert result.code == 0 and "Traceback" not in result.err
    assert "usdclp: mindicador, 31 rows, 2026-08-26 .. 2026-10-08" in result.out
    assert f"  degraded: stale: USD/CLP last date 2026-10-08, {age} days old" in result.out
    assert f"WARNING fxcu: Serving stale USD/CLP data: last date 2026-10-08, {age} days old" in result.err


@pytest.mark.slow
def test_seed_first_run_without_network_forecasts_from_the_seed(tmp_path, migrated_db):
    """A fresh clone, no network (names that never resolve): `run 7d` forecasts from data/seed and stores it as
    rows of source `seed`; then `check` warns at worst (never "no data") and `track 7d` works."""
    data = tmp_path / "data"
    (data / "mlflow").mkdir(parents=True)
    shutil.copy(migrated_db, data / "mlflow" / "mlflow.db")
    env = {k: v for k, v in fault_env(data, "http://fxcu-offline.invalid").items() if k not in {"FXCU_SEED"}}
    env = {k: v for k, v in env.items() if k != "FXCU_MAX_AGE_DAYS"}
    before = (date.today() - date(2024, 7, 15)).days  # a child process: its clock is read on both sides of the run
    result = cli(["run", "7d", "--skip-email"], env, tmp_path, timeout=300)
    ages = {before, (date.today() - date(2024, 7, 15)).days}
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert (
        "USD/CLP 7d: last 898.95 on 2024-07-15 -> " in result.out
        and "sources: usdclp seed, copper seed (daily)" in result.out
    )
    assert any(
        f"seed history: USD/CLP from the shipped seed, last date 2024-07-15, {age} days old" in result.out
        and f"WARNING fxcu: No USD/CLP history yet: starting from the shipped seed (last date 2024-07-15, {age} days "
        "old)"
        in result.err
        for age in ages
    )
    # said once, not once per source; no retry of a name that never resolves
    assert result.err.count("No network (no source could be reached): serving from the warehouse") == 1
    assert "Retrying" not in result.err
    assert not [line for line in result.err.splitlines() if " WARNING " in line and "connection error" in line]
    stored = pl.read_parquet(data / "warehouse" / fxcu.USDCLP_CACHE)
    seed = pl.read_csv(fxcu.SEED_DIR / fxcu.SEED_FILES["usdclp"])
    assert set(stored[fxcu.SOURCE]) == {"seed"} and stored.height == seed.height
    checked = cli(["check"], env, tmp_path)
    assert checked.code <= 1 and "no data" not in checked.out, checked.out
    assert "seed history only" in checked.out.splitlines()[0]
    copper = next(line for line in checked.out.splitlines() if "copper data:" in line and line.startswith("WARNING"))
    assert "seed history only" in copper and "without copper" not in copper  # the run used the seed's copper
    tracked = cli(["track", "7d"], env, tmp_path)
    assert tracked.code == 0 and "| 7d | live | 0/1 |" in tracked.out, tracked.err


@pytest.mark.slow
def test_seed_first_run_with_network_fetches_only_what_the_seed_lacks(tmp_path, inprocess):
    data = tmp_path / "data"
    env = {**fault_env(data, "http://unused"), "FXCU_SEED": "1"}
    assert inprocess(["fetch", "--offline"], env).code == 0  # an offline first day stores the seed, source `seed`
    assert set(pl.read_parquet(data / "warehouse" / fxcu.USDCLP_CACHE)[fxcu.SOURCE]) == {"seed"}
    with FakeSources(good_routes()) as api:
        result = inprocess(
            ["fetch"], {**env, "FXCU_YAHOO_URL": api.url, "FXCU_MINDICADOR_URL": api.url, "FXCU_FRED_URL": api.url}
        )
    assert result.code == 0, result.err
    seed_end = {"CLP=X": date(2024, 7, 15), "HG=F": date(2026, 2, 23)}
    for route, symbol in ((YAHOO_CLP, "CLP=X"), (YAHOO_HG, "HG=F")):
        (query,) = api.queries(route)
        asked_from = datetime.fromtimestamp(int(query["period1"]), UTC).date()
        assert "range" not in query and asked_from == seed_end[symbol] - timedelta(days=fxcu.OVERLAP_DAYS)
    assert api.count(MINDICADOR) == 0 and api.count(FRED) == 0
    stored = pl.read_parquet(data / "warehouse" / fxcu.USDCLP_CACHE)
    assert stored[fxcu.DATE].min() == date(2006, 5, 16) and set(stored[fxcu.SOURCE]) == {
        "yahoo"
    }  # live values replace the seed's


# Odd paths: characters that mean something in a URI, names the kernel refuses, loops.


@pytest.mark.slow
def test_fault_data_dir_with_uri_characters_keeps_the_database_where_it_belongs(tmp_path, inprocess, shared_models):
    """`#`, `?` and `%` in the data dir put the database elsewhere; `backup` archived an empty one as a success.

    In-process (the paths are the point, not the process) with the models computed once (`shared_models`)."""
    parent = tmp_path / "parent"
    data = parent / "fx #1?x=%41 data"
    write_real_warehouse(data)
    env = run_env(data)
    init = inprocess(["init"], env)
    run = inprocess(["run", "7d", "--offline", "--skip-email"], env)
    backup = inprocess(["backup", str(tmp_path / "backups")], env)
    for result in (init, run, backup):
        assert result.code == 0 and "Traceback" not in result.err, result.err
    assert sorted(p.name for p in parent.iterdir()) == [data.name]  # nothing made beside it (no `fx %231%3F...`)
    assert mlflow_runs(data) == 1 and "tracked: yes, run " in run.out
    run_id = run.out.split("tracked: yes, run ")[1].split()[0]
    assert list((data / "mlflow" / "mlruns").rglob(f"{run_id}/artifacts/*.md"))  # artifacts under the real data dir

    (archive,) = (tmp_path / "backups").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extract("mlflow/mlflow.db", tmp_path / "restored", filter="data")
    assert mlflow_runs(tmp_path / "restored") == 1  # the real database, not an empty one


@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=12
        ),
        min_size=1,
        max_size=4,
    )
)
@settings(deadline=None)  # the first example imports SQLAlchemy
def test_sqlite_uri_round_trips_any_path_through_sqlalchemy(parts):
    from sqlalchemy.engine import make_url

    path = Path("/", *parts, "mlflow.db")
    uri = fxcu.TrackingStore.sqlite(path, path.parent / "mlruns").uri
    assert make_url(uri).database == str(path) and not make_url(uri).query  # what SQLAlchemy opens is the file itself
    assert fxcu.tracking_store(fxcu.Config(data_dir=Path("/elsewhere")), {"MLFLOW_TRACKING_URI": uri}).db == path


def test_backup_refuses_a_database_that_is_not_mlflow(tmp_path, capsys):
    (tmp_path / "mlflow").mkdir()
    sqlite3.connect(tmp_path / "mlflow" / "mlflow.db").close()  # an empty SQLite file, as the unescaped URI made
    code = fxcu.main(["backup", str(tmp_path / "out")], run_env(tmp_path))
    err = capsys.readouterr().err
    assert code == 1 and "is not an MLflow database (no experiments or runs table): no backup written" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["component-over-255", "symlink-loop"])
@pytest.mark.parametrize("command", ["fetch", "run", "check", "init"])
def test_fault_unusable_data_dir_path_is_one_line(tmp_path, how, command):
    if how == "symlink-loop":
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
        data, reason = tmp_path / "a" / "data", "symlink loop"
    else:
        data, reason = tmp_path / ("x" * 300), "File name too long"
    result = cli([command, *(["7d"] if command == "run" else [])], {"FXCU_DATA_DIR": str(data)}, tmp_path)
    # a monitoring probe that cannot run is UNKNOWN (3), as Nagios expects; the other commands exit 2 (usage)
    assert result.code == (3 if command == "check" else 2) and "Traceback" not in result.err, result.err
    assert (
        len(result.messages) == 1
        and result.messages[0].startswith("fxcu: FXCU_DATA_DIR ")
        and result.messages[0].endswith(f"is unusable ({reason})")
    )


@pytest.mark.slow
def test_fault_mlflow_sqlalchemy_errors_reach_stderr_as_one_line(tmp_path):
    """A half-made database made MLflow log a ~60-line SQLAlchemy traceback; now one line each; check is CRITICAL."""
    (tmp_path / "mlflow").mkdir()
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow" / "mlflow.db")) as conn:
        conn.execute("create table experiments (x int)")
        conn.execute("create table runs (x int)")
        conn.commit()
    check = cli(["check"], run_env(tmp_path), tmp_path)  # first: MLflow itself then tries to migrate the file in place
    runs = cli(["runs"], run_env(tmp_path), tmp_path)
    assert runs.code == 1 and "Traceback" not in runs.err and "[SQL:" not in runs.err, runs.err
    assert all(LOG_LINE.match(line) or line.startswith("fxcu: runs failed (") for line in runs.err.splitlines())
    assert (
        "CRITICAL mlflow database: unreadable (no schema version: half-made; move it aside and run `fxcu init`)"
        in check.out
    )


# Disk full: an injected ENOSPC at each write, and a real full tmpfs.


@contextlib.contextmanager
def disk_full_at(monkeypatch, k: int):
    """Make the k-th atomic write (1-based) fail with ENOSPC after writing its temp file; yield the paths written."""
    real, calls = fxcu.atomic_path, []

    @contextlib.contextmanager
    def failing(path):
        calls.append(path)
        with real(path) as tmp:
            yield tmp
            if len(calls) == k:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(fxcu, "atomic_path", failing)
    yield calls
    monkeypatch.setattr(fxcu, "atomic_path", real)


# Interrupts and kills: one line, no temp files left, a killed run's leftovers cleaned on the next start.


def temp_leftovers(data_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(data_dir))
        for p in data_dir.rglob("*")
        if p.name.startswith(".tmp-") or p.name.endswith((".tmp", ".tmp-journal"))
    )


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2], ids=["usdclp-file", "copper-file"])
def test_fault_disk_full_during_the_warehouse_write_keeps_the_cache(data_dir, inprocess, monkeypatch, k):
    """ENOSPC in the parquet write was a polars traceback with no forecast; now one line, the fetched data is used."""
    name = (fxcu.USDCLP_CACHE, fxcu.COPPER_CACHE)[k - 1]
    with (
        guarded(data_dir, unchanged=(name,), db_unchanged=True) as guard,
        FakeSources(good_routes()) as api,
        disk_full_at(monkeypatch, k) as calls,
    ):
        result = guard(inprocess(["fetch"], fault_env(data_dir, api.url)))
    assert result.code == 0 and "Traceback" not in result.err
    assert calls[k - 1].name == name
    assert (
        f"ERROR fxcu: Warehouse {name} not updated (No space left on device): using the fetched data for this run only"
        in result.err
    )
    assert "  warehouse not updated (No space left on device)" in result.out
    assert temp_leftovers(data_dir) == []


@pytest.mark.slow
def test_fault_disk_full_at_each_write_of_a_run_is_one_line(data_dir, inprocess, monkeypatch, shared_models):
    """`run 7d` with ENOSPC injected at each of its atomic writes in turn: never a traceback, the forecast always
    printed, each failure one ERROR line, the warehouse and the earlier MLflow runs intact, no temp file left.
    The models are computed once (`shared_models`): the rows test the writes, not the models."""
    env = run_env(data_dir, FXCU_MAX_AGE_DAYS="100000")
    with disk_full_at(monkeypatch, 0) as calls:  # a clean run: which writes does `run` make?
        clean = inprocess(["run", "7d", "--offline", "--skip-email"], env)
    assert clean.code == 0
    writes = [p.name for p in calls]
    assert len(writes) >= 6, writes  # csv, png, md, two input parquets, status.json
    for k, name in enumerate(writes, 1):
        with (
            guarded(data_dir, unchanged=(fxcu.USDCLP_CACHE, fxcu.COPPER_CACHE), runs_added=None) as guard,
            disk_full_at(monkeypatch, k),
        ):
            result = guard(inprocess(["run", "7d", "--offline", "--skip-email"], env))
        assert "Traceback" not in result.err and result.out.startswith("USD/CLP 7d: last "), (name, result.err)
        assert re.search(r"^ERROR fxcu: .*No space left on device", result.err, re.MULTILINE), (name, result.err)
        assert result.code in (0, 1) and result.messages == []
        assert temp_leftovers(data_dir) == [], name


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MB tmpfs mounted under tmp_path (root only), unmounted afterwards; skipped where mounting is not allowed."""
    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the filesystem holding `folder`."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
    return filler


@pytest.mark.slow
def test_fault_real_full_disk_fetch_and_first_init(tmpfs, tmp_path, migrated_db):
    """On a real full tmpfs: `fetch` keeps the warehouse and says one line; the first `init` leaves no half-made MLflow
    database (it used to, while `check` said OK), and works once space is freed."""
    data = tmpfs / "data"
    write_real_warehouse(data)
    with guarded(data, unchanged=(fxcu.USDCLP_CACHE, fxcu.COPPER_CACHE)) as guard:
        filler = fill(tmpfs)
        with FakeSources(good_routes()) as api:
            env = fault_env(data, api.url)
            fetch = guard(cli(["fetch"], env, tmp_path))
            init = guard(cli(["init"], env, tmp_path))
            check = guard(cli(["check", "--json"], env, tmp_path))
    assert fetch.code == 0 and "Traceback" not in fetch.err, fetch.err
    assert "ERROR fxcu: Warehouse usdclp.parquet not updated (No space left on device)" in fetch.err
    assert init.code == 1 and "Traceback" not in init.err, init.err
    assert len(init.messages) == 1 and init.messages[0].startswith("fxcu: init failed (") and "full" in init.messages[0]
    assert not (data / "mlflow" / "mlflow.db").exists() and temp_leftovers(data) == []
    levels = {c["name"]: c["level"] for c in json.loads(check.out)["checks"]}
    assert levels["mlflow database"] != "OK" and levels["disk"] == "CRITICAL"
    filler.unlink()
    again = cli(["init"], env, tmp_path)
    assert again.code == 0 and "created forecaster_7d" in again.out
    levels = {c["name"]: c["level"] for c in json.loads(cli(["check", "--json"], env, tmp_path).out)["checks"]}
    assert levels["mlflow database"] == "OK"


def start_cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, Path]:
    """`python fxcu.py ARGS` started in the background; stderr goes to a file that can be watched."""
    err = cwd / f"stderr-{time.monotonic_ns()}.txt"
    with open(err, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "fxcu.py"), *args],
            env={**clean_environ(), **env},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
        )
    return proc, err


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("moment", ["backtest", "tracking"])
def test_fault_interrupt_is_one_line_and_leaves_no_temp_files(data_dir, tmp_path, sig, moment):
    """Ctrl-C was a KeyboardInterrupt traceback and SIGTERM printed nothing; both now say one line and clean up."""
    with guarded(data_dir, unchanged=(fxcu.USDCLP_CACHE, fxcu.COPPER_CACHE), runs_added=None):
        proc, err = start_cli(["run", "7d", "--offline", "--skip-email"], run_env(data_dir), tmp_path)
        try:
            if moment == "backtest":
                wait_for(lambda: "Backtesting" in err.read_text())
            else:  # while the inputs are copied for MLflow into a temp folder under the data dir
                wait_for(lambda: any(p.name.startswith(".tmp-") for p in data_dir.iterdir()))
            proc.send_signal(sig)
            proc.wait(60)
        finally:
            proc.kill()
    text = err.read_text()
    lines = [line for line in text.splitlines() if line.strip() and not LOG_LINE.match(line)]
    name = "interrupted (Ctrl-C)" if sig == signal.SIGINT else "terminated (SIGTERM)"
    assert proc.returncode == (130 if sig == signal.SIGINT else 143) and "Traceback" not in text, text
    assert lines == [f"fxcu: {name}: stopped, temp files removed, nothing half-written kept"]
    assert temp_leftovers(data_dir) == []
    with contextlib.closing(sqlite3.connect(data_dir / "mlflow" / "mlflow.db")) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert conn.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0] == 0


@pytest.mark.slow
def test_fault_kill_9_at_random_moments_never_corrupts_anything(data_dir, tmp_path):
    """SIGKILL at 8 seeded random moments of `fetch` and `run`: every file stays readable and whole, nothing is lost,
    the MLflow database passes SQLite's integrity check, and the next start removes the leftovers."""
    rng = random.Random(20261126)
    with guarded(data_dir, runs_added=None) as whole, FakeSources(good_routes()) as api:
        env = fault_env(data_dir, api.url)
        for trial in range(8):
            args = ["fetch"] if trial % 2 == 0 else ["run", "7d", "--skip-email"]
            with guarded(data_dir, runs_added=None) as guard:
                proc, err = start_cli(args, env, tmp_path)
                time.sleep(
                    rng.uniform(0.5, 3.0 if args == ["fetch"] else 25.0)
                )  # the moment of the kill, not a wait for a result
                proc.kill()
                proc.wait(30)
            assert "Traceback" not in err.read_text()
            assert all(days is not None for days in guard.after.dates.values())  # every warehouse file parses
            with contextlib.closing(sqlite3.connect(data_dir / "mlflow" / "mlflow.db")) as conn:
                assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
            if (data_dir / "status.json").exists():
                assert isinstance(json.loads((data_dir / "status.json").read_text()), dict)
        result = whole(cli(["fetch", "--offline"], env, tmp_path))
    assert result.code == 0 and temp_leftovers(data_dir) == []  # the next start removed what the kills left
    check = cli(["check"], env, tmp_path)
    assert "Traceback" not in check.err + check.out and "unreadable" not in check.out


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", ["fetch", "validate", "run", "check", "init", "runs", "compare", "stats", "backup", "ui"]
)
def test_every_subcommand_help_is_fast_and_light(command):
    heavy = "{'mlflow','statsforecast','httpx','matplotlib'}"  # polars and numpy: the module's top
    code = (
        f"import sys\nimport fxcu\ntry: fxcu.main([{command!r}, '--help'])\n"
        "except SystemExit as e: print('exit', e.code)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(f"usage: fxcu {command}") and lines[-2] == "exit 0" and lines[-1] == "[]"
