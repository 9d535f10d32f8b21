"""Forecast USD/CLP at 7, 15, 30 and 90 days, with copper as a signal and every run tracked in MLflow.

Usage:
    python fxcu.py fetch            # refresh the parquet warehouse from the live sources
    python fxcu.py validate         # load, compute copper features, check their ranges
    python fxcu.py run 7d           # fetch, forecast, backtest, report, track
    python fxcu.py check            # health probe for monitoring (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)
    python fxcu.py track 7d         # live track record: served forecasts scored when their day came
    python fxcu.py odds 30d 950     # odds of ending above/below 950 on the date of the last served 30d forecast
    python fxcu.py runs             # recent MLflow runs (also: init, compare, stats, backup)
    python fxcu.py ui               # the MLflow UI on the data dir's store, http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import enum
import errno
import fcntl
import getpass
import hashlib
import html
import importlib.metadata as md
import io
import itertools
import json
import logging
import math
import os
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
import textwrap
import threading
import time
import urllib.parse
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from enum import StrEnum
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, Self, TypeVar
from urllib.parse import quote, unquote, urlsplit
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:  # imported where used: `--help` and `check` stay fast without them
    import httpx
    from matplotlib.figure import Figure

__version__ = "0.1.0"
# The library API (README's "Library" section, and nothing else); the rest is the CLI's and may change.
__all__ = [
    "Bundle",
    "ChosenSeries",
    "Config",
    "Forecast",
    "PayloadError",
    "Result",
    "backtest",
    "best_run",
    "clean_prices",
    "copper_features",
    "density_backtest_all",
    "fetch_copper",
    "fetch_usdclp",
    "first_good",
    "forecast",
    "load",
    "make_client",
    "parse_fred_observations",
    "parse_mindicador",
    "parse_yahoo_chart",
]

log = logging.getLogger("fxcu")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# httpx logs every request URL at INFO, query string (the FRED key) included.
logging.getLogger("httpx").setLevel(logging.WARNING)
# httpcore's DEBUG trace logs response headers, Yahoo's Set-Cookie included (`fxcu -v` would show it).
logging.getLogger("httpcore").setLevel(logging.WARNING)


# -- Constants & config ----------------------------------------------------------------

DATE, CLOSE, SOURCE, FETCHED_AT = "date", "close", "source", "fetched_at"
USDCLP_SYMBOL, COPPER_SYMBOL, FRED_COPPER_SERIES = "CLP=X", "HG=F", "PCOPPUSDM"
LB_PER_TONNE = 2204.62262
HORIZONS: dict[str, int] = {"7d": 7, "15d": 15, "30d": 30, "90d": 90}
# Priority order of every series: a lower rank wins when two sources disagree on a date. The live
# sources' ranks are also in their descriptions (SOURCES); the shipped seed history ranks last.
SOURCE_RANK: dict[str, int] = {"yahoo": 0, "mindicador": 1, "fred": 2, "cache": 3, "seed": 4}
USDCLP_CACHE, COPPER_CACHE = "usdclp.parquet", "copper_hgf_usd_lb.parquet"
SEED_FILES: dict[str, str] = {"usdclp": "usdclp_clpx_daily.csv", "copper": "copper_hgf_daily.csv"}
# A browser-like User-Agent: Yahoo answers library User-Agents with 429s.
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
# A jump this far (in log terms, ~22%) from the local median that comes straight back is a bad print.
BAD_PRINT_LOG_JUMP = 0.2
# Overlap asked of an incremental fetch, so revised recent values replace cached ones.
OVERLAP_DAYS = 7
# Without a cached history, the last this many bars of a fresh frame are checked for jumps.
NEWEST_BARS = 10
# The small real history shipped with fxcu (data/seed/README.md): an empty warehouse starts from it.
SEED_DIR = Path(__file__).resolve().parent / "data" / "seed"
YAHOO_URL, FRED_URL, MINDICADOR_URL = (
    "https://query1.finance.yahoo.com",
    "https://api.stlouisfed.org",
    "https://mindicador.cl",
)
# Where a browser gets Yahoo's cookie (an A3 cookie on a 404 page) before asking for a crumb, as yfinance does.
YAHOO_COOKIE_URL, YAHOO_CRUMB_PATH = "https://fc.yahoo.com", "/v1/test/getcrumb"
IMPERSONATE: tuple[str, ...] = ("chrome", "off")  # FXCU_HTTP_IMPERSONATE: Yahoo's TLS fingerprint

EXPERIMENT_PREFIX = "forecaster_"


class ConfigError(ValueError):
    """A bad environment value, reported as one line."""


def env_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """Read a boolean variable: 1/true/yes/on or 0/false/no/off."""
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1/0, true/false, on/off)")


def env_number(environ: Mapping[str, str], name: str, default: float) -> float:
    """Read a positive number, at most 1e6."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    if value > 1e6:  # `inf` or 1e20 would overflow a socket timeout or a timedelta later, as a traceback
        raise ConfigError(f"{name}={raw!r} is too large (at most 1000000)")
    return value


def find_seed_dir() -> Path | None:
    """The seed folder beside the module (a checkout, `pip install -e`), else the one a wheel put under sys.prefix."""
    for folder in (SEED_DIR, Path(sys.prefix) / "share" / "fxcu" / "seed"):
        if (folder / SEED_FILES["usdclp"]).is_file():
            return folder
    return None


@dataclass(frozen=True, slots=True)
class Config:
    """Everything fxcu reads from the environment, with defaults."""

    data_dir: Path
    yahoo_url: str = YAHOO_URL
    yahoo_cookie_url: str = YAHOO_COOKIE_URL
    impersonate: Literal["chrome", "off"] = "chrome"  # Yahoo requests present Chrome's TLS fingerprint (curl_cffi)
    fred_url: str = FRED_URL
    mindicador_url: str = MINDICADOR_URL
    fred_api_key: str | None = field(default=None, repr=False)
    offline: bool = False
    copper: bool = True
    timeout: float = 20.0  # seconds per HTTP request
    attempts: int = 3  # tries per request (transport errors, 429 and 5xx only)
    retry_budget: float = 60.0  # seconds one request may spend retrying, Retry-After included
    max_retry_after: float = 30.0  # cap on a server's Retry-After
    max_age_days: int = 5  # a live series whose last date is older than this is stale
    lock_timeout: float = 600.0  # seconds a second process waits for the warehouse or a run
    tracking_timeout: float = 60.0  # seconds MLflow logging may take before the run goes on without it
    network_budget: float = 180.0  # seconds of network work per run before only the cache is used
    seed_dir: Path | None = None  # the shipped seed history an empty warehouse starts from (None: no seed)

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse"

    @property
    def mlflow_dir(self) -> Path:
        """The local MLflow store's folder: its database, artifacts and lock files."""
        return self.data_dir / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        return self.mlflow_dir / "mlflow.db"

    @property
    def mlruns(self) -> Path:
        """The local store's artifact root (absolute, else MLflow writes ./mlruns of the working directory)."""
        return self.mlflow_dir / "mlruns"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Build the config from environment variables (FXCU_*, FRED_API_KEY)."""
        default_dir = Path(__file__).resolve().parent / "data"
        raw_dir = environ.get("FXCU_DATA_DIR") or default_dir
        try:
            data_dir = Path(raw_dir).expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop is a RuntimeError before Python 3.13
            reason = getattr(exc, "strerror", None) or "symlink loop"
            raise ConfigError(f"FXCU_DATA_DIR {raw_dir} is unusable ({reason})") from None
        yahoo_url = environ.get("FXCU_YAHOO_URL", YAHOO_URL).rstrip("/")
        impersonate = environ.get("FXCU_HTTP_IMPERSONATE", "chrome").strip().lower() or "chrome"
        if impersonate not in IMPERSONATE:
            raise ConfigError(f"FXCU_HTTP_IMPERSONATE={impersonate!r} is not one of {', '.join(IMPERSONATE)}")
        # a Yahoo mirror or test server set in FXCU_YAHOO_URL serves the cookie too, not fc.yahoo.com
        cookie_url = environ.get("FXCU_YAHOO_COOKIE_URL") or (YAHOO_COOKIE_URL if yahoo_url == YAHOO_URL else yahoo_url)
        return cls(
            data_dir=data_dir,
            yahoo_url=yahoo_url,
            yahoo_cookie_url=cookie_url.rstrip("/"),
            impersonate=impersonate,  # type: ignore[arg-type]
            fred_url=environ.get("FXCU_FRED_URL", FRED_URL).rstrip("/"),
            mindicador_url=environ.get("FXCU_MINDICADOR_URL", MINDICADOR_URL).rstrip("/"),
            fred_api_key=environ.get("FRED_API_KEY") or None,
            offline=env_flag(environ, "FXCU_OFFLINE", False),
            copper=env_flag(environ, "FXCU_COPPER", True),
            timeout=env_number(environ, "FXCU_TIMEOUT", 20.0),
            max_age_days=int(env_number(environ, "FXCU_MAX_AGE_DAYS", 5)),
            lock_timeout=env_number(environ, "FXCU_LOCK_TIMEOUT", 600.0),
            tracking_timeout=env_number(environ, "FXCU_TRACKING_TIMEOUT", 60.0),
            network_budget=env_number(environ, "FXCU_NETWORK_BUDGET", 180.0),
            seed_dir=find_seed_dir() if env_flag(environ, "FXCU_SEED", True) else None,
        )


def parse_horizon(text: str) -> int:
    """Turn '7d', '15d', '30d' or '90d' into calendar days; raise ValueError otherwise."""
    key = text.strip().lower()
    if key not in HORIZONS:
        raise ValueError(f"unknown horizon {text!r}: choose one of {', '.join(HORIZONS)}")
    return HORIZONS[key]


# -- Values: levels, failures and degradations -----------------------------------------

Level = Literal["OK", "WARNING", "CRITICAL"]
LEVEL_CODE: dict[str, int] = {"OK": 0, "WARNING": 1, "CRITICAL": 2}
UNKNOWN = 3  # Nagios: the probe itself could not run (bad threshold, unexpected error)
Check = tuple[str, Level, str]  # name, level, message: the message reads after "name: "


BAD_PRINTS = "bad prints"  # the key of `Cleaned.removed` that makes a run degraded

KindT = TypeVar("KindT", bound=StrEnum)


class Problem(StrEnum):
    """Why a frame, or a row of it, may not be stored or served (code acts on these, never on sentences)."""

    NO_ROWS = "no rows"
    NULL_CLOSES = "null or non-positive closes"
    STALE = "stale"
    NOT_FINITE = "non-finite close"
    OUT_OF_RANGE = "implausible close"
    FUTURE_DATE = "date after the fetch day"
    TOO_EARLY = "date before the series exists"
    WRONG_SYMBOL = "wrong symbol"
    WRONG_CURRENCY = "wrong currency"
    CONFLICTING_DUPLICATES = "conflicting duplicated dates"
    JUMP = "jump from the history"


@dataclass(frozen=True, slots=True)
class Reason(Generic[KindT]):
    """A reason as a value (`kind`, which code matches) and the sentence shown for it (`detail`, else the kind)."""

    kind: KindT
    detail: str = ""

    def __str__(self) -> str:
        return self.detail or self.kind.value


@dataclass(frozen=True, slots=True)
class Finding(Reason[Problem]):
    """One problem found in a frame, with the sentence that tells a person about it; `since` dates a jump."""

    since: date | None = None


class Degraded(StrEnum):
    """Why a run is weaker than a full one: stored in status.json and MLflow tags, matched by value."""

    NO_COPPER = "no copper"
    MONTHLY_COPPER = "monthly copper"
    STALE_COPPER = "stale copper"
    CACHED = "cached data"
    BAD_PRINTS = "removed bad prints"
    STALE = "stale data"
    SEED = "seed history"
    REJECTED = "rejected source"
    REPAIRED = "repaired cache"


@dataclass(frozen=True, slots=True)
class Plausible:
    """What a series can hold: closes in [low, high] (its unit), no date before `earliest`, no move beyond `jump`.

    `jump` is the largest credible |log move| between two bars one trading day apart (it scales with the
    square root of the trading days between them) and between two values for one date; measured on the
    real histories in data/real (docs/BENCHMARKS.md, issue 10).
    """

    label: str
    unit: str
    low: float
    high: float
    earliest: date
    jump: float


# USD/CLP traded 370-1060 since 1990 and the dólar observado starts in 1984; COMEX copper traded
# 0.6-6.2 USD/lb since 2000 and the IMF monthly series starts before 1990. Jumps: 1.25 x the worst real
# move per sqrt(trading day): USD/CLP -12.5% on 2022-07-21, HG=F -25% on 2025-07-31 (both real).
USDCLP_RULES = Plausible("USD/CLP", "CLP per USD", 300.0, 2000.0, date(1984, 1, 1), 0.16)
COPPER_RULES = Plausible("copper", "USD/lb", 0.3, 20.0, date(1980, 1, 1), 0.32)
PLAUSIBLE: dict[str, Plausible] = {"usdclp": USDCLP_RULES, "copper": COPPER_RULES}


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One way a row of prices is invalid: the problem it is, an expression true on the rows that break it, words."""

    kind: Problem
    bad: pl.Expr  # never null: a null close breaks the `null` rule only
    words: str  # the rows that break it, after a count: "3 rows null closes", "1 bars dated after 2026-11-27"


@dataclass(frozen=True, slots=True)
class Result:
    """One source's answer: a frame, or the reason there is none (`findings` when the answer was implausible)."""

    source: str
    frame: pl.DataFrame | None = None
    error: str | None = None
    notes: tuple[str, ...] = ()
    frequency: Literal["daily", "monthly"] = "daily"
    findings: tuple[Finding, ...] = ()
    degraded: tuple[Reason[Degraded], ...] = ()
    unreachable: bool = False  # failed at the connection level: a name not known, refused, no route

    @property
    def ok(self) -> bool:
        return self.error is None and self.frame is not None


@dataclass(frozen=True, slots=True)
class Cleaned:
    """A clean price frame and what cleaning removed, by reason."""

    frame: pl.DataFrame
    removed: dict[str, list[date]]

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(
            f"removed {len(days)} {reason} ({', '.join(map(str, days[:5]))}{', ...' if len(days) > 5 else ''})"
            for reason, days in self.removed.items()
            if days
        )


class PayloadError(ValueError):
    """A response body that is not what the API documents."""


class Implausible(PayloadError):
    """A well-formed body whose content cannot be right (another symbol, another currency)."""

    def __init__(self, findings: Sequence[Finding]):
        super().__init__("; ".join(map(str, findings)))
        self.findings = tuple(findings)


@dataclass(frozen=True, slots=True)
class ChosenSeries:
    """A chosen, clean series: the full history after merging, where it came from, and what happened."""

    name: str
    frame: pl.DataFrame | None
    source: str
    frequency: Literal["daily", "monthly"] = "daily"
    notes: tuple[str, ...] = ()
    error: str | None = None
    degraded: tuple[Reason[Degraded], ...] = ()
    failures: tuple[str, ...] = ()  # "<source> failed: <why>", also in `notes`
    unreachable: bool = False  # every live source asked failed at the connection level: no network

    @property
    def ok(self) -> bool:
        return self.frame is not None and not self.frame.is_empty()


# -- Core: requests and redaction ------------------------------------------------------


def yahoo_params(since: date | None, now: datetime) -> dict[str, str]:
    """Query for a daily chart: full history when nothing is cached, else from `since` minus the overlap."""
    if since is None:
        return {"interval": "1d", "range": "max"}
    start = datetime.combine(since - timedelta(days=OVERLAP_DAYS), datetime.min.time(), UTC)
    return {"interval": "1d", "period1": str(int(start.timestamp())), "period2": str(int(now.timestamp()))}


# Without a cached history, mindicador is asked for this many years (this one included): one request each.
MINDICADOR_FIRST_YEARS = 2


def mindicador_years(since: date | None, now: datetime) -> list[int]:
    """Years to ask mindicador for: from the cached year (less the overlap) to now, else MINDICADOR_FIRST_YEARS."""
    first = (since - timedelta(days=OVERLAP_DAYS)).year if since else now.year - MINDICADOR_FIRST_YEARS + 1
    return list(range(min(first, now.year), now.year + 1))


def redact(text: str, secret: str | None) -> str:
    """Remove a secret, any `api_key=` or `crumb=` query value and user:password in URLs from text for logs."""
    text = re.sub(r"((?:api_key|crumb)=)[^&\s'\"]+", r"\1***", text)
    text = re.sub(r"(//)[^/@\s'\"]*:[^/@\s'\"]*@", r"\1***@", text)  # user:password in a base or proxy URL
    if secret:
        text = text.replace(secret, "***")
    return text


def redact_uri(uri: str) -> str:
    """Hide a password in a tracking URI (`postgresql://user:pw@host`)."""
    return re.sub(r"(//[^:/@]+:)[^@]+@", r"\1***@", uri)


def one_line(exc: BaseException, secret: str | None = None, limit: int = 300) -> str:
    """An exception as one redacted line for a log or a user: `TypeName: first line of its message`.

    >>> one_line(ValueError("bad value\\nat line 2"))
    'ValueError: bad value'
    """
    first = next(iter(str(exc).strip().splitlines()), "")
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return redact(redact_uri(text), secret)[:limit]


# Yahoo asks for a cookie and crumb with one of these statuses and one of these phrases in the body:
# 401 `{"finance":{"result":null,"error":{"code":"Unauthorized","description":"Invalid Crumb"}}}`,
# 429 `Too Many Requests` (plain text, data/real/yahoo/ERRORS_AND_429.md).
CRUMB_STATUSES = (401, 403, 429)
CRUMB_ASKS = ("invalid crumb", "unauthorized", "too many requests")


def asks_for_crumb(status: int, body: str) -> bool:
    """True when a Yahoo answer is a 401, 403 or 429 whose body asks for a cookie and crumb."""
    return status in CRUMB_STATUSES and any(phrase in body.lower() for phrase in CRUMB_ASKS)


def crumb_from(status: int, body: str) -> str | None:
    """The crumb in a getcrumb answer, or None when Yahoo refused one (an error status, HTML or prose)."""
    crumb = body.strip()
    # a refusal comes back as 200 HTML or as text like "Edge: Too Many Requests"; a crumb is one short token
    return crumb if status == 200 and re.fullmatch(r"[A-Za-z0-9./_-]{1,64}", crumb) else None


# -- Core: parsing payloads ------------------------------------------------------------


def _price_frame(days: pl.Series, closes: pl.Series) -> pl.DataFrame:

    return pl.DataFrame({DATE: days.cast(pl.Date), CLOSE: closes.cast(pl.Float64)})


def _chart_result(payload: Mapping[str, Any]) -> Any:
    """The first `chart.result` of a Yahoo body; raises PayloadError for `chart.error` or no result."""
    chart = payload.get("chart") if isinstance(payload, Mapping) else None
    if not isinstance(chart, Mapping):
        raise PayloadError("not a Yahoo chart body (no 'chart' object)")
    if chart.get("error"):
        err = chart["error"]
        detail = f"{err.get('code')}: {err.get('description')}" if isinstance(err, Mapping) else str(err)
        raise PayloadError(f"chart.error {detail}")
    results = chart.get("result")
    if not results:
        raise PayloadError("chart.result is empty")
    return results[0]


def yahoo_meta_findings(meta: Mapping[str, Any], *, symbol: str | None, currency: str | None) -> list[Finding]:
    """What in a chart's `meta` says it is not the series asked for (Yahoo always sends both fields)."""
    found = []
    got = meta.get("symbol") if isinstance(meta, Mapping) else None
    if symbol is not None and got != symbol:
        found.append(Finding(Problem.WRONG_SYMBOL, f"wrong symbol: asked for {symbol}, meta says {str(got)[:20]!r}"))
    got = meta.get("currency") if isinstance(meta, Mapping) else None
    if currency is not None and got != currency:
        found.append(
            Finding(Problem.WRONG_CURRENCY, f"wrong currency: expected {currency}, meta says {str(got)[:20]!r}")
        )
    return found


def parse_yahoo_chart(
    payload: Mapping[str, Any], *, symbol: str | None = None, currency: str | None = None
) -> pl.DataFrame:
    """Parse a Yahoo v8 chart body into `date`, `close`, dated in the exchange's timezone.

    Null bars are kept as null closes (cleaning drops them and says how many).
    Raises PayloadError for `chart.error`, a missing result or a result without bars, and
    Implausible when `symbol` or `currency` is given and `meta` names another.
    """

    result = _chart_result(payload)
    stamps = result.get("timestamp")
    if not stamps:
        raise PayloadError("empty result: no bars (no 'timestamp')")
    meta = result.get("meta") or {}
    wrong = yahoo_meta_findings(meta, symbol=symbol, currency=currency)
    if wrong:
        raise Implausible(wrong)
    tz = meta.get("exchangeTimezoneName") or "UTC"
    try:
        closes = result["indicators"]["quote"][0]["close"]
    except (KeyError, IndexError, TypeError):
        raise PayloadError("no indicators.quote[0].close") from None
    if len(closes) != len(stamps):
        raise PayloadError(f"{len(stamps)} timestamps but {len(closes)} closes")
    # Yahoo stamps bars in UTC; the trading day is the date in the exchange's timezone
    # (CLP=X bars at 23:00 UTC in British summer time belong to the next London day).
    days = (
        pl.from_epoch(pl.Series(stamps, dtype=pl.Int64), time_unit="s")
        .dt.replace_time_zone("UTC")
        .dt.convert_time_zone(tz)
        .dt.date()
    )
    return _price_frame(days, pl.Series(closes, dtype=pl.Float64, strict=False))


def parse_mindicador(payload: Mapping[str, Any]) -> pl.DataFrame:
    """Parse a mindicador.cl `/api/dolar` body (dólar observado, CLP per USD) into `date`, `close`."""

    serie = payload.get("serie") if isinstance(payload, Mapping) else None
    if not isinstance(serie, list):
        raise PayloadError("not a mindicador body (no 'serie' list)")
    try:
        stamps = [row["fecha"] for row in serie]
        values = [row["valor"] for row in serie]
    except (KeyError, TypeError):
        raise PayloadError("mindicador serie rows need 'fecha' and 'valor'") from None
    if not stamps:
        return _price_frame(pl.Series([], dtype=pl.Date), pl.Series([], dtype=pl.Float64))
    # `fecha` is Chile midnight written in UTC (03:00Z or 04:00Z): the day is the Santiago date.
    days = (
        pl.Series(stamps, dtype=pl.String)
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC", strict=False)
        .dt.convert_time_zone("America/Santiago")
        .dt.date()
    )
    if days.null_count():
        raise PayloadError("mindicador 'fecha' is not an ISO timestamp")
    return _price_frame(days, pl.Series(values, dtype=pl.Float64, strict=False)).sort(DATE)


def parse_fred_observations(payload: Mapping[str, Any]) -> pl.DataFrame:
    """Parse FRED PCOPPUSDM observations (USD per tonne, monthly) into USD/lb `date`, `close`.

    FRED's missing value "." becomes a null close (cleaning drops it).
    """

    if isinstance(payload, Mapping) and "error_message" in payload:
        raise PayloadError(f"FRED error: {payload['error_message']}")
    obs = payload.get("observations") if isinstance(payload, Mapping) else None
    if not isinstance(obs, list):
        raise PayloadError("not a FRED observations body (no 'observations' list)")
    try:
        days = pl.Series([row["date"] for row in obs], dtype=pl.String).str.to_date("%Y-%m-%d")
        values = pl.Series([row["value"] for row in obs], dtype=pl.String)
    except (KeyError, TypeError, pl.exceptions.ComputeError):
        raise PayloadError("FRED observations need 'date' (YYYY-MM-DD) and 'value'") from None
    per_tonne = values.replace(".", None).cast(pl.Float64, strict=False)
    return _price_frame(days, per_tonne / LB_PER_TONNE)


# -- Core: cleaning and merging --------------------------------------------------------


RuleName = Literal["null", "non-positive", "not finite", "in the future", "too early", "out of range"]


def validity_rules(
    rules: Plausible | None = None, *, now: datetime | None = None, column: str = CLOSE
) -> dict[RuleName, Rule]:
    """The one table of what makes a row of prices invalid, by name: every check of prices reads it.

    Cleaning, source checks, `implausible`, `repair` and `feature_problems` pick their rules from it.
    Every series: `null` (null or NaN), `non-positive` and `not finite` closes. With `now`: `in the
    future`, dated after tomorrow. With a series' `rules`: `too early`, dated before the series
    exists, and `out of range`, outside its [low, high]; `column` is the one held to that range
    (copper's moving averages are held to copper's).
    """
    close, day = pl.col(column), pl.col(DATE)
    table: dict[RuleName, Rule] = {
        "null": Rule(Problem.NULL_CLOSES, close.is_null() | close.is_nan(), "null closes"),
        "non-positive": Rule(Problem.NULL_CLOSES, close <= 0, "non-positive closes"),
        "not finite": Rule(Problem.NOT_FINITE, close.is_infinite(), "non-finite closes"),
    }
    if now is not None:
        tomorrow = now.date() + timedelta(days=1)
        table["in the future"] = Rule(Problem.FUTURE_DATE, day > tomorrow, f"dated after {tomorrow}")
    if rules is not None:
        table["too early"] = Rule(Problem.TOO_EARLY, day < rules.earliest, f"dated before {rules.earliest}")
        table["out of range"] = Rule(
            Problem.OUT_OF_RANGE,
            ~close.is_between(rules.low, rules.high),
            f"outside {rules.low:g}..{rules.high:g} {rules.unit}",
        )
    return {name: Rule(rule.kind, rule.bad.fill_null(False), rule.words) for name, rule in table.items()}


def unusable() -> pl.Expr:
    """True on the rows no series can use, whatever its unit: null, NaN or non-positive closes."""
    table = validity_rules()
    return table["null"].bad | table["non-positive"].bad


def spike_mask(col: str | pl.Expr, threshold: float) -> pl.Expr:
    """True where a price is an isolated spike: far from both neighbour medians, which agree.

    Uses the three rows before and the three after (as many as exist); the first and last rows
    are never flagged (nothing confirms them yet).
    """

    if threshold <= 0:
        raise ValueError("threshold must be positive")
    x = (pl.col(col) if isinstance(col, str) else col).log()
    # three on each side, so two bad prints in a row do not vouch for each other
    before = pl.concat_list(x.shift(1), x.shift(2), x.shift(3)).list.median()
    after = pl.concat_list(x.shift(-1), x.shift(-2), x.shift(-3)).list.median()
    return (
        ((x - before).abs() > threshold) & ((x - after).abs() > threshold) & ((before - after).abs() < threshold / 2)
    ).fill_null(False)


def _drop_spikes(days: pl.DataFrame) -> tuple[pl.DataFrame, list[date]]:
    """The frame without its bad prints (`spike_mask`), and their dates."""

    # removing a print can expose another (two bad prints side by side): repeat to a fixed
    # point, so cleaning a clean frame changes nothing. Each pass removes a row, so this ends.
    spikes = []
    while True:
        flagged = days.with_columns(is_spike=spike_mask(CLOSE, BAD_PRINT_LOG_JUMP))
        found = flagged.filter("is_spike")
        if found.is_empty():
            return days, spikes
        spikes += found[DATE].to_list()
        days = flagged.filter(~pl.col("is_spike")).drop("is_spike")


def clean_prices(frame: pl.DataFrame, *, frequency: Literal["daily", "monthly"] = "daily") -> Cleaned:
    """Return one sorted row per weekday with a positive close, isolated bad prints removed.

    Monthly series (FRED, dated the first of the month) keep their weekend dates.

    Rows must arrive in time order: of two bars with the same date the later one is kept
    (Yahoo's live bar duplicates the day before it). A bad print is a close more than
    BAD_PRINT_LOG_JUMP (log) away from the median of its three neighbours on each side while those
    agree with each other, like the 5.0 among 664s in CLP=X on 2016-12-22; real moves that persist
    are kept.
    """

    removed: dict[str, list[date]] = {}

    def note(reason: str, rows: pl.DataFrame) -> None:
        removed[reason] = sorted(rows[DATE].to_list())

    note("null or non-positive bars", frame.filter(unusable()))
    rest = frame.filter(~unusable())

    deduped = rest.unique(subset=DATE, keep="last").sort(DATE)
    dups = rest.height - deduped.height
    removed["duplicated-date bars (kept the latest)"] = (
        [] if not dups else sorted(rest.filter(pl.col(DATE).is_duplicated())[DATE].unique().to_list())
    )
    is_weekend = (pl.col(DATE).dt.weekday() >= 6) & pl.lit(frequency == "daily")
    note("weekend rows", deduped.filter(is_weekend))
    days, spikes = _drop_spikes(deduped.filter(~is_weekend))
    removed[BAD_PRINTS] = sorted(spikes)
    return Cleaned(days, {k: v for k, v in removed.items() if v})


def merge_prices(cached: pl.DataFrame | None, fresh: pl.DataFrame) -> pl.DataFrame:
    """Merge a fetch into the cached history: dates added, revised values replaced, none lost.

    On a date both hold, the row from the higher-priority source wins (SOURCE_RANK), and
    between equals the fresh one: a fallback source never overwrites the primary's history.
    """

    if cached is None or cached.is_empty():
        return fresh.sort(DATE)
    both = pl.concat(
        [cached.with_columns(_fresh=pl.lit(0)), fresh.with_columns(_fresh=pl.lit(1))], how="vertical_relaxed"
    )
    rank = pl.col(SOURCE).replace_strict(SOURCE_RANK, default=len(SOURCE_RANK), return_dtype=pl.Int32)
    return (
        both.sort([DATE, rank, "_fresh"], descending=[False, True, False])
        .unique(subset=DATE, keep="last", maintain_order=True)
        .drop("_fresh")
        .sort(DATE)
    )


def with_provenance(frame: pl.DataFrame, source: str, fetched_at: datetime) -> pl.DataFrame:
    """Add the `source` and `fetched_at` columns every stored row carries."""

    return frame.select(DATE, CLOSE).with_columns(
        pl.lit(source).alias(SOURCE),
        pl.lit(fetched_at).cast(pl.Datetime("us", "UTC")).alias(FETCHED_AT),
    )


# -- Core: choosing a source -----------------------------------------------------------


def problems(frame: pl.DataFrame | None, *, now: datetime, max_age: timedelta | None) -> list[Finding]:
    """List what is wrong with a price frame; an empty list means it is good."""
    if frame is None or frame.is_empty():
        return [Finding(Problem.NO_ROWS)]
    found = []
    if frame.select(unusable().any()).item():
        found.append(Finding(Problem.NULL_CLOSES))
    last = frame[DATE].max()
    if max_age is not None and now.date() - last > max_age:
        found.append(Finding(Problem.STALE, f"stale: last date {last} is {(now.date() - last).days} days old"))
    return found


def refusal(result: Result, *, now: datetime, max_age: timedelta | None) -> str | None:
    """Why one result may not be served (its error, or its problems in one line), or None when it may."""
    if result.error is not None:
        return result.error
    if result.frequency == "monthly" and max_age is not None:
        max_age = max(max_age, timedelta(days=75))  # a monthly series lags by up to two months
    found = problems(result.frame, now=now, max_age=max_age)
    return "; ".join(map(str, found)) if found else None


def first_good(
    results: Sequence[Result],
    *,
    now: datetime,
    max_age: Mapping[str, timedelta | None] | timedelta | None = None,
    serve_stale: bool = False,
) -> Result:
    """Return the first result with a frame that passes every check, else a failed result with every reason.

    `max_age` is one limit for all sources or a limit per source name (missing names: no limit).
    With `serve_stale`, when no result passes but some fail only for being stale, the freshest of
    those is returned (the earliest on a tie): stale data served loudly beats no data.
    """
    reasons, stale = [], []
    for result in results:
        limit = max_age.get(result.source) if isinstance(max_age, Mapping) else max_age
        why = refusal(result, now=now, max_age=limit)
        if why is None:
            return result
        if refusal(result, now=now, max_age=None) is None:  # refused for its age alone
            stale.append(result)
        reasons.append(f"{result.source}: {why}")
    if serve_stale and stale:
        return max(stale, key=lambda r: r.frame[DATE].max())  # max keeps the first of equals
    return Result("none", error="; ".join(reasons) or "no sources")


# -- Core: plausibility ----------------------------------------------------------------


def _when(frame: pl.DataFrame, which: Literal["min", "max"]) -> str:

    # polars holds dates Python cannot (year 33658, year -2): render them in polars
    return frame.select(getattr(pl.col(DATE), which)().cast(pl.String)).item()


def _moves(path: pl.DataFrame, jump: float) -> pl.DataFrame:
    """Each row's |log move| from the row before and the move credible over that many trading days."""

    days = pl.business_day_count(pl.col(DATE).shift(1), pl.col(DATE)).clip(lower_bound=1).cast(pl.Float64)
    return path.sort(DATE).with_columns(
        move=(pl.col(CLOSE).log() - pl.col(CLOSE).shift(1).log()).abs(), allowed=jump * days.sqrt()
    )


def _unreal(raw: pl.DataFrame, *, rules: Plausible, now: datetime) -> list[Finding]:
    """Non-finite closes, impossible dates and one date sent twice with closes far apart, in a frame as parsed."""

    found = []
    table = validity_rules(rules, now=now)
    for name, noun, which, end in (
        ("not finite", "", "min", "first on"),
        ("in the future", "bars ", "max", "last"),
        ("too early", "bars ", "min", "first"),
    ):
        rule = table[name]
        rows = raw.filter(rule.bad)
        if rows.height:
            found.append(Finding(rule.kind, f"{rows.height} {noun}{rule.words} ({end} {_when(rows, which)})"))
    valid = raw.filter(~unusable() & ~table["not finite"].bad)
    spread = valid.group_by(DATE).agg((pl.col(CLOSE).max() / pl.col(CLOSE).min()).log().alias("spread"))
    torn = spread.filter(pl.col("spread") > rules.jump)
    if torn.height:
        found.append(
            Finding(
                Problem.CONFLICTING_DUPLICATES,
                f"{torn.height} dates sent twice with closes {torn['spread'].max():.0%} (log) apart",
            )
        )
    return found


def _out_of_range(clean: pl.DataFrame, rules: Plausible) -> list[Finding]:

    rule = validity_rules(rules)["out of range"]
    out = clean.filter(rule.bad)
    if not out.height:
        return []
    last = out.sort(DATE).tail(1).row(0, named=True)
    return [Finding(rule.kind, f"{out.height} closes {rule.words} (last {last[CLOSE]:.6g} on {last[DATE]})")]


def _jumps(fresh: pl.DataFrame, history: pl.DataFrame | None, rules: Plausible) -> list[Finding]:

    found = []
    if history is None or history.is_empty():
        path = fresh.sort(DATE).tail(NEWEST_BARS + 1)
    else:
        both = fresh.join(history, on=DATE, suffix="_cached")
        revised = both.filter((pl.col(CLOSE) / pl.col(f"{CLOSE}_cached")).log().abs() > rules.jump).sort(DATE)
        if revised.height:
            first = revised.row(0, named=True)
            found.append(
                Finding(
                    Problem.JUMP,
                    f"{revised.height} cached days revised by more than {rules.jump:.0%} (log), "
                    f"{first[DATE]}: {first[f'{CLOSE}_cached']:.6g} -> {first[CLOSE]:.6g}",
                    since=first[DATE],
                )
            )
        newest = fresh.filter(pl.col(DATE) > history[DATE].max()).sort(DATE)
        path = (
            pl.concat([history.filter(pl.col(DATE) < newest[DATE].min()).sort(DATE).tail(1), newest])
            if newest.height
            else newest
        )
    far = _moves(path, rules.jump).slice(1).filter(pl.col("move") > pl.col("allowed"))
    if far.height:
        first = far.row(0, named=True)
        found.append(
            Finding(
                Problem.JUMP,
                f"newest bars jump {first['move']:.0%} (log) on {first[DATE]} to {first[CLOSE]:.6g}, "
                f"over the credible {first['allowed']:.0%}",
                since=first[DATE],
            )
        )
    return found


def implausible(
    raw: pl.DataFrame, clean: pl.DataFrame, *, rules: Plausible, now: datetime, history: pl.DataFrame | None = None
) -> list[Finding]:
    """Check a fetched frame before it may be merged; an empty list means it is plausible.

    `raw` is the frame as parsed (for non-finite closes, impossible dates and conflicting duplicates),
    `clean` the same after `clean_prices` (for the range and the jumps: real isolated bad prints are
    removed by cleaning, a bad last bar is not). The newest bars (after the cached `history`, or the
    last NEWEST_BARS without one) must not move beyond `rules.jump`, and no cached day may be revised
    by more than `rules.jump`.
    """
    found = _unreal(raw, rules=rules, now=now)
    if found:
        return found  # the range and jump checks below need real dates and finite closes
    found = _out_of_range(clean, rules)
    if found:
        return found
    return _jumps(clean.select(DATE, CLOSE), None if history is None else history.select(DATE, CLOSE), rules)


def confirms(suspect: pl.DataFrame, other: pl.DataFrame, *, since: date, rules: Plausible) -> bool:
    """True when `other` (the next source) has closes on the suspect's dates from `since` on, all within the jump."""

    mine = suspect.filter(pl.col(DATE) >= since).select(DATE, CLOSE)
    both = mine.join(other.select(DATE, pl.col(CLOSE).alias("other")), on=DATE)
    return both.height > 0 and bool(((pl.Series(both[CLOSE] / both["other"])).log().abs() <= rules.jump).all())


def _bad_tail(rows: pl.DataFrame, rules: Plausible) -> tuple[int, Finding] | None:
    """The row at which to cut a sorted history, after its last move beyond `rules.jump`, when fewer rows follow."""

    far = (
        _moves(rows.select(DATE, CLOSE), rules.jump)
        .with_row_index("_i")
        .slice(1)
        .filter(pl.col("move") > pl.col("allowed"))
    )
    if not far.height:
        return None
    cut = far["_i"].max()
    if rows.height - cut >= cut:
        return None
    detail = f"{rows.height - cut} rows from {rows[DATE][cut]} after a {far['move'][-1]:.0%} (log) jump"
    return cut, Finding(Problem.JUMP, detail, since=rows[DATE][cut])


def repair(frame: pl.DataFrame, *, rules: Plausible, now: datetime) -> tuple[pl.DataFrame, list[Finding]]:
    """The rows of a stored history that may be served, and what was dropped (a warehouse an older release poisoned).

    Drops null, non-finite and out-of-range closes, rows dated after tomorrow or before the series
    exists, and, after the last move beyond `rules.jump`, the side with fewer rows when that is the
    newer one (a bad answer merged at the end of the history).
    """

    found = []
    rows = frame.sort(DATE)
    table = validity_rules(rules, now=now)
    # a non-positive close is out of every series' range: it is dropped (and named) as such
    for rule in (table[name] for name in ("null", "not finite", "in the future", "too early", "out of range")):
        dropped = rows.filter(rule.bad)
        if dropped.height:
            found.append(Finding(rule.kind, f"{dropped.height} rows {rule.words}"))
            rows = rows.filter(~rule.bad)
    tail = _bad_tail(rows, rules)
    if tail is None:
        return rows, found
    cut, finding = tail
    return rows.head(cut), [*found, finding]


# -- Core: copper features -------------------------------------------------------------

FEATURES = (
    "copper_returns_1d",
    "copper_returns_5d",
    "copper_returns_20d",
    "copper_volatility_20d",
    "copper_volatility_60d",
    "copper_sma_20",
    "copper_sma_50",
    "copper_trend_signal",
    "copper_rsi_14",
    "copper_price_normalized",
    "copper_usdclp_correlation_90d",
)
TRADING_DAYS_PER_YEAR = 252


def _expr(col: str | pl.Expr) -> pl.Expr:

    return pl.col(col) if isinstance(col, str) else col


def _check_window(n: int) -> None:
    if n < 1:
        raise ValueError(f"window must be at least 1, got {n}")


def log_return(col: str | pl.Expr, n: int = 1) -> pl.Expr:
    """Log return over `n` rows; the first `n` rows are null."""
    _check_window(n)
    x = _expr(col)
    return (x / x.shift(n)).log().alias(f"copper_returns_{n}d")


def volatility(col: str | pl.Expr, n: int) -> pl.Expr:
    """Annualised (sqrt 252) sample std of daily log returns over `n` returns; the first `n` rows are null."""
    _check_window(n)
    return (log_return(col, 1).rolling_std(n, min_samples=n) * math.sqrt(TRADING_DAYS_PER_YEAR)).alias(
        f"copper_volatility_{n}d"
    )


def sma(col: str | pl.Expr, n: int) -> pl.Expr:
    """Simple moving average over `n` rows; the first `n-1` rows are null."""
    _check_window(n)
    return _expr(col).rolling_mean(n, min_samples=n).alias(f"copper_sma_{n}")


def trend_signal(col: str | pl.Expr, fast: int = 20, slow: int = 50) -> pl.Expr:
    """+1 when SMA `fast` is above SMA `slow`, -1 when below, 0 when equal or not yet known."""

    if fast >= slow:
        raise ValueError("fast window must be shorter than slow")
    gap = sma(col, fast) - sma(col, slow)
    # rolling sums drift by a few ulps; a gap below 1e-9 of the price counts as equal
    flat = gap.abs() <= 1e-9 * sma(col, slow).abs()
    return pl.when(flat).then(0).otherwise(gap.sign()).fill_null(0).cast(pl.Int8).alias("copper_trend_signal")


def rsi(col: str | pl.Expr, n: int = 14) -> pl.Expr:
    """Wilder's RSI: averages seeded with the simple mean of the first `n` changes, then Wilder-smoothed.

    The first `n` rows are null. 100 when there were no losses, 50 when nothing moved.
    """

    _check_window(n)
    change = _expr(col).diff()
    row = pl.int_range(pl.len())

    def wilder(moves: pl.Expr) -> pl.Expr:
        # seed row n with the simple mean, then y_t = y_{t-1} + (x_t - y_{t-1}) / n (alpha = 1/n, no adjust)
        seeded = pl.when(row == n).then(moves.rolling_mean(n, min_samples=n)).when(row > n).then(moves)
        return seeded.ewm_mean(alpha=1 / n, adjust=False, ignore_nulls=True)

    gain = wilder(change.clip(lower_bound=0))
    loss = wilder((-change).clip(lower_bound=0))
    value = (
        pl.when((gain == 0) & (loss == 0))
        .then(50.0)
        .when(loss == 0)
        .then(100.0)
        .otherwise(100 - 100 / (1 + gain / loss))
    )
    return pl.when(row >= n).then(value).alias(f"copper_rsi_{n}")


def zscore(col: str | pl.Expr, n: int = 252) -> pl.Expr:
    """Z-score of the price against its own trailing `n`-row mean and std (0 when the std is 0).

    The first `n-1` rows are null.
    """

    _check_window(n)
    x = _expr(col)
    mean, std = x.rolling_mean(n, min_samples=n), x.rolling_std(n, min_samples=n)
    return pl.when(std == 0).then(0.0).otherwise((x - mean) / std).alias("copper_price_normalized")


def rolling_correlation(a: str | pl.Expr, b: str | pl.Expr, n: int = 90) -> pl.Expr:
    """Correlation of the daily log returns of two prices over the last `n` returns; the first `n` rows are null."""

    _check_window(n)
    ra, rb = (_expr(a) / _expr(a).shift(1)).log(), (_expr(b) / _expr(b).shift(1)).log()
    return pl.rolling_corr(ra, rb, window_size=n, min_samples=n).alias("copper_usdclp_correlation_90d")


def feature_exprs(price: str, usdclp: str | None) -> Iterator[pl.Expr]:
    """The 11 copper features as expressions over one frame with a copper price column (and USD/CLP)."""

    for n in (1, 5, 20):
        yield log_return(price, n)
    for n in (20, 60):
        yield volatility(price, n)
    for n in (20, 50):
        yield sma(price, n)
    yield trend_signal(price, 20, 50)
    yield rsi(price, 14)
    yield zscore(price, 252)
    yield rolling_correlation(price, usdclp, 90) if usdclp else pl.lit(None, pl.Float64).alias(FEATURES[-1])


def copper_frequency(copper: pl.DataFrame) -> Literal["daily", "monthly"]:
    """'monthly' when the median gap between dates exceeds 20 days (FRED PCOPPUSDM), else 'daily'."""
    if copper.height < 2:
        return "daily"
    gap = copper[DATE].sort().diff().dt.total_days().median()
    return "monthly" if gap is not None and gap > 20 else "daily"


COPPER_MAX_GAP = timedelta(days=7)  # an as-of copper price older than this is missing, not carried


def align_copper(
    usdclp: pl.DataFrame, copper: pl.DataFrame, *, max_gap: timedelta | None = None, columns: Sequence[str] = ()
) -> pl.DataFrame:
    """Put on each USD/CLP date the last copper close from a strictly earlier New York date.

    A CLP=X bar dated D (London) is the quote at London midnight starting D, about 19:00 New
    York on D-1, after COMEX settled D-1 but before it trades D; so copper of NY date D-1 is the
    latest known, and copper dated D would be the future. With `max_gap`, a copper close older
    than that is null rather than carried. Returns `date`, `usdclp`, `copper` (and copper's other `columns`).
    """

    left = usdclp.select(pl.col(DATE), pl.col(CLOSE).alias("usdclp")).sort(DATE)
    right = copper.select(pl.col(DATE).alias("copper_date"), pl.col(CLOSE).alias("copper"), *columns)
    right = right.sort("copper_date")
    return left.join_asof(
        right, left_on=DATE, right_on="copper_date", strategy="backward", allow_exact_matches=False, tolerance=max_gap
    ).drop("copper_date")


def copper_is_stale(usdclp: pl.DataFrame, copper: pl.DataFrame) -> bool:
    """True when the last copper close is more than COPPER_MAX_GAP before the last USD/CLP date."""
    return usdclp[DATE].max() - copper[DATE].max() > COPPER_MAX_GAP


def copper_features(copper: pl.DataFrame, usdclp: pl.DataFrame | None = None) -> pl.DataFrame:
    """Compute the 11 copper features keyed by `date`: USD/CLP dates when given (no look-ahead), else copper dates.

    Daily windows count copper trading days: they are computed on copper's own calendar, then
    aligned to USD/CLP with `align_copper`; a USD/CLP date with no copper close in the 7 days
    before it gets nulls (missing copper is not carried forward). Monthly copper (FRED) gets
    nulls in every feature: no daily window pretends to exist. Warm-up rows are null.
    """

    monthly = copper_frequency(copper) == "monthly"
    own = copper.select(DATE, CLOSE).sort(DATE)
    if monthly:
        own = own.select(
            DATE, *(pl.lit(None, pl.Int8 if f == "copper_trend_signal" else pl.Float64).alias(f) for f in FEATURES)
        )
    else:
        own = own.with_columns(feature_exprs(CLOSE, None)).drop(CLOSE)
    if usdclp is None:
        return own.select(DATE, *FEATURES)
    aligned = align_copper(usdclp, copper, max_gap=COPPER_MAX_GAP)
    corr = aligned.select(DATE, rolling_correlation("copper", "usdclp", 90))
    if monthly:
        corr = corr.with_columns(pl.lit(None, pl.Float64).alias(FEATURES[-1]))
    own = copper.select(DATE, CLOSE).sort(DATE).join(own.drop(FEATURES[-1]), on=DATE)
    joined = align_copper(usdclp, own, max_gap=COPPER_MAX_GAP, columns=FEATURES[:-1])
    return joined.join(corr, on=DATE, how="left").select(DATE, *FEATURES)


@dataclass(frozen=True, slots=True)
class Bundle:
    """What a run forecasts from (the original guide's DataBundle): prices, copper features, sources, notes."""

    usdclp: pl.DataFrame
    copper: pl.DataFrame | None
    copper_features: pl.DataFrame | None
    sources: dict[str, str]
    notes: tuple[str, ...] = ()
    # what the series said about themselves (cache, seed, stale, rejected, bad prints)
    reasons: tuple[Reason[Degraded], ...] = ()

    @property
    def copper_frequency(self) -> Literal["daily", "monthly"] | None:
        """'daily' or 'monthly' (FRED), read off the copper dates; None without copper."""
        return None if self.copper is None else copper_frequency(self.copper)

    @property
    def _all_reasons(self) -> list[Reason[Degraded]]:
        found = []
        if self.copper is None:
            found.append(Reason(Degraded.NO_COPPER))
        elif self.copper_frequency == "monthly":
            found.append(Reason(Degraded.MONTHLY_COPPER))
        elif copper_is_stale(self.usdclp, self.copper):
            found.append(Reason(Degraded.STALE_COPPER))
        return found + list(self.reasons)

    @property
    def degraded(self) -> tuple[Degraded, ...]:
        """Why this run is weaker than a full one, as values (no, monthly or stale copper, cache, seed, stale...)."""
        return tuple(dict.fromkeys(r.kind for r in self._all_reasons))

    @property
    def degraded_detail(self) -> tuple[str, ...]:
        """The same reasons as sentences for people ("stale: USD/CLP last date 2024-07-15, 864 days old")."""
        return tuple(dict.fromkeys(str(r) for r in self._all_reasons))


def build_bundle(usdclp: ChosenSeries, copper: ChosenSeries) -> Bundle:
    """Assemble the bundle from two chosen series (USD/CLP must be ok)."""
    if not usdclp.ok:
        raise ValueError(f"no usable USD/CLP: {usdclp.error}")
    has_copper = copper.ok
    features = copper_features(copper.frame, usdclp.frame) if has_copper else None
    return Bundle(
        usdclp=usdclp.frame,
        copper=copper.frame if has_copper else None,
        copper_features=features,
        sources={"usdclp": usdclp.source, "copper": copper.source if has_copper else "none"},
        notes=usdclp.notes + copper.notes,
        reasons=usdclp.degraded + copper.degraded,
    )


def feature_problems(
    features: pl.DataFrame, usdclp: pl.DataFrame, copper: pl.DataFrame | None, *, now: datetime, max_age: timedelta
) -> list[str]:
    """Check every feature against its range and the prices against their units; empty means all good."""

    found = []
    checks = {
        "copper_rsi_14": pl.col("copper_rsi_14").is_between(0, 100),
        "copper_volatility_20d": pl.col("copper_volatility_20d") >= 0,
        "copper_volatility_60d": pl.col("copper_volatility_60d") >= 0,
        "copper_usdclp_correlation_90d": pl.col("copper_usdclp_correlation_90d").is_between(-1 - 1e-9, 1 + 1e-9),
        "copper_trend_signal": pl.col("copper_trend_signal").is_in([-1, 0, 1]),
    }
    for sma in ("copper_sma_20", "copper_sma_50"):  # held to copper's own range, as every fetch is
        checks[sma] = ~validity_rules(COPPER_RULES, column=sma)["out of range"].bad
    for name, ok in checks.items():
        bad = features.filter(~ok.fill_null(True)).height
        if bad:
            found.append(f"{name}: {bad} values out of range")
    # plausibility by unit: the same ranges every fetch is held to
    for name, frame in (("usdclp", usdclp), ("copper", copper)):
        rule = validity_rules(PLAUSIBLE[name])["out of range"]
        if frame is not None and frame.select(rule.bad.any()).item():
            found.append(f"{name}: closes {rule.words}")
    for name, frame in (("usdclp", usdclp), ("copper", copper)):
        if frame is not None:
            found += [f"{name}: {p}" for p in problems(frame, now=now, max_age=max_age)]
    return found


# -- Core: forecasting -----------------------------------------------------------------

MODELS = ("Naive", "AutoETS", "AutoARIMA", "AutoTheta")
# The random walk plus a regression on log copper lagged by the horizon (ARIMA(0,1,0) with an
# exogenous regressor): USD/CLP's change explained by copper's change `steps` days earlier, so
# it isolates what copper adds to the benchmark.
COPPER_MODEL = "Naive_copper"
ENSEMBLE = "Ensemble"  # what fxcu serves: the combination when it beat Naive out of sample, else Naive
COMBINATION = "Combination"  # the online-chosen rule's forecast, scored with no look-ahead
RULES = ("inverse_mse", "equal", "naive")
LEVELS = (80, 95)
HISTORY = 2520  # trading days modelled: ten years
WINDOWS, STEP = 60, 20  # backtest origins, and trading days between them (60 origins span ~4.8 years)


def horizon_steps(days: int) -> int:
    """The most weekdays any `days` consecutive calendar days can hold: 7d -> 5, 15d -> 11, 30d -> 22, 90d -> 65."""
    if days < 1:
        raise ValueError("horizon must be at least one day")
    return 5 * (days // 7) + min(days % 7, 5)


def trading_dates(last: date, days: int) -> list[date]:
    """The weekdays after `last` up to `last + days` calendar days: the dates a forecast path covers.

    Exchange holidays are not removed (no holiday calendar is assumed): they count as trading days.
    """
    return [d for d in (last + timedelta(days=k) for k in range(1, days + 1)) if d.weekday() < 5]


def _indexed(usdclp: pl.DataFrame) -> pl.DataFrame:
    """USD/CLP sorted by date, with `ds` counting its rows (trading days), so that every model frame shares it."""

    # polars has no business-day offset: statsforecast gets an integer index with freq=1

    return usdclp.select(DATE, CLOSE).sort(DATE).with_row_index("ds").with_columns(pl.col("ds").cast(pl.Int64))


def univariate_frame(usdclp: pl.DataFrame, history: int = HISTORY) -> pl.DataFrame:
    """statsforecast's input on log USD/CLP (`unique_id`, `ds`, `y`), the last `history` trading days."""

    tail = _indexed(usdclp).tail(history)
    return tail.select(pl.lit("usdclp").alias("unique_id"), "ds", pl.col(CLOSE).log().alias("y"))


def ds_dates(usdclp: pl.DataFrame, history: int = HISTORY) -> pl.DataFrame:
    """The date of each `ds` of `univariate_frame` (columns `ds`, `date`)."""
    return _indexed(usdclp).tail(history).select("ds", DATE)


def copper_frame(
    usdclp: pl.DataFrame, copper: pl.DataFrame | None, steps: int, history: int = HISTORY
) -> pl.DataFrame | None:
    """`univariate_frame` with `copper_lag`, or None without daily copper.

    `copper_lag` is log copper as known `steps` trading days earlier, so every value in a forecast
    window up to `steps` is known at its origin; rows with no copper yet are dropped. The frame
    ends on the same `ds` as `univariate_frame`.
    """

    if copper is None or copper_frequency(copper) != "daily":
        return None
    base = _indexed(usdclp)
    aligned = align_copper(base.select(DATE, CLOSE), copper)
    lagged = base.with_columns(aligned["copper"].log().shift(steps).alias("copper_lag")).tail(history)
    return lagged.drop_nulls("copper_lag").select(
        pl.lit("usdclp").alias("unique_id"), "ds", pl.col(CLOSE).log().alias("y"), "copper_lag"
    )


def _models() -> list:
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, Naive

    # season_length=1: the series is indexed by trading day, and FX has no weekly season to fit
    return [Naive(), AutoETS(season_length=1), AutoARIMA(season_length=1), AutoTheta(season_length=1)]


def _copper_models() -> list:
    from statsforecast.models import ARIMA

    return [ARIMA(order=(0, 1, 0), season_length=1, alias=COPPER_MODEL)]


def _quiet_statsforecast() -> contextlib.AbstractContextManager:

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")  # statsforecast warns on every polars input about pandas conversions
    return stack


def cross_validate(frame: pl.DataFrame, models: list, steps: int, windows: int, step_size: int) -> pl.DataFrame:
    """statsforecast rolling-origin predictions (log scale) for every step of every window.

    The models are fitted once on the data before the first origin and then
    only `forward`ed over each later origin's history: no origin sees data after it.
    """
    from statsforecast import StatsForecast

    with _quiet_statsforecast():
        sf = StatsForecast(models=models, freq=1, n_jobs=1)
        return sf.cross_validation(
            df=frame, h=steps, n_windows=windows, step_size=step_size, refit=False, level=list(LEVELS)
        )


@dataclass(frozen=True, slots=True)
class Score:
    """One model's backtest accuracy at the horizon date, in CLP per USD."""

    rmse: float
    mae: float
    mape: float  # percent
    ratio: float  # RMSE / Naive RMSE
    direction: float | None  # share of origins with a called move whose sign was right; None if it never calls one
    coverage_80: float
    coverage_95: float
    origins: int


def score(
    pred: np.ndarray, actual: np.ndarray, last: np.ndarray, bounds: Mapping[str, np.ndarray], naive_rmse: float | None
) -> Score:
    """Accuracy of point forecasts and intervals against outcomes (all in price units)."""

    err = pred - actual
    rmse = float(np.sqrt(np.mean(err**2)))
    called = np.sign(pred - last) != 0
    direction = float(np.mean(np.sign(pred - last)[called] == np.sign(actual - last)[called])) if called.any() else None
    cover = {lv: float(np.mean((bounds[f"lo-{lv}"] <= actual) & (actual <= bounds[f"hi-{lv}"]))) for lv in LEVELS}
    return Score(
        rmse=rmse,
        mae=float(np.mean(np.abs(err))),
        mape=float(np.mean(np.abs(err / actual)) * 100),
        ratio=rmse / naive_rmse if naive_rmse else 1.0,
        direction=direction,
        coverage_80=cover[80],
        coverage_95=cover[95],
        origins=len(actual),
    )


def online_weights(
    sq_errors: np.ndarray, cutoffs: np.ndarray, steps: int, rule: str, names: Sequence[str]
) -> np.ndarray:
    """Ensemble weights per origin (rows) and model (columns named by `names`) from errors realised before each origin.

    `inverse_mse`: weights proportional to 1/MSE over origins whose horizon date (cutoff + steps)
    is not after this origin; equal weights until one exists. `equal`: 1/k. `naive`: all on the
    column named Naive.
    """

    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}")
    return np.array([final_weights(sq_errors[cutoffs + steps <= cutoff], rule, names) for cutoff in cutoffs])


def final_weights(sq_errors: np.ndarray, rule: str, names: Sequence[str]) -> np.ndarray:
    """Weights for a live forecast (columns named by `names`): the rule applied to every backtest error."""

    k = sq_errors.shape[1]
    if rule == "naive":
        return np.eye(k)[list(names).index("Naive")]
    if rule == "equal" or not len(sq_errors):  # INFO: no error realised yet: equal weights
        return np.full(k, 1 / k)
    inv = 1 / np.maximum(sq_errors.mean(axis=0), 1e-18)
    return inv / inv.sum()


@dataclass(frozen=True, slots=True)
class Backtest:
    """A rolling-origin backtest of every model and the ensemble at one horizon."""

    horizon: str
    steps: int
    models: dict[str, Score]
    rule: str
    weights: dict[str, float]
    origins: tuple[date, ...]
    rule_rmse: dict[str, float]
    copper_used: bool
    copper_ablation_pct: float | None  # ensemble RMSE with copper vs without, same origins (negative: copper helped)
    copper_model_pct: float | None  # Naive_copper vs Naive: the random walk with and without lagged copper
    predictions: pl.DataFrame = field(repr=False)
    notes: tuple[str, ...] = ()

    @property
    def ensemble(self) -> Score:
        return self.models[ENSEMBLE]


def _combine(preds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (preds * weights).sum(axis=1)


def online_rule(rule_sq: Mapping[str, np.ndarray], cutoffs: np.ndarray, steps: int) -> list[str]:
    """The rule each origin would have chosen: lowest MSE over the origins already realised, `naive` until one is.

    Ties go to `naive`, then `equal`: a rule must beat the simpler one to replace it.
    """

    chosen = []
    for i in range(len(cutoffs)):
        known = cutoffs + steps <= cutoffs[i]
        if not known.any():
            chosen.append("naive")
            continue
        mse = {rule: float(np.mean(rule_sq[rule][known])) for rule in RULES}
        chosen.append(min(RULES[::-1], key=mse.__getitem__))
    return chosen


@dataclass(frozen=True, slots=True)
class EnsembleChoice:
    """What the backtest says about combining: the served point per origin, the live rule and weights."""

    served: np.ndarray  # log forecast per origin of what fxcu serves (the combination, or Naive)
    combination: np.ndarray  # log forecast per origin of the online-chosen rule
    rule: str  # the live rule: the combination's latest choice, or "naive" when combining lost
    weights: np.ndarray  # live weights per model
    rule_rmse: dict[str, float]
    notes: tuple[str, ...]


def choose_ensemble(
    predictions: Mapping[str, np.ndarray], actual: np.ndarray, cutoffs: np.ndarray, steps: int
) -> EnsembleChoice:
    """Combine the models (log forecasts by name, Naive among them) with no look-ahead; Naive if combining lost.

    At each origin the rule (RULES) and its weights come only from outcomes realised before it
    (`online_rule`, `online_weights`): that is the combination's honest score. If it is not
    better than Naive, fxcu serves Naive and says so. Live: the rule with the lowest MSE over
    every backtest origin, which is what the combination would choose next.
    """

    names = list(predictions)
    logs, naive = np.column_stack([predictions[n] for n in names]), predictions["Naive"]
    sq = (np.exp(logs) - actual[:, None]) ** 2
    per_rule = {rule: _combine(logs, online_weights(sq, cutoffs, steps, rule, names)) for rule in RULES}
    rule_sq = {rule: (np.exp(pred) - actual) ** 2 for rule, pred in per_rule.items()}
    picks = online_rule(rule_sq, cutoffs, steps)
    combination = np.array([per_rule[rule][i] for i, rule in enumerate(picks)])
    rmse = lambda pred: float(np.sqrt(np.mean((np.exp(pred) - actual) ** 2)))  # noqa: E731
    rule_rmse = {rule: rmse(pred) for rule, pred in per_rule.items()}
    if rmse(combination) < rmse(naive):
        live = min(RULES[::-1], key=rule_rmse.__getitem__)
        return EnsembleChoice(combination, combination, live, final_weights(sq, live, names), rule_rmse, ())
    ratio = rmse(combination) / rmse(naive)
    note = f"combining models lost to Naive out of sample ({ratio:.4f}x its RMSE): serving Naive"
    return EnsembleChoice(naive, combination, "naive", final_weights(sq, "naive", names), rule_rmse, (note,))


def _predictions(at_h: pl.DataFrame, names: list[str], dates: pl.DataFrame, choice: EnsembleChoice) -> pl.DataFrame:
    """Each origin's log forecasts at the horizon date, by model, with the combination and the served ensemble."""

    date_of = dict(zip(dates["ds"].to_list(), dates[DATE].to_list(), strict=True))
    return at_h.select("cutoff", "ds", "y", *names).with_columns(
        pl.col("cutoff").replace_strict(date_of, return_dtype=pl.Date).alias("origin"),
        pl.col("ds").replace_strict(date_of, return_dtype=pl.Date).alias("target"),
        pl.Series(COMBINATION, choice.combination),
        pl.Series(ENSEMBLE, choice.served),
    )


def _score_backtest(
    horizon: str,
    steps: int,
    at_h: pl.DataFrame,
    names: list[str],
    uni: pl.DataFrame,
    dates: pl.DataFrame,
    notes: list[str],
) -> Backtest:
    """Score every model, the combination and the served ensemble at the horizon date, and the copper ablation."""

    cutoffs = at_h["cutoff"].to_numpy()
    last_log = uni.join(at_h.select(pl.col("cutoff").alias("ds")), on="ds", how="semi").sort("ds")["y"].to_numpy()
    actual, last = np.exp(at_h["y"].to_numpy()), np.exp(last_log)

    naive_rmse = float(np.sqrt(np.mean((np.exp(at_h["Naive"].to_numpy()) - actual) ** 2)))
    scores = {}
    for name in names:
        bounds = {
            f"{side}-{lv}": np.exp(at_h[f"{name}-{side}-{lv}"].to_numpy()) for lv in LEVELS for side in ("lo", "hi")
        }
        scores[name] = score(np.exp(at_h[name].to_numpy()), actual, last, bounds, naive_rmse)

    logs = {n: at_h[n].to_numpy() for n in names}
    choice = choose_ensemble(logs, actual, cutoffs, steps)
    # Intervals of the served point and of the combination: Naive's width around the point. The
    # other models' own intervals are measured far too narrow (53-75% cover at 80%); Naive's are not.
    width = lambda key: at_h[f"Naive-{key}"].to_numpy() - at_h["Naive"].to_numpy()  # noqa: E731
    for name, point in ((COMBINATION, choice.combination), (ENSEMBLE, choice.served)):
        bounds = {f"{side}-{lv}": np.exp(point + width(f"{side}-{lv}")) for lv in LEVELS for side in ("lo", "hi")}
        scores[name] = score(np.exp(point), actual, last, bounds, naive_rmse)
    notes += choice.notes

    copper_used = COPPER_MODEL in names
    ablation = None
    if copper_used:
        without = choose_ensemble({n: v for n, v in logs.items() if n != COPPER_MODEL}, actual, cutoffs, steps)
        ablation = (scores[ENSEMBLE].rmse / float(np.sqrt(np.mean((np.exp(without.served) - actual) ** 2))) - 1) * 100
    if scores[ENSEMBLE].ratio > 1:
        notes.append(f"ensemble RMSE is {scores[ENSEMBLE].ratio:.4f}x Naive's on the backtest")
    predictions = _predictions(at_h, names, dates, choice)
    return Backtest(
        horizon=horizon,
        steps=steps,
        models=scores,
        rule=choice.rule,
        weights=dict(zip(names, map(float, choice.weights), strict=True)),
        origins=tuple(predictions["origin"].to_list()),
        rule_rmse=choice.rule_rmse,
        copper_used=copper_used,
        copper_ablation_pct=ablation,
        copper_model_pct=(scores[COPPER_MODEL].rmse / naive_rmse - 1) * 100 if copper_used else None,
        predictions=predictions,
        notes=tuple(notes),
    )


def backtest_all(
    usdclp: pl.DataFrame,
    copper: pl.DataFrame | None = None,
    horizons: Sequence[str] = tuple(HORIZONS),
    windows: int = WINDOWS,
    *,
    step_size: int = STEP,
    history: int = HISTORY,
) -> dict[str, Backtest]:
    """Backtest every model and the ensemble at each horizon, on one shared set of origins.

    The origins are the last `windows` trading days `step_size` apart whose longest horizon
    (90d, 65 trading days) is already known, the same for every horizon: the univariate models
    are cross-validated once, as far as the longest horizon asked for, and read at each horizon's
    step: `run all` costs little more than `run 90d`, and `run 7d` forecasts 5 steps, not 65. The
    copper model is cross-validated per horizon (its lag is the horizon).
    """

    steps_of = {h: horizon_steps(parse_horizon(h)) for h in horizons}
    span = horizon_steps(max(HORIZONS.values()))
    uni, dates = univariate_frame(usdclp, history), ds_dates(usdclp, history)
    needed = span + (windows - 1) * step_size + 100
    if uni.height < needed:
        raise ValueError(f"{uni.height} trading days are too few for {windows} backtest origins (need {needed})")
    last_origin = uni["ds"].max() - span
    # forecast only as far as the longest horizon asked for, from the same origins: a step's forecast
    # does not depend on how many steps follow it, so `run 7d` skips 60 of 65 steps at every origin
    longest = max(steps_of.values())
    cv = cross_validate(uni.filter(pl.col("ds") <= last_origin + longest), _models(), longest, windows, step_size)
    results = {}
    for horizon, steps in steps_of.items():
        at_h = cv.filter(pl.col("ds") == pl.col("cutoff") + steps)
        names, notes = list(MODELS), []
        exog = copper_frame(usdclp, copper, steps, history)
        if exog is not None and copper_is_stale(usdclp, copper):
            notes.append(f"copper stale (last {copper[DATE].max()}): no copper model")
            exog = None
        if exog is not None:
            # cut the frame so this run's origins are the shared ones (last origin = last_origin)
            exog = exog.filter(pl.col("ds") <= last_origin + steps)
            if exog.height >= needed:
                cvx = cross_validate(exog, _copper_models(), steps, windows, step_size)
                at_h = at_h.join(cvx.drop("y"), on=["unique_id", "ds", "cutoff"], how="inner")
                names.append(COPPER_MODEL)
            else:
                notes.append(f"copper history too short for the copper model ({exog.height} of {needed} days)")
        results[horizon] = _score_backtest(horizon, steps, at_h.sort("cutoff"), names, uni, dates, notes)
    return results


def backtest(
    usdclp: pl.DataFrame,
    copper: pl.DataFrame | None = None,
    horizon: str = "7d",
    windows: int = WINDOWS,
    *,
    step_size: int = STEP,
    history: int = HISTORY,
) -> Backtest:
    """Backtest Naive, AutoETS, AutoARIMA, AutoTheta, Naive_copper (lagged copper) and the ensemble at one horizon.

    Rolling origin (see `backtest_all` for the origins), expanding window, errors measured at the
    horizon date. The ensemble rule is the one of RULES with the lowest RMSE, so it is never
    worse than Naive on this backtest; its weights at each origin come only from outcomes known
    by then. The copper ablation repeats the ensemble without the copper model on the same origins.
    """
    return backtest_all(usdclp, copper, [horizon], windows, step_size=step_size, history=history)[horizon]


# -- Core: proper scores ---------------------------------------------------------------


def z_value(level: int) -> float:
    """The standard normal quantile that bounds a central `level`% interval: 80 -> 1.2816."""

    return NormalDist().inv_cdf(0.5 + level / 200)


def crps(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """CRPS of Gaussian forecasts N(mu, sigma^2) per outcome (scoringrules' closed form)."""
    import scoringrules as sr

    return sr.crps_normal(y, mu, sigma)


def interval_score(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, level: int) -> np.ndarray:
    """Interval score per outcome, width plus 2/alpha times the miss (scoringrules, Gneiting & Raftery 2007)."""
    import scoringrules as sr

    return sr.interval_score(y, lo, hi, 1 - level / 100)


WIS_QUANTILES = (0.025, 0.1, 0.5, 0.9, 0.975)  # the 95% and 80% bounds, and the point forecast as the median


def wis(frame: pl.DataFrame, models: Mapping[str, Sequence[str]], target: str = "actual") -> pl.DataFrame:
    """Weighted interval score per row (Bracher et al. 2021, canonical weights) of each model's WIS_QUANTILES columns.

    With the point as the median and K central intervals, WIS is twice the mean pinball loss over the
    2K+1 quantiles, which utilsforecast.losses.mqloss computes. (scoringrules 0.10.0's numpy WIS adds
    half the median itself instead of half |y - median|, so it is not used.) Returns `row` and one column per model.
    """
    from utilsforecast.losses import mqloss

    cols = [target, *{c for names in models.values() for c in names}]
    rows = frame.select(cols).with_row_index("row")
    out = mqloss(
        rows,
        models={m: list(c) for m, c in models.items()},
        quantiles=np.array(WIS_QUANTILES),
        id_col="row",
        target_col=target,
    )
    return out.sort("row").with_columns(pl.col(m) * 2 for m in models)


def coverage_table(frame: pl.DataFrame, models: Sequence[str], level: int, by: str) -> dict[str, dict[str, float]]:
    """Share of outcomes inside each model's `level`% interval per value of `by` (utilsforecast.losses.coverage)."""
    from utilsforecast.losses import coverage

    table = coverage(frame, list(models), level, id_col=by, target_col="y")
    return {str(row[by]): {m: float(row[m]) for m in models} for row in table.iter_rows(named=True)}


# -- Core: interval (variance) models and the weekly density backtest ------------------

# Candidate range models for the served range, by name. Each gives the variance of the k-day log
# return at an origin from data up to that origin only; the range is Gaussian in log price around
# the served point, except FHS's, whose shape is that of past returns (`fhs_distribution`).
INTERVAL_MODELS: dict[str, str] = {
    "Naive": "Naive's range (daily volatility times the square root of trading days)",
    "EWMA": "range from the EWMA of daily returns (RiskMetrics)",
    "EWMA_5d": "range from the EWMA of 5-day returns",
    "EWMA_5d_blend": "range from the EWMA of 5-day returns blended with their long-run variance",
    "Recal": "range from the blended 5-day variance, recalibrated on past outcomes",
    "Recal_copper": "range from the blended 5-day variance and copper's volatility, recalibrated on past outcomes",
    "FHS": "range from past returns rescaled to today's volatility (filtered historical simulation)",
}
FHS = "FHS"
# A non-Gaussian density is stored as its standardised quantiles at these probabilities: its lowest value,
# every percentile, its highest. Between them the quantile function is linear; beyond them nothing is expected.
SHAPE_GRID = np.linspace(0.0, 1.0, 101)
RUN_INTERVAL_MODELS = tuple(INTERVAL_MODELS)
SERVED = "Served"  # the interval model chosen at each origin from outcomes known by then
DENSITY_ORIGINS, DENSITY_EVERY = 252, 5  # weekly origins over the last five years, the same for every horizon
DAILY_DECAY, MULTI_DAY_DECAY = 0.94, 0.97  # RiskMetrics' daily and monthly decay factors (1996), not fitted here
K_DAYS = 5  # trading days per multi-day return: a week, longer than the quote noise that reverses next day
PERSISTENCE = 0.98  # daily persistence of a variance shock (a typical FX GARCH alpha+beta), for the blend
REGIMES = ("calm", "middle", "turbulent")  # terciles of trailing 20-day realised volatility at the origin
NAMED_WINDOWS: dict[str, tuple[date, date]] = {
    "2019-10..2020-06": (date(2019, 10, 1), date(2020, 6, 30)),
    "2022": (date(2022, 1, 1), date(2022, 12, 31)),
}
BOOTSTRAP_REPS = 500


def ewma(values: np.ndarray, decay: float) -> np.ndarray:
    """Exponentially weighted mean s_t = decay * s_(t-1) + (1 - decay) * x_t, started at x_0 (scipy's `lfilter`)."""
    from scipy.signal import lfilter

    return lfilter([1 - decay], [1, -decay], values, zi=[decay * values[0]])[0]


def blend_weight(steps: int, persistence: float = PERSISTENCE) -> float:
    """Weight of today's variance in the mean variance of the next `steps` days (shocks decay by `persistence`)."""
    return (1 - persistence**steps) / (steps * (1 - persistence))


def base_variances(logp: np.ndarray, steps: int) -> dict[str, np.ndarray]:
    """Variance of the k-day log return for k = 1..steps, per base model, at the last point of `logp` (the origin).

    Only `logp` is used, so an origin's variances never see a later price. `Naive` is statsforecast
    Naive's width (mean squared daily change, times k); `EWMA` RiskMetrics' daily EWMA times k;
    `EWMA_5d` the EWMA of overlapping 5-day squared returns times k/5; `EWMA_5d_blend` that blended
    with the mean 5-day squared return of the whole window, the EWMA's weight falling with k as a
    variance shock decays.
    """

    k = np.arange(1, steps + 1)
    daily = np.diff(logp)
    weekly = logp[K_DAYS:] - logp[:-K_DAYS]
    ewma_5d, long_run = ewma(weekly**2, MULTI_DAY_DECAY)[-1] / K_DAYS, np.mean(weekly**2) / K_DAYS
    weight = np.array([blend_weight(int(s)) for s in k])
    return {
        "Naive": np.mean(daily**2) * k,
        "EWMA": ewma(daily**2, DAILY_DECAY)[-1] * k,
        "EWMA_5d": ewma_5d * k,
        "EWMA_5d_blend": (weight * ewma_5d + (1 - weight) * long_run) * k,
    }


def realised_vol(logp: np.ndarray) -> float:
    """Standard deviation of the last 20 daily log returns (the origin's trailing realised volatility)."""

    return float(np.std(np.diff(logp[-21:]), ddof=1))


def recal_features(logp: np.ndarray, copper_logp: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per day of `logp`, what the recalibration regresses on, each known on that day.

    `ewma_5d` and `long_run`: EWMA and expanding mean of squared overlapping 5-day returns, per
    day; `copper_rv`: copper's mean squared daily log return over 20 days (NaN where unknown).
    """

    weekly = np.concatenate([np.zeros(K_DAYS), logp[K_DAYS:] - logp[:-K_DAYS]]) ** 2
    seen = np.maximum(np.arange(1, len(logp) + 1) - K_DAYS, 1)
    out = {"ewma_5d": ewma(weekly, MULTI_DAY_DECAY) / K_DAYS, "long_run": np.cumsum(weekly) / seen / K_DAYS}
    if copper_logp is not None:
        sq = np.concatenate([[np.nan], np.diff(copper_logp)]) ** 2
        # a window with a missing copper day is unknown (NaN)
        out["copper_rv"] = np.concatenate([np.full(19, np.nan), sliding_window_view(sq, 20).mean(axis=1)])
    return out


def recalibrated(logp: np.ndarray, features: Mapping[str, np.ndarray], steps: int) -> dict[str, float]:
    """Variance of the `steps`-day log return at the origin (the last day) from regressions on outcomes already known.

    On every 5th past day t counted back from the origin whose outcome (t + steps) is on or
    before the origin, the squared `steps`-day return is regressed (OLS) on the blended 5-day
    variance known at t (`Recal`) and also on copper's 20-day realised variance at t
    (`Recal_copper`, when `features` has it). A prediction is floored at a quarter of the blend
    (a linear fit can go below zero); the first 65 days are warm-up.
    """

    weight = blend_weight(steps)
    blend = (weight * features["ewma_5d"] + (1 - weight) * features["long_run"]) * steps
    x = np.column_stack([np.ones_like(blend), blend, features.get("copper_rv", np.zeros_like(blend)) * steps])
    target = np.full(len(logp), np.nan)
    target[:-steps] = (logp[steps:] - logp[:-steps]) ** 2
    usable = ~np.isnan(target) & ~np.isnan(x[:, 2])
    usable[: K_DAYS + 60] = False  # the EWMA and long-run mean need a few weeks before they mean anything
    usable[(len(logp) - 1 - np.arange(len(logp))) % K_DAYS != 0] = False  # weekly rows: overlapping ones add little
    out = {"Recal": float(blend[-1]), "Recal_copper": float(blend[-1])}
    if usable.sum() < 50 or np.isnan(x[-1]).any():
        return out if "copper_rv" in features else {"Recal": out["Recal"]}
    xu, yu = x[usable], target[usable]
    gram, moment = xu.T @ xu, xu.T @ yu  # normal equations: one pass over the rows serves both regressions
    for name, k in (("Recal", 2), ("Recal_copper", 3)):
        with contextlib.suppress(np.linalg.LinAlgError):  # a singular fit (constant regressor) keeps the blend
            coef = np.linalg.solve(gram[:k, :k], moment[:k])
            out[name] = float(max(x[-1, :k] @ coef, blend[-1] / 4))
    return out if "copper_rv" in features else {"Recal": out["Recal"]}


def fhs_distribution(logp: np.ndarray, features: Mapping[str, np.ndarray], steps: int) -> tuple[float, list | None]:
    """The filtered-historical-simulation density of the `steps`-day log return at the origin (the last day).

    Barone-Adesi et al. (1999): every past `steps`-day log return whose outcome is known by the origin,
    divided by the blended 5-day sd known on its own first day, is a draw of the standardised return;
    today's blended sd (the scale) times those draws is the density. The draws are centred on their
    median, so the served point stays the median. Returns (scale, the draws' quantiles at SHAPE_GRID);
    with fewer than 50 draws after the warm-up (as `recalibrated`), (scale, None): the Gaussian.
    """
    weight = blend_weight(steps)
    sd = np.sqrt((weight * features["ewma_5d"] + (1 - weight) * features["long_run"]) * steps)
    start = np.arange(K_DAYS + 60, len(logp) - steps)  # the first K_DAYS + 60 days are warm-up
    if len(start) < 50:
        return float(sd[-1]), None
    draws = (logp[start + steps] - logp[start]) / sd[start]
    return float(sd[-1]), np.quantile(draws - np.median(draws), SHAPE_GRID).tolist()


def variance_paths(
    logp: np.ndarray, copper_logp: np.ndarray | None, steps: int, models: Sequence[str] = RUN_INTERVAL_MODELS
) -> dict[str, np.ndarray]:
    """Variance of the k-day log return for k = 1..steps at the end of `logp`, per model in `models`.

    The Recal models are fitted at k = steps, and FHS's scale found there; both are carried to shorter k in
    proportion to the blend.
    """
    out = base_variances(logp, steps)
    if {"Recal", "Recal_copper", FHS} & set(models):
        features = recal_features(logp, copper_logp)
        known = recalibrated(logp, features, steps) | {FHS: fhs_distribution(logp, features, steps)[0] ** 2}
        for name, var in known.items():
            out[name] = out["EWMA_5d_blend"] * var / out["EWMA_5d_blend"][-1]
    return {name: out[name] for name in models if name in out}


def log_prices(usdclp: pl.DataFrame, copper: pl.DataFrame | None) -> tuple[np.ndarray, list[date], np.ndarray | None]:
    """Log USD/CLP closes, their dates, and log copper as known on each date.

    Copper is NaN where unknown, and None when there is no fresh daily copper.
    """

    prices = usdclp.select(DATE, CLOSE).sort(DATE)
    logp, days = np.log(prices[CLOSE].to_numpy()), prices[DATE].to_list()
    if copper is None or copper_frequency(copper) != "daily" or copper_is_stale(usdclp, copper):
        return logp, days, None
    return logp, days, np.log(align_copper(prices, copper)["copper"].cast(pl.Float64).fill_null(np.nan).to_numpy())


def density_origins(
    n: int, *, longest: int, origins: int = DENSITY_ORIGINS, every: int = DENSITY_EVERY, min_history: int = 500
) -> list[int]:
    """Row indices of the weekly origins: every `every`-th row back from the last one whose `longest` horizon is known.

    At most `origins` of them, each with at least `min_history` rows before it.
    """
    last = n - 1 - longest
    return [i for i in range(last, min_history - 1, -every)][:origins][::-1]


def density_frame(
    usdclp: pl.DataFrame,
    copper: pl.DataFrame | None,
    horizons: Sequence[str] = tuple(HORIZONS),
    *,
    origins: int = DENSITY_ORIGINS,
    every: int = DENSITY_EVERY,
    history: int = HISTORY,
    models: Sequence[str] = RUN_INTERVAL_MODELS,
) -> pl.DataFrame:
    """The prediction frame: one row per origin and horizon with each model's k-day log-return standard deviation.

    Columns: horizon, steps, ds (the origin's row), origin, target, last and y (log price at the
    origin and at the horizon date), vol20 (trailing 20-day realised volatility), one column per
    model, and FHS's shape (`shape_column`). Every value at an origin comes from the last `history`
    rows up to it (copper as known at the origin, `align_copper`); models are refitted at every origin.
    """

    logp, days, copper_logp = log_prices(usdclp, copper)
    if copper_logp is None:
        models = [m for m in models if m != "Recal_copper"]
    steps_of = {h: horizon_steps(parse_horizon(h)) for h in horizons}
    longest = horizon_steps(max(HORIZONS.values()))
    rows = density_origins(len(logp), longest=longest, origins=origins, every=every)
    records = []
    for i in rows:
        window = logp[max(0, i + 1 - history) : i + 1]
        cu = copper_logp[max(0, i + 1 - history) : i + 1] if copper_logp is not None else None
        base, features = base_variances(window, longest), recal_features(window, cu)
        vol20 = realised_vol(window)
        for horizon, steps in steps_of.items():
            var = {m: v[steps - 1] for m, v in base.items()} | recalibrated(window, features, steps)
            scale, shape = fhs_distribution(window, features, steps) if FHS in models else (math.nan, None)
            var[FHS] = scale**2
            record = {
                "horizon": horizon,
                "steps": steps,
                "ds": i,
                "origin": days[i],
                "target": days[i + steps],
                "last": logp[i],
                "y": logp[i + steps],
                "vol20": vol20,
            }
            record |= {shape_column(FHS): shape} if FHS in models else {}
            records.append(record | {m: float(np.sqrt(var[m])) for m in models})
    shaped = {shape_column(FHS): pl.List(pl.Float64)} if FHS in models else None
    return pl.DataFrame(records, schema_overrides=shaped)


@dataclass(frozen=True, slots=True)
class Ratio:
    """A candidate's mean score over Naive's, with a block-bootstrap confidence interval (95%)."""

    value: float
    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class DensityScore:
    """One interval model's distribution scores at the horizon date, over the weekly origins (log-price units)."""

    crps: float
    wis: float
    is80: float
    is95: float
    crps_ratio: Ratio
    wis_ratio: Ratio
    is80_ratio: Ratio
    is95_ratio: Ratio
    coverage_80: float
    coverage_95: float
    coverage_80_ci: tuple[float, float]
    coverage_by: dict[
        str, tuple[float, float]
    ]  # regime or named window -> (80% cover, 95% cover); NaN if no origin there
    origins: int
    pit_deciles: tuple[float, ...]  # share of PIT values (the forecast CDF at the outcome) in each tenth of [0, 1]
    pit_p: float  # p-value of uniform PIT deciles (`pit_uniformity`: block bootstrap over origins)
    coverage_98: float  # share of outcomes inside the central 98% interval: the tails a hedger cares about
    brier_skill: dict[str, Ratio]  # per BRIER_MOVES event: 1 - Brier / Naive's Brier, with a block-bootstrap CI


@dataclass(frozen=True, slots=True)
class IntervalChoice:
    """The interval model chosen at each origin (no look-ahead) and the one served live."""

    picks: tuple[str, ...]
    served_sigma: np.ndarray
    live: str
    notes: tuple[str, ...]
    served_shapes: tuple = ()  # per origin the served shape (None: Gaussian); empty when no candidate has one


@dataclass(frozen=True, slots=True)
class DensityBacktest:
    """The weekly density backtest of every interval model at one horizon."""

    horizon: str
    steps: int
    models: dict[str, DensityScore]  # each candidate and SERVED
    live: str  # the interval model served live ("Naive" unless one beat it out of sample)
    copper_ablation_pct: float | None  # CRPS of Recal_copper against Recal, same origins (negative: copper helped)
    origins: tuple[date, ...]
    predictions: pl.DataFrame = field(repr=False)
    notes: tuple[str, ...] = ()

    @property
    def served(self) -> DensityScore:
        """The honest score of what is served: the picks made at each origin, or Naive's when choosing lost."""
        return self.models["Naive" if self.live == "Naive" else SERVED]


def ratio_ci(
    scores: Mapping[str, np.ndarray], base: str | Mapping[str, str], steps: int, *, reps: int = BOOTSTRAP_REPS
) -> dict[str, Ratio]:
    """Mean score of each model over `base`'s, with a 95% circular block bootstrap interval over origins (arch).

    Blocks span the origins whose outcomes overlap (steps / DENSITY_EVERY), plus one. `base` may map
    each score to its own base score, so that several families of ratios share one set of resamples.
    """
    from arch.bootstrap import CircularBlockBootstrap

    names = list(scores)
    values = np.column_stack([scores[m] for m in names])
    if isinstance(base, str):
        ratio = lambda v: v.mean(axis=0) / v[:, names.index(base)].mean()  # noqa: E731
    else:
        own = [names.index(base[m]) for m in names]
        ratio = lambda v: v.mean(axis=0) / v[:, own].mean(axis=0)  # noqa: E731
    boot = CircularBlockBootstrap(block_length(steps), values, seed=0)
    means, (lo, hi) = ratio(values), np.quantile(boot.apply(ratio, reps), [0.025, 0.975], axis=0)
    return {m: Ratio(float(means[j]), float(lo[j]), float(hi[j])) for j, m in enumerate(names)}


PIT_BINS = 10  # deciles
TAIL_LEVEL = 98  # the central interval whose coverage says whether the tails are right
BRIER_MOVES = (-0.05, -0.025, 0.025, 0.05)  # events "above last close x (1 + move)" whose odds are scored


def block_length(steps: int) -> int:
    """Block length of the bootstraps over weekly origins: the origins whose outcomes overlap, plus one."""
    return max(1, math.ceil(steps / DENSITY_EVERY)) + 1


def shape_column(model: str) -> str:
    """The column of a density frame holding `model`'s shapes (standardised quantiles at SHAPE_GRID, or null)."""
    return f"{model}_shape"


def frame_shapes(frame: pl.DataFrame, model: str) -> list | None:
    """Each row's shape for `model` (None in a row whose density is Gaussian); None when the frame has none."""
    column = shape_column(model)
    return frame[column].to_list() if column in frame.columns else None


def _shaped(shapes: Sequence | None) -> Iterator[tuple[int, np.ndarray]]:
    """(row, shape) for every row that has a shape."""
    for i, shape in enumerate(shapes or ()):
        if shape is not None:
            yield i, np.asarray(shape, dtype=float)


def pit(y: np.ndarray, centre: np.ndarray, sigma: np.ndarray, shapes: Sequence | None = None) -> np.ndarray:
    """Probability integral transform: the forecast's CDF at each outcome (Gaussian by scipy.stats.norm, or shaped)."""
    from scipy.stats import norm

    out = np.array(norm.cdf(y, centre, sigma), dtype=float)
    for i, shape in _shaped(shapes):
        out[i] = np.interp((y[i] - centre[i]) / sigma[i], shape, SHAPE_GRID)
    return out


def density_bounds(
    centre: np.ndarray, sigma: np.ndarray, level: int, shapes: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The central `level`% interval per row: centre -/+ z * sigma, or a shaped row's own quantiles."""
    tail = (100 - level) / 200
    lo, hi = centre - z_value(level) * sigma, centre + z_value(level) * sigma
    for i, shape in _shaped(shapes):
        lo[i], hi[i] = centre[i] + sigma[i] * np.interp([tail, 1 - tail], SHAPE_GRID, shape)
    return lo, hi


CRPS_TAUS = (np.arange(1000) + 0.5) / 1000  # the probabilities a shaped density's CRPS is integrated over


def density_crps(y: np.ndarray, centre: np.ndarray, sigma: np.ndarray, shapes: Sequence | None = None) -> np.ndarray:
    """CRPS per outcome: the Gaussian's closed form (`crps`), or for a shaped row twice its mean pinball loss over
    CRPS_TAUS (scoringrules' `crps_quantile`: the integral of the quantile scores, Berrisch & Ziel 2023)."""
    import scoringrules as sr

    out = np.array(crps(y, centre, sigma), dtype=float)
    rows = list(_shaped(shapes))
    if rows:
        at = np.array([i for i, _ in rows])
        quantiles = np.array([np.interp(CRPS_TAUS, SHAPE_GRID, shape) for _, shape in rows])
        out[at] = sigma[at] * sr.crps_quantile((y[at] - centre[at]) / sigma[at], quantiles, CRPS_TAUS)
    return out


def _pit_bins(values: np.ndarray) -> np.ndarray:
    """The bin of each PIT value: 0 for [0, 0.1), ..., 9 for [0.9, 1]."""
    return np.minimum((np.asarray(values) * PIT_BINS).astype(int), PIT_BINS - 1)


def pit_deciles(values: np.ndarray) -> np.ndarray:
    """Share of PIT values in each of the PIT_BINS equal bins of [0, 1] (uniform: 0.1 each)."""
    return np.bincount(_pit_bins(values), minlength=PIT_BINS) / max(len(values), 1)


def pit_uniformity(values: np.ndarray, steps: int, *, reps: int = BOOTSTRAP_REPS) -> np.ndarray:
    """p-value that the PIT deciles are uniform, per column of `values` (origins x models), for overlapping outcomes.

    Pearson's statistic n * sum((share - 1/B)^2 * B) is compared with its sampling distribution from a
    circular block bootstrap over origins (arch; blocks as in `block_length`): the same statistic of
    each resample's shares against the sample's own. Independent-outcome tests would reject a
    calibrated forecast far too often here. A 1-D `values` gives a one-element array.
    """
    from arch.bootstrap import CircularBlockBootstrap

    pits = np.asarray(values).reshape(len(values), -1)
    n, m = pits.shape
    # each origin's bin as a one-hot row, every model side by side: a resample's shares are one column mean
    onehot = np.hstack([np.eye(PIT_BINS)[_pit_bins(pits[:, j])] for j in range(m)])
    shares = onehot.mean(axis=0)
    pearson = lambda d: n * PIT_BINS * (d**2).reshape(m, PIT_BINS).sum(axis=1)  # noqa: E731
    stat = pearson(shares - 1 / PIT_BINS)
    spread = CircularBlockBootstrap(block_length(steps), onehot, seed=0).apply(
        lambda rows: pearson(rows.mean(axis=0) - shares), reps
    )
    return (1 + np.sum(spread >= stat, axis=0)) / (1 + reps)


def move_label(move: float) -> str:
    """A BRIER_MOVES event's name: -0.025 -> '-2.5%'."""
    return f"{move * 100:+g}%"


def brier_scores(
    y: np.ndarray, last: np.ndarray, sigma: np.ndarray, move: float, shapes: Sequence | None = None
) -> np.ndarray:
    """Brier score per origin of the forecast's odds of ending above `last` x (1 + move) (log prices)."""
    threshold = last + math.log1p(move)
    return (1 - pit(threshold, last, sigma, shapes) - (y > threshold)) ** 2


def choose_interval_model(frame: pl.DataFrame, models: Sequence[str], steps: int) -> IntervalChoice:
    """Pick an interval model at each origin by mean CRPS over outcomes known by then; Naive unless one beats it.

    A candidate with shapes in the frame (`frame_shapes`: FHS) is scored on them (`density_crps`).

    An origin's pick uses only origins whose horizon date (ds + steps) is on or before it; ties and
    the first origins go to Naive. The live model is the next pick if the picks' own CRPS beat
    Naive's, else Naive, and the run says so.
    """

    ds, y, last = frame["ds"].to_numpy(), frame["y"].to_numpy(), frame["last"].to_numpy()
    sigma = np.column_stack([frame[m].to_numpy() for m in models])
    shapes = {m: frame_shapes(frame, m) for m in models}
    score = np.column_stack([density_crps(y, last, sigma[:, j], shapes[m]) for j, m in enumerate(models)])
    naive, n = list(models).index("Naive"), len(ds)
    # origins are in time order, so the known outcomes at origin i are a prefix [0, known): cumsums
    total = np.vstack([np.zeros(len(models)), np.cumsum(score, axis=0)])
    known = np.searchsorted(ds + steps, np.append(ds, np.inf), side="right")  # the last entry: after every origin
    mean = total[known] / np.maximum(known, 1)[:, None]
    best = mean.argmin(axis=1)
    # ties and no known outcome go to Naive: a candidate must beat it
    best = np.where((known > 0) & (mean[np.arange(n + 1), best] < mean[:, naive]), best, naive)
    picks = [models[j] for j in best[:n]]
    served = sigma[np.arange(n), best[:n]]
    served_shapes = tuple((shapes[m] or [None] * n)[i] for i, m in enumerate(picks)) if any(shapes.values()) else ()
    served_crps, naive_crps = float(score[np.arange(n), best[:n]].mean()), float(score[:, naive].mean())
    if served_crps < naive_crps:
        return IntervalChoice(tuple(picks), served, models[best[n]], (), served_shapes)
    if set(picks) == {"Naive"}:
        return IntervalChoice(tuple(picks), served, "Naive", (), served_shapes)
    note = (
        "choosing a range model lost to Naive's range out of sample "
        f"({served_crps / naive_crps:.4f}x its CRPS): serving Naive's range"
    )
    return IntervalChoice(tuple(picks), served, "Naive", (note,), served_shapes)


def _grouped_coverage(
    frame: pl.DataFrame, bounds: Mapping[str, np.ndarray], models: Sequence[str]
) -> dict[int, dict[str, dict[str, float]]]:
    """Coverage per level, group ("all", each volatility tercile of `vol20`, each of NAMED_WINDOWS) and model."""

    cuts = np.quantile(frame["vol20"].to_numpy(), [1 / 3, 2 / 3])
    regime = np.array(REGIMES)[np.searchsorted(cuts, frame["vol20"].to_numpy(), side="right")]
    windows = [
        next((name for name, (a, b) in NAMED_WINDOWS.items() if a <= d <= b), "other")
        for d in frame["origin"].to_list()
    ]
    scored = frame.select("y").with_columns(*(pl.Series(k, v) for k, v in bounds.items()))
    # one frame per grouping, stacked, so each level is one coverage call over every group
    groups = [pl.lit("all"), pl.Series(regime), pl.Series(windows)]
    stacked = pl.concat([scored.with_columns(group.alias("group")) for group in groups])
    return {lv: coverage_table(stacked, models, lv, "group") for lv in LEVELS}


def score_density(
    frame: pl.DataFrame, models: Sequence[str], steps: int, *, reps: int = BOOTSTRAP_REPS
) -> dict[str, DensityScore]:
    """Score each model's log-price distribution (centre `last`, scale the model's column) against `y`.

    A model's distribution is Gaussian with that sd, or in rows with a shape (`frame_shapes`) that shape scaled.

    CRPS, WIS (`wis`: the median and the 80% and 95% intervals), IS80 and IS95 with ratios to Naive
    (block-bootstrap CIs), coverage overall with a CI, by volatility tercile of `vol20` (cut points
    from these origins) and in NAMED_WINDOWS; calibration: PIT deciles and their uniformity test, the
    98% coverage, and the Brier skill of the BRIER_MOVES events against Naive's range.
    """

    y, last = frame["y"].to_numpy(), frame["last"].to_numpy()
    sigma = {m: frame[m].to_numpy() for m in models}
    shapes = {m: frame_shapes(frame, m) for m in models}
    bounds = {}
    for m in models:
        for lv in LEVELS:
            bounds[f"{m}-lo-{lv}"], bounds[f"{m}-hi-{lv}"] = density_bounds(last, sigma[m], lv, shapes[m])
    crps_of = {m: density_crps(y, last, sigma[m], shapes[m]) for m in models}
    quantiles = {m: [f"{m}-lo-95", f"{m}-lo-80", "last", f"{m}-hi-80", f"{m}-hi-95"] for m in models}
    wis_frame = wis(frame.select("y", "last").with_columns(pl.Series(k, v) for k, v in bounds.items()), quantiles, "y")
    wis_of = {m: wis_frame[m].to_numpy() for m in models}
    is_of = {
        lv: {m: interval_score(y, bounds[f"{m}-lo-{lv}"], bounds[f"{m}-hi-{lv}"], lv) for m in models} for lv in LEVELS
    }
    ratios = {
        name: ratio_ci(values, "Naive", steps, reps=reps)
        for name, values in (("crps", crps_of), ("wis", wis_of), ("is80", is_of[80]), ("is95", is_of[95]))
    }
    cover = _grouped_coverage(frame, bounds, models)
    # a coverage is a mean of hits, so its CI is the hits' "ratio" to a column of ones
    hits = {m: ((bounds[f"{m}-lo-80"] <= y) & (y <= bounds[f"{m}-hi-80"])).astype(float) for m in models}
    cover_ci = ratio_ci(hits | {"one": np.ones(len(y))}, "one", steps, reps=reps)
    groups = (*REGIMES, *NAMED_WINDOWS)
    pits = {m: pit(y, last, sigma[m], shapes[m]) for m in models}
    pit_p = dict(zip(models, pit_uniformity(np.column_stack(list(pits.values())), steps, reps=reps), strict=True))
    tail = (100 - TAIL_LEVEL) / 200
    # every event's Brier ratio to Naive's on one set of resamples, keyed "<event> <model>"
    events = {move_label(e): e for e in BRIER_MOVES}
    briers = {
        f"{e} {m}": brier_scores(y, last, sigma[m], move, shapes[m]) for e, move in events.items() for m in models
    }
    ratio = ratio_ci(briers, {f"{e} {m}": f"{e} Naive" for e in events for m in models}, steps, reps=reps)
    skill = {
        e: {m: Ratio(1 - ratio[f"{e} {m}"].value, 1 - ratio[f"{e} {m}"].hi, 1 - ratio[f"{e} {m}"].lo) for m in models}
        for e in events
    }
    return {
        m: DensityScore(
            crps=float(crps_of[m].mean()),
            wis=float(wis_of[m].mean()),
            is80=float(is_of[80][m].mean()),
            is95=float(is_of[95][m].mean()),
            crps_ratio=ratios["crps"][m],
            wis_ratio=ratios["wis"][m],
            is80_ratio=ratios["is80"][m],
            is95_ratio=ratios["is95"][m],
            coverage_80=cover[80]["all"][m],
            coverage_95=cover[95]["all"][m],
            coverage_80_ci=(cover_ci[m].lo, cover_ci[m].hi),
            coverage_by={
                g: (cover[80][g][m], cover[95][g][m]) if g in cover[80] else (math.nan, math.nan) for g in groups
            },
            origins=len(y),
            pit_deciles=tuple(float(v) for v in pit_deciles(pits[m])),
            pit_p=float(pit_p[m]),
            coverage_98=float(np.mean((pits[m] >= tail) & (pits[m] <= 1 - tail))),
            brier_skill={event: by_model[m] for event, by_model in skill.items()},
        )
        for m in models
    }


def copper_variance_ablation(scores: Mapping[str, DensityScore]) -> float | None:
    """CRPS of the recalibrated range with copper's volatility against without it, in percent (None without copper)."""
    if "Recal_copper" not in scores or "Recal" not in scores:
        return None
    return (scores["Recal_copper"].crps / scores["Recal"].crps - 1) * 100


def density_backtest_all(
    usdclp: pl.DataFrame,
    copper: pl.DataFrame | None = None,
    horizons: Sequence[str] = tuple(HORIZONS),
    *,
    origins: int = DENSITY_ORIGINS,
    every: int = DENSITY_EVERY,
    history: int = HISTORY,
    models: Sequence[str] = RUN_INTERVAL_MODELS,
    reps: int = BOOTSTRAP_REPS,
) -> dict[str, DensityBacktest]:
    """Backtest every interval model's distribution at each horizon on weekly origins, and choose the one to serve.

    `density_frame` builds the predictions (refitted at every origin, no look-ahead),
    `choose_interval_model` the served column, `score_density` the scores and
    `copper_variance_ablation` copper's effect.
    """

    frame = density_frame(usdclp, copper, horizons, origins=origins, every=every, history=history, models=models)
    if frame.is_empty():
        raise ValueError(f"{usdclp.height} trading days are too few for a density backtest")
    results = {}
    for horizon in horizons:
        sub = frame.filter(pl.col("horizon") == horizon).sort("ds")
        names = [m for m in models if m in sub.columns]
        steps = int(sub["steps"][0])
        choice = choose_interval_model(sub, names, steps)
        sub = sub.with_columns(pl.Series(SERVED, choice.served_sigma), pl.Series("pick", choice.picks))
        if choice.served_shapes:
            sub = sub.with_columns(pl.Series(shape_column(SERVED), choice.served_shapes, pl.List(pl.Float64)))
        scores = score_density(sub, [*names, SERVED], steps, reps=reps)
        results[horizon] = DensityBacktest(
            horizon=horizon,
            steps=steps,
            models=scores,
            live=choice.live,
            copper_ablation_pct=copper_variance_ablation(scores),
            origins=tuple(sub["origin"].to_list()),
            predictions=sub,
            notes=choice.notes,
        )
    return results


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast path for every model and the ensemble, with its backtest."""

    horizon: str
    origin: date
    last_close: float
    path: pl.DataFrame  # step, date, model, forecast, lo_80, hi_80, lo_95, hi_95 (CLP per USD)
    backtest: Backtest
    density: DensityBacktest | None = None  # the weekly density backtest that chose the range
    interval_model: str = "Naive"  # the interval model whose width the ensemble's range uses
    scale: float = math.nan  # the served density's sd of the log price at the horizon date (FHS: its scale)
    shape: tuple[float, ...] | None = None  # FHS's standardised quantiles at SHAPE_GRID; None: Gaussian

    @property
    def interval_label(self) -> str:
        """What is served, in words: "random walk; range from the EWMA of 5-day returns"."""
        point = "random walk" if self.backtest.rule == "naive" else f"{self.backtest.rule} combination"
        return f"{point}; {INTERVAL_MODELS[self.interval_model]}"

    @property
    def ensemble(self) -> pl.DataFrame:

        return self.path.filter(pl.col("model") == ENSEMBLE).drop("model")

    @property
    def final(self) -> dict[str, Any]:
        """The ensemble's row at the horizon date."""
        return self.ensemble.tail(1).row(0, named=True)

    def quantile(self, q: float) -> float:
        """The level USD/CLP ends below with probability `q` on the horizon date, from the served density.

        `quantile(0.10)` and `quantile(0.90)` are the 80% range's bounds, `quantile(0.025)` and
        `quantile(0.975)` the 95% range's; raises ValueError unless 0 < q < 1.
        """
        return float(served_quantile(self.final["forecast"], self.scale, check_probability(q), self.shape))

    def prob_below(self, x: float) -> float:
        """The served density's probability that USD/CLP ends below `x` (CLP per USD) on the horizon date."""
        return served_odds(self.final["forecast"], self.scale, x, self.shape)[0]

    def prob_above(self, x: float) -> float:
        """The served density's probability that USD/CLP ends above `x` (CLP per USD) on the horizon date."""
        return served_odds(self.final["forecast"], self.scale, x, self.shape)[1]


def check_probability(q: float) -> float:
    """`q` as a float strictly between 0 and 1, else ValueError."""
    if not 0 < q < 1:  # a NaN fails too
        raise ValueError(f"quantile {q!r} is not between 0 and 1 (exclusive)")
    return float(q)


QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)  # what `run --json`, `odds` and the report show


def quantile_key(q: float) -> str:
    """A quantile's name in JSON and tables: 0.05 -> '5%', 0.975 -> '97.5%'."""
    return f"{q * 100:g}%"


def served_quantile(median: Any, scale: Any, q: Any, shape: Sequence[float] | None = None) -> Any:
    """The q-quantile of the served density in log price with this median (CLP per USD): median * exp(scale * z_q).

    z_q is the standard Gaussian's (scipy.stats.norm), or with a `shape` (FHS) its quantile, linear between
    the SHAPE_GRID points. Every served bound is this function, so the ranges are quantiles, exactly.
    """
    from scipy.stats import norm

    return median * np.exp(scale * (norm.ppf(q) if shape is None else np.interp(q, SHAPE_GRID, shape)))


def served_odds(median: float, scale: float, x: float, shape: Sequence[float] | None = None) -> tuple[float, float]:
    """(P(below x), P(above x)) under the served density in log price with this median and scale.

    Gaussian (scipy.stats.norm), or with a `shape` (FHS) the inverse of `served_quantile`'s: nil beyond the
    lowest and highest past moves. Raises ValueError unless x is a positive number.
    """
    from scipy.stats import norm

    if not x > 0 or math.isinf(x):
        raise ValueError(f"level {x!r} is not a positive number")
    z = math.log(x / median) / scale
    if shape is not None:
        below = float(np.interp(z, shape, SHAPE_GRID))
        return below, 1 - below
    return float(norm.cdf(z)), float(norm.sf(z))


def copper_forecast(usdclp: pl.DataFrame, copper: pl.DataFrame, steps: int, history: int = HISTORY) -> pl.DataFrame:
    """The copper model's log forecast `steps` trading days ahead, with its 80% and 95% bounds.

    Its regressor's future is known: copper lagged by `steps` trading days, all on or before today.
    """
    from statsforecast import StatsForecast

    exog = copper_frame(usdclp, copper, steps, history)
    last_ds = usdclp.height - 1  # `ds` counts USD/CLP rows (`_indexed`)
    known = align_copper(usdclp.select(DATE, CLOSE).sort(DATE), copper)["copper"].log()
    future = pl.DataFrame(
        {
            "unique_id": ["usdclp"] * steps,
            "ds": np.arange(last_ds + 1, last_ds + 1 + steps),
            "copper_lag": known.tail(steps).to_numpy(),
        }
    )
    with _quiet_statsforecast():
        return StatsForecast(models=_copper_models(), freq=1, n_jobs=1).forecast(
            df=exog, h=steps, X_df=future, level=list(LEVELS)
        )


def forecast(
    usdclp: pl.DataFrame,
    copper: pl.DataFrame | None = None,
    horizon: str = "7d",
    *,
    backtest_result: Backtest | None = None,
    density_result: DensityBacktest | None = None,
    windows: int = WINDOWS,
    history: int = HISTORY,
) -> Forecast:
    """Forecast USD/CLP `horizon` calendar days ahead: every model, and the ensemble and range its backtests chose.

    Runs the backtests first unless given. Pure: no I/O, no clock.
    """
    given = {horizon: backtest_result} if backtest_result else None
    density = {horizon: density_result} if density_result else None
    fcs = forecast_all(usdclp, copper, [horizon], backtests=given, densities=density, windows=windows, history=history)
    return fcs[horizon]


def served_scales(fc: pl.DataFrame, variances: np.ndarray | None) -> np.ndarray:
    """The served sd of the log price per step: the chosen model's (`variances`), else Naive's own (its 80% width)."""
    if variances is None:
        return ((fc["Naive-hi-80"] - fc["Naive-lo-80"]) / (2 * z_value(80))).to_numpy()
    return np.sqrt(variances[: fc.height])


def _forecast_path(
    fc: pl.DataFrame,
    weights: Mapping[str, float],
    dates: Sequence[date],
    variances: np.ndarray | None = None,
    shape: Sequence[float] | None = None,
) -> pl.DataFrame:
    """The path frame: each model's own forecast and bounds, and the Ensemble's point with the served range.

    The served range is in log price around the ensemble's point: Gaussian with Naive's width (its sd,
    as in `_score_backtest`) or, given `variances` (the chosen interval model's k-day log variances),
    that model's; with a `shape` (FHS), that shape scaled at every step. Its bounds are `served_quantile`s.
    """

    cols = {"": "forecast", "-lo-80": "lo_80", "-hi-80": "hi_80", "-lo-95": "lo_95", "-hi-95": "hi_95"}
    fc = fc.sort("ds").head(len(dates))
    frames = [
        fc.select(pl.lit(name).alias("model"), *(pl.col(f"{name}{s}").exp().alias(c) for s, c in cols.items()))
        for name in weights
    ]
    point = fc.select(pl.sum_horizontal([pl.col(n) * w for n, w in weights.items()]).exp())[:, 0].to_numpy()
    sd = served_scales(fc, variances)
    ensemble = {"forecast": point}
    for lv in LEVELS:
        tail = (100 - lv) / 200
        lo, hi = served_quantile(point, sd, tail, shape), served_quantile(point, sd, 1 - tail, shape)
        ensemble |= {f"lo_{lv}": lo, f"hi_{lv}": hi}
    frames.append(pl.DataFrame({"model": [ENSEMBLE] * len(point), **ensemble}))
    steps = pl.DataFrame({"step": list(range(1, len(dates) + 1)), DATE: list(dates)})
    return pl.concat([pl.concat([steps, frame], how="horizontal") for frame in frames])


def forecast_all(
    usdclp: pl.DataFrame,
    copper: pl.DataFrame | None = None,
    horizons: Sequence[str] = tuple(HORIZONS),
    *,
    backtests: Mapping[str, Backtest] | None = None,
    densities: Mapping[str, DensityBacktest] | None = None,
    windows: int = WINDOWS,
    history: int = HISTORY,
) -> dict[str, Forecast]:
    """Forecast every horizon: univariate models fitted once (at the longest horizon), the copper model per horizon.

    Runs the point backtests and the density backtests (which choose each horizon's range) first
    unless given. The ensemble's range is the chosen interval model's width around its point.
    Pure: no I/O, no clock.
    """
    from statsforecast import StatsForecast

    backtests = backtests or backtest_all(usdclp, copper, horizons, windows, history=history)
    densities = densities or density_backtest_all(usdclp, copper, horizons, history=history)
    logp, _, copper_logp = log_prices(usdclp, copper)
    days_of = {h: parse_horizon(h) for h in horizons}
    longest = max(horizon_steps(d) for d in days_of.values())
    uni = univariate_frame(usdclp, history)
    last_ds, last_day = uni["ds"].max(), usdclp[DATE].max()
    with _quiet_statsforecast():
        shared = StatsForecast(models=_models(), freq=1, n_jobs=1).forecast(df=uni, h=longest, level=list(LEVELS))
    results = {}
    for horizon, days in days_of.items():
        steps, bt = horizon_steps(days), backtests[horizon]
        fc = shared.filter(pl.col("ds") <= last_ds + steps)
        if bt.copper_used:
            fc = fc.join(copper_forecast(usdclp, copper, steps, history), on=["unique_id", "ds"])
        model = densities[horizon].live
        variances, shape = None, None
        if model != "Naive":
            cu = None if copper_logp is None else copper_logp[-history:]
            variances = variance_paths(logp[-history:], cu, steps, [model])[model]
        if model == FHS:
            shape = fhs_distribution(logp[-history:], recal_features(logp[-history:], None), steps)[1]
        dates = trading_dates(last_day, days)
        path = _forecast_path(fc, bt.weights, dates, variances, shape)
        results[horizon] = Forecast(
            horizon=horizon,
            origin=last_day,
            last_close=float(usdclp.sort(DATE)[CLOSE][-1]),
            path=path,
            backtest=bt,
            density=densities[horizon],
            interval_model=model,
            scale=float(served_scales(fc.sort("ds").head(len(dates)), variances)[-1]),
            shape=None if shape is None else tuple(shape),
        )
    return results


# -- Core: formatting results ----------------------------------------------------------


def _fmt(value: object, missing: str = "null", spec: str = ".6g") -> str:
    """A value as text: a float (or any number, given a `spec`) to 6 significant digits, None as `missing`."""
    return (
        missing if value is None else format(value, spec) if isinstance(value, float) or spec != ".6g" else str(value)
    )


def format_series_line(series: ChosenSeries) -> str:
    """One line per series for `fetch`: source, rows, first and last date."""
    if not series.ok:
        return f"{series.name}: unavailable ({series.error})"
    frame = series.frame
    freq = "" if series.frequency == "daily" else f", {series.frequency}"
    return f"{series.name}: {series.source}{freq}, {frame.height} rows, {frame[DATE].min()} .. {frame[DATE].max()}"


def format_validation(bundle: Bundle, found: Sequence[str]) -> str:
    """The `validate` report: sources, latest feature values, and every problem."""
    lines = [
        f"usdclp: {bundle.sources['usdclp']}, {bundle.usdclp.height} rows, last {bundle.usdclp[DATE].max()} "
        f"= {bundle.usdclp[CLOSE][-1]:.2f} CLP/USD",
    ]
    if bundle.copper is None:
        lines.append("copper: unavailable (features not computed)")
    else:
        lines.append(
            f"copper: {bundle.sources['copper']} ({bundle.copper_frequency}), {bundle.copper.height} rows, "
            f"last {bundle.copper[DATE].max()} = {bundle.copper[CLOSE][-1]:.4f} USD/lb"
        )
        latest = bundle.copper_features.tail(1).row(0, named=True)
        lines.append(f"features on {latest[DATE]}:")
        lines += [f"  {name:<32} {_fmt(latest[name])}" for name in FEATURES]
    lines += [f"note: {n}" for n in bundle.notes]
    lines += [f"PROBLEM: {p}" for p in found] or ["all checks passed"]
    return "\n".join(lines)


def range_summary(fc: Forecast) -> dict[str, Any]:
    """The served range as plain data: its model, its words, and its weekly density backtest against Naive's range."""
    out: dict[str, Any] = {"interval_model": fc.interval_model, "interval_label": fc.interval_label}
    if fc.density is None:
        return out
    served = fc.density.served
    return out | {
        "range_crps_ratio": round(served.crps_ratio.value, 4),
        "range_crps_ratio_ci": [round(served.crps_ratio.lo, 4), round(served.crps_ratio.hi, 4)],
        "range_is80_ratio": round(served.is80_ratio.value, 4),
        "range_is95_ratio": round(served.is95_ratio.value, 4),
        "range_coverage_80": round(served.coverage_80, 4),
        "range_coverage_95": round(served.coverage_95, 4),
        "range_coverage_80_by": {group: round(cover[0], 4) for group, cover in served.coverage_by.items()},
        "range_origins": served.origins,
    }


def summary(fc: Forecast, bundle: Bundle) -> dict[str, Any]:
    """The run's headline as plain data: last close, forecast at the horizon with intervals, accuracy, copper."""
    final, bt = fc.final, fc.backtest
    return {
        "horizon": fc.horizon,
        "last_date": str(fc.origin),
        "last_close": round(fc.last_close, 4),
        "target_date": str(final[DATE]),
        "forecast": round(final["forecast"], 4),
        "interval_80": [round(final["lo_80"], 4), round(final["hi_80"], 4)],
        "interval_95": [round(final["lo_95"], 4), round(final["hi_95"], 4)],
        "ensemble_rule": bt.rule,
        "ratio_to_naive": round(bt.ensemble.ratio, 4),
        "combination_ratio_to_naive": round(bt.models[COMBINATION].ratio, 4),
        "ensemble_rmse": round(bt.ensemble.rmse, 4),
        "coverage_80": round(bt.ensemble.coverage_80, 4),
        "coverage_95": round(bt.ensemble.coverage_95, 4),
        "backtest_origins": len(bt.origins),
        "copper_available": bundle.copper is not None,
        "copper_frequency": bundle.copper_frequency,
        "copper_ablation_pct": None if bt.copper_ablation_pct is None else round(bt.copper_ablation_pct, 4),
        "quantiles": {quantile_key(q): round(fc.quantile(q), 4) for q in QUANTILES},
        **range_summary(fc),
        "sources": dict(bundle.sources),
        "degraded": list(bundle.degraded),
        "degraded_detail": list(bundle.degraded_detail),
    }


class Change(enum.StrEnum):
    """Why a forecast moved against the previous run of its horizon."""

    NEW_DATA = "new data"
    MODEL = "different chosen model"
    DEGRADED = "degraded source"
    SOURCE = "different data source"
    RECOVERED = "source recovered"


def what_changed(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> dict[str, Any] | None:
    """How this forecast and its 80% range moved against the previous ledger row of the horizon, and why (pure)."""
    if previous is None:
        return None
    reasons: list[Change] = []
    if current["origin"] != previous["origin"]:
        reasons.append(Change.NEW_DATA)
    if (current["point_model"], current["interval_model"]) != (previous["point_model"], previous["interval_model"]):
        reasons.append(Change.MODEL)
    if current["degraded"] and current["degraded"] != previous["degraded"]:
        reasons.append(Change.DEGRADED)
    elif previous["degraded"] and not current["degraded"]:
        reasons.append(Change.RECOVERED)
    if current["sources"] != previous["sources"] and Change.DEGRADED not in reasons:
        reasons.append(Change.SOURCE)
    return {
        "previous_origin": str(previous["origin"]),
        "previous_run_id": previous["run_id"],
        "forecast_change": current["forecast"] - previous["forecast"],
        "lo_80_change": current["lo_80"] - previous["lo_80"],
        "hi_80_change": current["hi_80"] - previous["hi_80"],
        "width_80_change": (current["hi_80"] - current["lo_80"]) - (previous["hi_80"] - previous["lo_80"]),
        "previous_point_model": previous["point_model"],
        "point_model": current["point_model"],
        "previous_degraded": previous["degraded"],
        "degraded": current["degraded"],
        "reasons": [str(r) for r in reasons],
    }


def format_change(change: Mapping[str, Any] | None) -> str:
    """One sentence: how the forecast and its range moved since the previous run, and why."""
    if change is None:
        return "first forecast of this horizon in the ledger"
    why = ", ".join(change["reasons"]) or "same data, same model"
    if str(Change.MODEL) in change["reasons"]:
        why += f" ({change['previous_point_model']} -> {change['point_model']})"
    if str(Change.DEGRADED) in change["reasons"]:
        why += f" ({change['degraded']})"
    return (
        f"since the run from {change['previous_origin']}: forecast {change['forecast_change']:+.2f}, 80% range "
        f"{change['lo_80_change']:+.2f}/{change['hi_80_change']:+.2f} (width {change['width_80_change']:+.2f}); "
        f"why: {why}"
    )


def format_live(live: Mapping[str, float]) -> str:
    """The served forecasts' live record in one phrase; before any is scored, says so instead of printing NaNs."""
    scored = int(live.get("live_scored", 0))
    if not scored:
        return "no served forecast scored yet (each is scored once its target date has a close)"
    return (
        f"{scored} scored, RMSE {live.get('live_rmse', math.nan):.2f} CLP, "
        f"{live.get('live_rmse_ratio_rw', math.nan):.4f}x the random walk, coverage "
        f"{live.get('live_coverage_80', math.nan):.0%}/{live.get('live_coverage_95', math.nan):.0%}"
    )


def forecast_headline(last_close: float, origin: date | str, forecasts: Sequence[tuple[str, float, date | str]]) -> str:
    """The forecast in one line (pure): `run` prints it; the report, note, chart and email title it with it.

    `forecasts` holds (horizon, forecast, target date) per horizon. One horizon reads
    'USD/CLP 7d: last 950.00 on 2026-11-25 -> 951.20 on 2026-12-03', several (a digest)
    'USD/CLP: last 950.00 on 2026-11-25 -> 7d 951.20, 15d 952.00'.
    """
    if len(forecasts) == 1:
        ((horizon, forecast, target),) = forecasts
        return f"USD/CLP {horizon}: last {last_close:.2f} on {origin} -> {forecast:.2f} on {target}"
    return f"USD/CLP: last {last_close:.2f} on {origin} -> " + ", ".join(f"{h} {f:.2f}" for h, f, _ in forecasts)


def headline_of(forecasts: Sequence[Forecast]) -> str:
    """`forecast_headline` of one run's forecasts (they share the last close)."""
    first = forecasts[0]
    return forecast_headline(
        first.last_close, first.origin, [(fc.horizon, fc.final["forecast"], fc.final[DATE]) for fc in forecasts]
    )


def format_summary(s: Mapping[str, Any]) -> str:
    """The few lines `run` prints per horizon."""
    lo80, hi80 = s["interval_80"]
    lo95, hi95 = s["interval_95"]
    copper = "off" if not s["copper_available"] else f"{s['sources']['copper']} ({s['copper_frequency']})"
    lines = [
        forecast_headline(s["last_close"], s["last_date"], [(s["horizon"], s["forecast"], s["target_date"])]),
        f"  80% [{lo80:.2f}, {hi80:.2f}]  95% [{lo95:.2f}, {hi95:.2f}]",
        f"  backtest: RMSE {s['ensemble_rmse']:.2f} CLP, {s['ratio_to_naive']:.4f}x Naive ({s['ensemble_rule']}; "
        f"combining without look-ahead: {s['combination_ratio_to_naive']:.4f}x), "
        f"coverage {s['coverage_80']:.0%}/{s['coverage_95']:.0%} (Naive's range), {s['backtest_origins']} origins",
    ]
    if "interval_label" in s:
        lines.append(f"  served: {s['interval_label']}")
    if "range_crps_ratio" in s:
        lo, hi = s["range_crps_ratio_ci"]
        lines.append(
            f"  range backtest: CRPS {s['range_crps_ratio']:.4f}x Naive's [{lo:.4f}, {hi:.4f}],"
            f" IS80 {s['range_is80_ratio']:.4f}x, "
            f"IS95 {s['range_is95_ratio']:.4f}x, coverage {s['range_coverage_80']:.0%}/{s['range_coverage_95']:.0%},"
            f" {s['range_origins']} weekly origins"
        )
    lines.append(f"  sources: usdclp {s['sources']['usdclp']}, copper {copper}")
    if s["degraded"]:
        lines.append(f"  degraded: {', '.join(s.get('degraded_detail') or s['degraded'])}")
    if "changed" in s:
        lines.append(f"  what changed: {format_change(s['changed'])}")
    if s.get("live"):
        lines.append(f"  live: {format_live(s['live'])}")
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in cells)]


SANTIAGO = "America/Santiago"  # the treasury desk's clock: report headers, chart stamps and email dates


def santiago_time(now: datetime) -> str:
    """`now` on the Santiago clock, e.g. '2026-11-26 08:06 (Santiago, UTC-03)'."""

    local = now.astimezone(ZoneInfo(SANTIAGO))
    offset = local.utcoffset() or timedelta(0)
    hours, minutes = divmod(int(offset.total_seconds()) // 60, 60)
    return f"{local:%Y-%m-%d %H:%M} (Santiago, UTC{hours:+03d}{f':{minutes:02d}' if minutes else ''})"


FeatureKind = Literal["pct", "vol", "usd_lb", "trend", "rsi", "z", "corr"]
# Each copper feature's name for people, and how its value reads (unit, percent, scale).
FEATURE_WORDS: dict[str, tuple[str, FeatureKind]] = {
    "copper_returns_1d": ("return over 1 trading day", "pct"),
    "copper_returns_5d": ("return over 5 trading days", "pct"),
    "copper_returns_20d": ("return over 20 trading days", "pct"),
    "copper_volatility_20d": ("volatility, last 20 days (annualised)", "vol"),
    "copper_volatility_60d": ("volatility, last 60 days (annualised)", "vol"),
    "copper_sma_20": ("20-day average price", "usd_lb"),
    "copper_sma_50": ("50-day average price", "usd_lb"),
    "copper_trend_signal": ("trend: 20-day average against 50-day", "trend"),
    "copper_rsi_14": ("RSI, 14 days (0-100; over 70 overbought, under 30 oversold)", "rsi"),
    "copper_price_normalized": ("price against its 1-year mean", "z"),
    "copper_usdclp_correlation_90d": ("correlation of daily returns with USD/CLP, 90 days", "corr"),
}


def format_feature(name: str, value: float | None) -> str:
    """A copper feature's value with its unit: '+1.25%', '23.4% a year', '4.1234 USD/lb', 'up', '+0.8 sd' (pure)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a (not enough history)"
    kind = FEATURE_WORDS[name][1]
    if kind == "pct":
        return f"{math.expm1(value):+.2%}"  # the feature is a log return; people read simple percent changes
    if kind == "vol":
        return f"{value:.1%} a year"
    if kind == "usd_lb":
        return f"{value:.4f} USD/lb"
    if kind == "trend":
        return {1: "up (20-day above 50-day)", -1: "down (20-day below 50-day)"}.get(int(value), "flat")
    if kind == "rsi":
        return f"{value:.1f}"
    if kind == "z":
        return f"{value:+.2f} standard deviations"
    return f"{value:+.2f}"


@dataclass(frozen=True, slots=True)
class Section:
    """One titled part of a report or email, as Markdown lines; `key` lets a reader pick, drop or add sections."""

    key: str
    title: str
    lines: tuple[str, ...]


def _pct(new: float, old: float) -> str:
    return f"{new / old - 1:+.2%}"


def format_calibration(db: DensityBacktest, pit_chart: str | None = None) -> list[str]:
    """The range section's calibration lines: each model's PIT test, 98% coverage and Brier skill, the served PIT."""
    served = db.served
    events = list(served.brier_skill)
    rows = [
        [name, f"{m.pit_p:.3f}", f"{m.coverage_98:.1%}", *(f"{m.brier_skill[e].value:+.3f}" for e in events)]
        for name, m in db.models.items()
    ]
    skill = ", ".join(f"{e} {r.value:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]" for e, r in served.brier_skill.items())
    lines = [
        "Calibration: PIT is the forecast's CDF at the outcome (uniform when the odds are right); the uniformity"
        " p-value comes from a block bootstrap over origins (their outcomes overlap); Brier skill is"
        " 1 - Brier / Naive's range's Brier for the event 'above the last close x (1 + move)'.",
        "",
        *_table(["model", "PIT uniform p", f"{TAIL_LEVEL}% cover", *(f"Brier skill {e}" for e in events)], rows),
        "",
        "Served range's PIT deciles: " + " ".join(f"{v:.0%}" for v in served.pit_deciles) + f" (10% each when"
        f" calibrated); Brier skill with 95% CIs: {skill}.",
    ]
    if pit_chart:
        lines += ["", f"![PIT histogram of the served range]({pit_chart})"]
    return lines


def format_density(db: DensityBacktest, served: str, pit_chart: str | None = None) -> list[str]:
    """The range section's lines: every interval model's scores against Naive's range, calibration, what is served."""
    d = db.predictions
    lines = [
        f"Served range: {INTERVAL_MODELS[served]} (`{served}`)."
        f" Scores in log price; ratios to Naive's range with 95% block-bootstrap CIs.",
        "",
    ]
    pct = lambda x: "n/a" if math.isnan(x) else f"{x:.0%}"  # noqa: E731
    rows = []
    for name, m in db.models.items():
        ci = f"{m.crps_ratio.value:.4f} [{m.crps_ratio.lo:.4f}, {m.crps_ratio.hi:.4f}]"
        by = m.coverage_by
        rows.append(
            [
                name,
                f"{m.crps * 100:.4f}",
                ci,
                f"{m.is80_ratio.value:.4f}",
                f"{m.is95_ratio.value:.4f}",
                f"{m.coverage_80:.0%} / {m.coverage_95:.0%}",
                pct(by["calm"][0]),
                pct(by["turbulent"][0]),
                pct(by["2022"][0]),
            ]
        )
    lines += _table(
        [
            "model",
            "CRPS (%)",
            "CRPS ratio [CI]",
            "IS80 ratio",
            "IS95 ratio",
            "80% / 95% cover",
            "80% calm",
            "80% turbulent",
            "80% in 2022",
        ],
        rows,
    )
    lines += [
        "",
        f"`{SERVED}` is the model chosen at each origin from outcomes known by then"
        f" ({d['pick'].n_unique()} distinct picks).",
    ]
    if db.copper_ablation_pct is not None:
        lines.append(
            f"Copper as a variance signal: CRPS {db.copper_ablation_pct:+.2f}% with copper's realised volatility"
            f" (Recal_copper against Recal)."
        )
    lines += ["", *format_calibration(db, pit_chart)]
    return lines + [f"Note: {n}" for n in db.notes]


def _summary_section(fc: Forecast, bundle: Bundle) -> Section:
    """The report's summary table: last close, forecast, ranges, backtest, what was served, sources."""
    s, bt, final = summary(fc, bundle), fc.backtest, fc.final
    target = final[DATE]
    copper = (
        "off: this forecast runs without copper"
        if not s["copper_available"]
        else f"{s['sources']['copper']} ({s['copper_frequency']})"
    )
    rows = [
        ["Last close", f"**{fc.last_close:.2f}** CLP per USD on {fc.origin:%a %d %b %Y}"],
        [
            f"Forecast for {target:%a %d %b %Y}",
            f"**{final['forecast']:.2f}** ({_pct(final['forecast'], fc.last_close)} from the last close)",
        ],
        [f"80% range: {fc.interval_label}", f"{final['lo_80']:.2f} to {final['hi_80']:.2f}"],
        ["95% range", f"{final['lo_95']:.2f} to {final['hi_95']:.2f}"],
        [
            "Backtest",
            (
                f"error (RMSE) {s['ensemble_rmse']:.2f} CLP, {s['ratio_to_naive']:.3f}x the random walk's;"
                f" Naive's ranges held "
                f"{s['coverage_80']:.0%} (80%) and {s['coverage_95']:.0%} (95%) "
                f"of {s['backtest_origins']} past outcomes"
            ),
        ],
        [
            "Served",
            f"`{bt.rule}` rule: "
            + ", ".join(f"{k} {v:.0%}" for k, v in bt.weights.items() if v > 0)
            + f"; range served: {fc.interval_label}",
        ],
        ["Sources", f"USD/CLP {s['sources']['usdclp']}, copper {copper}"],
    ]
    if s["degraded"]:
        rows.append(["Degraded", ", ".join(s["degraded"])])
    return Section("summary", "Summary", tuple(_table(["", "CLP per USD"], rows)))


ODDS_MOVES = (0.01, 0.025, 0.05)  # the report's odds of ending beyond the last close by this much, either way


def _odds_section(fc: Forecast) -> Section:
    """The served density in a treasurer's numbers: its quantiles, and the odds of moves beyond the last close."""
    last = fc.last_close
    rows = [
        [f"±{move:.1%}".replace(".0%", "%"), f"{last * (1 - move):.2f}", f"{last * (1 + move):.2f}"]
        + [f"{fc.prob_below(last * (1 - move)):.1%}", f"{fc.prob_above(last * (1 + move)):.1%}"]
        for move in ODDS_MOVES
    ]
    density = "Gaussian in log price" if fc.shape is None else "past returns rescaled to today (FHS), in log price"
    lines = (
        f"USD/CLP ends below each level with the probability above it (the served density: {density},"
        f" scale {fc.scale:.4f}).",
        "",
        *_table(["", *map(quantile_key, QUANTILES)], [["CLP per USD", *(f"{fc.quantile(q):.2f}" for q in QUANTILES)]]),
        "",
        f"Odds of ending beyond the last close ({last:.2f}) by each move:",
        "",
        *_table(["move", "below (CLP)", "above (CLP)", "chance below", "chance above"], rows),
    )
    return Section("odds", f"Quantiles and odds for {fc.final[DATE]:%a %d %b %Y}", lines)


def _backtest_section(bt: Backtest) -> Section:
    """Every model's backtest scores, the ensemble's rule and weights, the copper ablation and the notes."""
    backtest = _table(
        ["model", "RMSE", "MAE", "MAPE %", "ratio to Naive", "direction hit", "80% cover", "95% cover", "weight"],
        [
            [
                name,
                f"{m.rmse:.2f}",
                f"{m.mae:.2f}",
                f"{m.mape:.2f}",
                f"{m.ratio:.4f}",
                "n/a" if m.direction is None else f"{m.direction:.0%}",
                f"{m.coverage_80:.0%}",
                f"{m.coverage_95:.0%}",
                "-" if name in (ENSEMBLE, COMBINATION) else f"{bt.weights.get(name, 0):.2f}",
            ]
            for name, m in bt.models.items()
        ],
    )
    backtest += [
        "",
        f"Ensemble: rule `{bt.rule}`, weights " + ", ".join(f"{k} {v:.2f}" for k, v in bt.weights.items()) + ". "
        f"`{COMBINATION}` is the rule chosen at each origin from outcomes known by then (no look-ahead); the ensemble "
        f"serves it only if it beat Naive. RMSE of each rule with its online weights: "
        + ", ".join(f"{k} {v:.2f}" for k, v in bt.rule_rmse.items())
        + ".",
    ]
    if bt.copper_ablation_pct is not None:
        backtest.append("")
        backtest.append(
            f"Copper ablation: ensemble RMSE {bt.copper_ablation_pct:+.2f}% with copper; the random walk with lagged "
            f"copper {bt.copper_model_pct:+.2f}% against the random walk alone."
        )
    backtest += [line for n in bt.notes for line in ("", f"Note: {n}")]
    title = (
        f"Backtest at the horizon date ({len(bt.origins)} origins, {bt.origins[0]} .. {bt.origins[-1]}, "
        f"{bt.steps} trading days ahead)"
    )
    return Section("backtest", title, tuple(backtest))


def _copper_section(bundle: Bundle) -> Section:
    """Copper's source and last close, and each feature's latest value (or a line saying there is no copper)."""
    if bundle.copper_features is None:
        return Section("copper", "Copper", ("Copper unavailable: this forecast runs without copper.",))
    latest = bundle.copper_features.tail(1).row(0, named=True)
    copper_lines = [
        (
            f"Source {bundle.sources['copper']} ({bundle.copper_frequency}), last close "
            f"{bundle.copper[CLOSE][-1]:.4f} USD/lb on {bundle.copper[DATE].max()}. Features on {latest[DATE]}:"
        ),
        "",
        *_table(
            ["feature", "meaning", "value"],
            [[f"`{f}`", FEATURE_WORDS[f][0], format_feature(f, latest[f])] for f in FEATURES],
        ),
    ]
    return Section("copper", "Copper", tuple(copper_lines))


def _path_section(fc: Forecast) -> Section:
    """The ensemble's forecast path, one row per trading day, with its 80% and 95% ranges."""
    path = _table(
        ["step", "date", "forecast", "80% low", "80% high", "95% low", "95% high"],
        [
            [str(r["step"]), str(r[DATE]), *(f"{r[k]:.2f}" for k in ("forecast", "lo_80", "hi_80", "lo_95", "hi_95"))]
            for r in fc.ensemble.iter_rows(named=True)
        ],
    )
    return Section("path", "Forecast path (ensemble, CLP per USD)", tuple(path))


def report_sections(fc: Forecast, bundle: Bundle, *, chart: str | None, pit_chart: str | None = None) -> list[Section]:
    """One horizon's report sections, most read first: summary, chart, odds, backtests, copper, path, data (pure).

    `pit_chart` is the range backtest's PIT histogram, shown in the range section.
    """
    sections = [_summary_section(fc, bundle)]
    if chart:
        sections.append(Section("chart", "Chart", (f"![USD/CLP and forecast]({chart})",)))
    sections.append(_odds_section(fc))
    sections.append(_backtest_section(fc.backtest))
    if fc.density is not None:
        db = fc.density
        title = (
            f"Range backtest ({len(db.origins)} weekly origins, {db.origins[0]} .. {db.origins[-1]}, "
            f"{db.steps} trading days ahead)"
        )
        sections.append(Section("range", title, tuple(format_density(db, fc.interval_model, pit_chart))))
    sections += [_copper_section(bundle), _path_section(fc)]
    data = [f"- {n}" for n in bundle.notes] or ["- none"]
    data += [f"- degraded: {r}" for r in bundle.degraded_detail]
    sections.append(Section("data", "Data and degraded reasons", tuple(data)))
    return sections


def report_title(*forecasts: Forecast, now: datetime) -> str:
    """A report's or email's first line: the headline and when it was made, on the Santiago clock."""
    return f"{headline_of(forecasts)}, made {santiago_time(now)}"


def format_sections(sections: Sequence[Section]) -> list[str]:
    """Markdown for a list of sections, each under a second-level heading (pure)."""
    lines: list[str] = []
    for section in sections:
        lines += [f"## {section.title}", "", *section.lines, ""]
    return lines


def with_extra(sections: Sequence[Section], extra: Sequence[Section]) -> list[Section]:
    """`sections` with `extra` placed: what changed right after the summary, anything else before copper (pure)."""
    out = list(sections)
    for section in extra:
        keys = [s.key for s in out]
        if section.key == "changed" and "summary" in keys:
            out.insert(keys.index("summary") + 1, section)
        else:
            out.insert(keys.index("copper") if "copper" in keys else len(out), section)
    return out


def format_report(
    fc: Forecast,
    bundle: Bundle,
    *,
    now: datetime,
    chart: str | None,
    extra: Sequence[Section] = (),
    pit_chart: str | None = None,
) -> str:
    """One run's Markdown report: summary, what changed, chart, odds, backtests, track record, copper, path, data."""
    sections = with_extra(report_sections(fc, bundle, chart=chart, pit_chart=pit_chart), extra)
    return "\n".join([f"# {report_title(fc, now=now)}", "", *format_sections(sections)]).rstrip() + "\n"


def digest_sections(
    forecasts: Sequence[Forecast],
    bundle: Bundle,
    *,
    charts: Mapping[str, str | None],
    extra: Mapping[str, Sequence[Section]] | None = None,
) -> list[Section]:
    """One email's sections: a table of every horizon, each horizon's own sections, then copper and data once (pure).

    A horizon's report sections all go in except the path (it stays in the report file) and the
    copper and data sections, which are the same for every horizon.
    """
    shared = ("copper", "data")
    rows = [
        [
            f"**{fc.horizon}**",
            f"{fc.final[DATE]:%a %d %b %Y}",
            f"**{fc.final['forecast']:.2f}**",
            _pct(fc.final["forecast"], fc.last_close),
            f"{fc.final['lo_80']:.2f} to {fc.final['hi_80']:.2f}",
            f"{fc.final['lo_95']:.2f} to {fc.final['hi_95']:.2f}",
        ]
        for fc in forecasts
    ]
    first = forecasts[0]
    intro = (
        f"Last close **{first.last_close:.2f}** CLP per USD on {first.origin:%a %d %b %Y}.",
        "",
        *_table(["horizon", "for", "forecast", "change", f"80% range: {first.interval_label}", "95% range"], rows),
    )
    sections = [Section("digest", "Forecasts", intro)] if len(forecasts) > 1 else []
    for fc in forecasts:
        own = with_extra(report_sections(fc, bundle, chart=charts.get(fc.horizon)), (extra or {}).get(fc.horizon, ()))
        own = [s for s in own if s.key not in (*shared, "path")]
        if len(forecasts) > 1:
            own = [dataclasses.replace(s, title=f"{fc.horizon}: {s.title}") for s in own]
        sections += own
    sections += [s for s in report_sections(first, bundle, chart=None) if s.key in shared]
    return sections


DEGRADED_MARK = "[degraded]"  # first in an email subject and an MLflow run name when the data was degraded


def email_subject(forecasts: Sequence[Forecast], degraded: bool = False) -> str:
    """'fxcu: ' and the headline of the email's forecasts, after `[degraded]` when the data was (pure)."""
    return f"{DEGRADED_MARK + ' ' if degraded else ''}fxcu: {headline_of(forecasts)}"


HTML_STYLE = {  # inline styles, as Outlook and Gmail drop or rewrite <style> blocks
    "<table>": '<table style="border-collapse:collapse;font-size:13px;margin:4px 0 12px 0">',
    "<th>": '<th style="border-bottom:1px solid #999;padding:3px 8px;text-align:left">',
    "<td>": '<td style="border-bottom:1px solid #e5e5e5;padding:3px 8px">',
    "<img ": '<img style="max-width:100%;height:auto" ',
    "<h1>": '<h1 style="font-size:20px">',
    "<h2>": '<h2 style="font-size:16px;margin-top:20px;border-bottom:1px solid #ccc">',
}
BODY_STYLE = "font-family:Segoe UI,Helvetica,Arial,sans-serif;color:#222;max-width:900px"


def html_page(markdown: str, images: Mapping[str, bytes] | None = None) -> str:
    """A Markdown report or email as one HTML page, by markdown-it-py (CommonMark, tables, raw HTML off; pure).

    `images` inlines each `<img src="name.png"` whose file is given, as a data URI: MLflow's artifact
    viewer draws no image of a Markdown file (3.17: a relative link shows as text and a data URI is
    stripped) but renders HTML in a sandboxed frame, data-URI images included. They go into the
    rendered page, not the Markdown: markdown-it reads a link one character at a time, and a chart's
    data URI is ~150,000 of them.
    """
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(match: re.Match[str]) -> str:
        data = (images or {}).get(html.unescape(match.group(1)))
        if data is None:
            return match.group(0)
        return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}"'

    body = re.sub(r'<img src="([^"]+\.png)"', inline, body)
    for tag, styled in HTML_STYLE.items():
        body = body.replace(tag, styled)
    title = html.escape(markdown.splitlines()[0].lstrip("# ") if markdown else "fxcu report")
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f'<body style="{BODY_STYLE}">\n{body}</body></html>\n'
    )


def build_email(
    forecasts: Sequence[Forecast],
    bundle: Bundle,
    charts: Mapping[str, bytes | None],
    *,
    now: datetime,
    sender: str,
    to: Sequence[str],
    message_id: str,
    extra: Mapping[str, Sequence[Section]] | None = None,
) -> Any:
    """One email for one or more horizons: multipart/alternative, text and HTML, the charts inline (cid:).

    Pure apart from its inputs: the caller passes `now` and the Message-ID.
    """
    domain = message_id.rstrip(">").rpartition("@")[2] or "fxcu"
    cids = {h: f"chart-{h}-{now:%Y%m%d%H%M%S}@{domain}" for h, png in charts.items() if png}
    title = report_title(*forecasts, now=now)
    sections = digest_sections(forecasts, bundle, charts={h: f"cid:{c}" for h, c in cids.items()}, extra=extra)
    markdown = "\n".join([f"# {title}", "", *format_sections(sections)]).rstrip() + "\n"
    # a text reader has no image to show: say where the chart is instead of a dangling link
    text = re.sub(r"!\[[^\]]*\]\(cid:[^)]*\)", "(chart in the HTML version of this email)", markdown)
    message = EmailMessage()
    message["Subject"] = email_subject(forecasts, bool(bundle.degraded))
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = format_datetime(now.astimezone(ZoneInfo(SANTIAGO)))
    message["Message-ID"] = message_id
    message.set_content(text)
    message.add_alternative(html_page(markdown), subtype="html")
    html_part = message.get_payload()[1]
    for horizon, cid in cids.items():
        html_part.add_related(
            charts[horizon], maintype="image", subtype="png", cid=f"<{cid}>", filename=f"usdclp_{horizon}.png"
        )
    return message


# -- Core: the track record ------------------------------------------------------------

LEDGER = "forecast_ledger.parquet"
Kind = Literal["live", "reconstructed"]
LEDGER_KEY = ("horizon", "origin", "kind")  # a reconstructed row never replaces a live one, nor the reverse
BAND_LEVEL = 0.95  # the chance band `track` prints beside each coverage
# `check` grades 8 coverages a day (4 horizons x 2 levels); at 95% a calibrated system would warn on
# about a third of days, at 99% on under a tenth.
CHECK_BAND_LEVEL = 0.99
CHECK_LAST = 60  # scored forecasts per horizon that `check` grades
CHECK_MIN_SCORED = 20  # fewer than this and the band is too wide to say anything
RATIO_TEST_MIN, RATIO_TEST_P = 8, 0.01  # non-overlapping forecasts needed, and the one-sided p-value that warns
UNSCORED_GRACE_DAYS = 7  # a target this far past with no close (a week of holidays at most): scoring has stopped
SCORE_TOLERANCE = timedelta(days=10)  # a close this long after the target is a data gap, not the target's close


def ledger_schema() -> dict[str, Any]:
    """Column names and polars types of the forecast ledger, served fields first, then the scores."""

    num = pl.Float64
    return {
        "horizon": pl.String,
        "origin": pl.Date,
        "target": pl.Date,
        "kind": pl.String,
        "last_close": num,
        "forecast": num,
        "lo_80": num,
        "hi_80": num,
        "lo_95": num,
        "hi_95": num,
        # the random walk made at the same origin: the last close, with Naive's range
        "rw_lo_80": num,
        "rw_hi_80": num,
        "rw_lo_95": num,
        "rw_hi_95": num,
        "scale": num,  # the served density's sd of the log price at the target (`ledger_scale` fills older rows)
        "shape": pl.List(pl.Float64),  # FHS's standardised quantiles at SHAPE_GRID; null: the density is Gaussian
        "point_model": pl.String,
        "interval_model": pl.String,
        "sources": pl.String,
        "degraded": pl.String,
        "run_id": pl.String,
        "recorded_at": pl.Datetime("us", "UTC"),
        "backtest_ratio": num,
        "backtest_coverage_80": num,
        "backtest_coverage_95": num,
        "backtest_origins": pl.Int64,
        "actual_date": pl.Date,
        "actual": num,
        "error": num,
        "abs_error": num,
        "pct_error": num,
        "hit_80": pl.Boolean,
        "hit_95": pl.Boolean,
        "wis": num,
        "rw_error": num,
        "rw_abs_error": num,
        "rw_pct_error": num,
        "rw_hit_80": pl.Boolean,
        "rw_hit_95": pl.Boolean,
        "rw_wis": num,
        "pit": num,  # the served density's CDF at the realised close: uniform when the odds are calibrated
    }


SCORE_COLUMNS = tuple(list(ledger_schema())[list(ledger_schema()).index("actual_date") :])  # what score_ledger adds


def empty_ledger() -> pl.DataFrame:
    """A ledger with no rows."""

    return pl.DataFrame(schema=ledger_schema())


def served_point_model(rule: str) -> str:
    """The point model fxcu served, from the ensemble rule: `Naive`, or `Ensemble:<rule>`."""
    return "Naive" if rule == "naive" else f"{ENSEMBLE}:{rule}"


def ledger_entry(
    fc: Forecast, bundle: Bundle, *, run_id: str | None, now: datetime, kind: Kind = "live"
) -> dict[str, Any]:
    """The ledger row of one served forecast (pure): what was served at the horizon date, and by what."""

    final, bt = fc.final, fc.backtest
    naive = fc.path.filter(pl.col("model") == "Naive").tail(1).row(0, named=True)
    return {
        "horizon": fc.horizon,
        "origin": fc.origin,
        "target": final[DATE],
        "kind": kind,
        "last_close": fc.last_close,
        **{k: final[k] for k in ("forecast", "lo_80", "hi_80", "lo_95", "hi_95")},
        **{f"rw_{k}": naive[k] for k in ("lo_80", "hi_80", "lo_95", "hi_95")},
        "scale": fc.scale,
        "shape": None if fc.shape is None else list(fc.shape),
        "point_model": served_point_model(bt.rule),
        "interval_model": fc.interval_model,
        "sources": ",".join(f"{k}={v}" for k, v in sorted(bundle.sources.items())),
        "degraded": ",".join(bundle.degraded),
        "run_id": run_id,
        "recorded_at": now,
        "backtest_ratio": bt.ensemble.ratio,
        "backtest_coverage_80": bt.ensemble.coverage_80,
        "backtest_coverage_95": bt.ensemble.coverage_95,
        "backtest_origins": len(bt.origins),
    }


def ledger_scale() -> pl.Expr:
    """A ledger row's served sd of the log price: `scale`, or for a row written before it was stored, its 95% width.

    The served range is Gaussian in log price, so its 95% bounds are the median times exp(-/+ z * sd).
    """
    width = (pl.col("hi_95").log() - pl.col("lo_95").log()) / (2 * z_value(95))
    return pl.coalesce(pl.col("scale"), width).alias("scale")


def upsert_ledger(ledger: pl.DataFrame, rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Add rows to the ledger; a row with the key (horizon, origin, kind) of an existing one replaces it.

    The result never has fewer rows than `ledger`. New rows arrive unscored (`score_ledger` scores them).
    """

    if not rows:
        return ledger
    schema = ledger_schema()
    fresh = pl.DataFrame([{k: row.get(k) for k in schema} for row in rows], schema=schema)
    both = pl.concat([ledger.select(list(schema)).cast(schema), fresh])
    return both.unique(subset=list(LEDGER_KEY), keep="last", maintain_order=True).sort(list(LEDGER_KEY))


def score_ledger(ledger: pl.DataFrame, prices: pl.DataFrame) -> pl.DataFrame:
    """Score every row whose target has a realised close: the first close on or after the target date.

    Scores are recomputed from the prices each time (a revised close revises its score). A target
    whose next close is more than SCORE_TOLERANCE later, or not there yet, stays unscored. For each
    row: error (forecast - actual), absolute and percentage error, 80/95% hits, WIS; the same for
    the random walk from the same origin (its point is the last close, its range Naive's); and the
    served density's PIT at the close (`pit`: Gaussian, or the row's FHS shape).
    """

    if ledger.is_empty():
        return ledger
    closes = prices.select(pl.col(DATE).alias("actual_date"), pl.col(CLOSE).alias("actual")).sort("actual_date")
    joined = (
        ledger.drop(SCORE_COLUMNS, strict=False)
        .sort("target")
        .join_asof(closes, left_on="target", right_on="actual_date", strategy="forward", tolerance=SCORE_TOLERANCE)
    )
    y = pl.col("actual")

    def scores(prefix: str, point: pl.Expr) -> Iterator[pl.Expr]:
        p = f"{prefix}_" if prefix else ""
        yield (point - y).alias(f"{p}error")
        yield (point - y).abs().alias(f"{p}abs_error")
        yield ((point - y) / y * 100).alias(f"{p}pct_error")
        for lv in LEVELS:
            yield y.is_between(pl.col(f"{p}lo_{lv}"), pl.col(f"{p}hi_{lv}")).alias(f"{p}hit_{lv}")

    joined = joined.with_columns(*scores("", pl.col("forecast")), *scores("rw", pl.col("last_close")))
    ready = joined.filter(pl.col("actual").is_not_null()).with_columns(
        point=pl.col("forecast"), rw_point=pl.col("last_close")
    )
    quantiles = {  # in WIS_QUANTILES order
        "wis": ["lo_95", "lo_80", "point", "hi_80", "hi_95"],
        "rw_wis": ["rw_lo_95", "rw_lo_80", "rw_point", "rw_hi_80", "rw_hi_95"],
    }
    if ready.height:
        scored = wis(ready, quantiles)
        z = ready.select((pl.col("actual") / pl.col("forecast")).log() / ledger_scale())[:, 0].to_numpy()
        pits = pl.Series("pit", pit(z, np.zeros_like(z), np.ones_like(z), ready["shape"].to_list()), pl.Float64)
        ready = ready.select(*LEDGER_KEY).with_columns(scored["wis"], scored["rw_wis"], pits)
        joined = joined.join(ready, on=list(LEDGER_KEY), how="left")
    else:
        joined = joined.with_columns(pl.lit(None, pl.Float64).alias(c) for c in ("wis", "rw_wis", "pit"))
    return joined.select(list(ledger_schema())).sort(list(LEDGER_KEY))


def binomial_band(n: int, p: float, level: float = BAND_LEVEL) -> tuple[float, float]:
    """The coverage range a calibrated p-interval stays in with probability `level` over n independent forecasts.

    The central `level` interval of Binomial(n, p) over n (scipy.stats.binom.interval).
    """
    if n < 1:
        return 0.0, 1.0
    from scipy.stats import binom

    lo, hi = binom.interval(level, n, p)
    return float(lo) / n, float(hi) / n


def t_test_greater(values: Sequence[float]) -> float:
    """The one-sided p-value that the mean of `values` exceeds 0 (scipy.stats.ttest_1samp, alternative="greater").

    1.0 when there are fewer than two values or they do not vary (no evidence either way).
    """
    if len(values) < 2 or min(values) == max(values):  # not the variance: [0.003] * 3 has a mean 4e-19 off
        return 1.0
    from scipy.stats import ttest_1samp

    return float(ttest_1samp(values, 0.0, alternative="greater").pvalue)


def _rmse(values: Sequence[float] | pl.Series) -> float:
    """Root mean square of `values`."""
    return math.sqrt(float((pl.Series(values, dtype=pl.Float64) ** 2).mean()))


TRACK_MISSES = 5  # the latest 80% misses `track` lists


def _backtest_promise(rows: pl.DataFrame) -> dict[str, Any] | None:
    """What the backtest behind the latest forecast promised (its RMSE ratio, coverages and origins), or None."""
    names = {"backtest_ratio": "rmse_ratio_rw", "backtest_coverage_80": "coverage_80"}
    names |= {"backtest_coverage_95": "coverage_95", "backtest_origins": "origins"}
    latest = rows.sort("origin").tail(1).select(list(names)).rename(names).to_dicts()
    return latest[0] if latest else None


def _latest_misses(scored: pl.DataFrame) -> list[dict[str, Any]]:
    """The latest TRACK_MISSES scored rows outside their 80% range, newest first."""

    missed = scored.filter(~pl.col("hit_80")).tail(TRACK_MISSES).reverse()
    dates = [pl.col(c).cast(pl.String) for c in ("origin", "target", "actual_date")]
    return missed.select(*dates, "actual", "forecast", "lo_80", "hi_80", "hit_95").to_dicts()


def track_stats(rows: pl.DataFrame, *, last: int | None = None) -> dict[str, Any]:
    """The track record of one horizon's rows (one kind): counts, errors, coverage with its band, WIS, misses.

    Only scored rows count; with `last`, only the latest `last` of them (by origin).
    """

    scored = rows.filter(pl.col("actual").is_not_null()).sort("origin")
    if last is not None:
        scored = scored.tail(last)
    n = scored.height
    out: dict[str, Any] = {
        "forecasts": rows.height,
        "scored": n,
        "unscored": rows.height - rows.filter(pl.col("actual").is_not_null()).height,
    }
    out["backtest"] = _backtest_promise(rows)
    if not n:
        return out | {"rmse": None, "rmse_ratio_rw": None, "coverage_80": None, "coverage_95": None, "misses": []}
    rmse, rw_rmse = _rmse(scored["error"]), _rmse(scored["rw_error"])
    out |= {
        "first_origin": str(scored["origin"][0]),
        "last_origin": str(scored["origin"][-1]),
        "rmse": rmse,
        "rw_rmse": rw_rmse,
        "rmse_ratio_rw": rmse / rw_rmse if rw_rmse else None,
        "mae": float(scored["abs_error"].mean()),
        "mape": float(scored["pct_error"].abs().mean()),
        "wis": scored["wis"].mean(),
        "rw_wis": scored["rw_wis"].mean(),
    }
    out["wis_ratio"] = out["wis"] / out["rw_wis"] if out["wis"] is not None and out["rw_wis"] else None
    pits = scored["pit"].drop_nulls().to_numpy()
    out["pit_deciles"] = [float(v) for v in pit_deciles(pits)] if len(pits) else None
    for lv in LEVELS:
        out[f"coverage_{lv}"] = float(scored[f"hit_{lv}"].mean())
        out[f"rw_coverage_{lv}"] = float(scored[f"rw_hit_{lv}"].mean())
        out[f"band_{lv}"] = list(binomial_band(n, lv / 100))
    return out | {"misses": _latest_misses(scored)}


def track_record(
    ledger: pl.DataFrame, horizons: Sequence[str], *, last: int | None = None
) -> dict[str, dict[str, Any]]:
    """The track record per horizon: live numbers at the top level, reconstructed ones apart under `reconstructed`."""

    record = {}
    for horizon in horizons:
        mine = ledger.filter(pl.col("horizon") == horizon)
        live = track_stats(mine.filter(pl.col("kind") == "live"), last=last)
        record[horizon] = live | {
            "reconstructed": track_stats(mine.filter(pl.col("kind") == "reconstructed"), last=last)
        }
    return record


def _band(stats: Mapping[str, Any], level: int) -> str:
    return "" if not stats["scored"] else " [" + "-".join(f"{b:.0%}" for b in stats[f"band_{level}"]) + "]"


def format_track(record: Mapping[str, Mapping[str, Any]]) -> str:
    """The `track` table: per horizon and kind, live numbers next to the chance band and the backtest's expectation."""
    rows, misses, pits = [], [], []
    for horizon, live in record.items():
        for kind, s in (("live", live), ("reconstructed", live["reconstructed"])):
            if not s["forecasts"]:
                continue
            if s.get("pit_deciles"):
                pits.append(f"  {horizon} {kind}: " + " ".join(f"{v:.0%}" for v in s["pit_deciles"]))
            bt = s["backtest"] or {}
            rows.append(
                {
                    "horizon": horizon,
                    "kind": kind,
                    "scored": f"{s['scored']}/{s['forecasts']}",
                    "rmse": _fmt(s["rmse"], "-", ".2f"),
                    "ratio_rw": _fmt(s["rmse_ratio_rw"], "-", ".3f"),
                    "cov80 [band]": _fmt(s["coverage_80"], "-", ".0%") + _band(s, 80),
                    "cov95 [band]": _fmt(s["coverage_95"], "-", ".0%") + _band(s, 95),
                    "wis_ratio": _fmt(s.get("wis_ratio"), "-", ".3f"),
                    "backtest ratio/cov80/cov95": f"{_fmt(bt.get('rmse_ratio_rw'), '-', '.3f')}/"
                    f"{_fmt(bt.get('coverage_80'), '-', '.0%')}/{_fmt(bt.get('coverage_95'), '-', '.0%')}",
                }
            )
            misses += [
                f"  {horizon} {kind}: {m['origin']} -> {m['target']}: {m['actual']:.2f} on {m['actual_date']} "
                f"outside 80% [{m['lo_80']:.2f}, {m['hi_80']:.2f}]{'' if m['hit_95'] else ' and 95%'}"
                for m in s["misses"]
            ]
    if not rows:
        return "no forecasts in the ledger yet (run `fxcu run`, or `fxcu track --backfill START`)"
    lines = [
        *_table(list(rows[0]), [list(r.values()) for r in rows]),
        "",
        *(
            ["PIT deciles (share of closes in each tenth of the served odds; calibrated: 10% each):", *pits, ""]
            * bool(pits)
        ),
        "latest 80% misses:" if misses else "no 80% misses",
        *misses,
    ]
    return "\n".join(lines)


def live_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """A horizon's live track record as MLflow metrics (`live_rmse`, `live_coverage_80`, ...) that exist."""
    keys = ("scored", "rmse", "rmse_ratio_rw", "coverage_80", "coverage_95", "wis", "wis_ratio", "mae", "mape")
    return {f"live_{k}": float(stats[k]) for k in keys if stats.get(k) is not None}


def _non_overlapping(rows: pl.DataFrame) -> pl.DataFrame:
    """Keep forecasts whose windows do not overlap: each origin on or after the previous kept one's target."""
    kept, free_from = [], None
    for i, (origin, target) in enumerate(zip(rows["origin"], rows["target"], strict=True)):
        if free_from is None or origin >= free_from:
            kept.append(i)
            free_from = target
    return rows[kept]


def check_track_scoring(horizon: str, due: int, since: date | None) -> list[Check]:
    """WARNING when `due` forecasts are UNSCORED_GRACE_DAYS past their target with no realised close (pure)."""
    if not due:
        return []
    return [
        (f"track {horizon} scoring", "WARNING", f"{due} forecasts due since {since} not scored (no realised close)")
    ]


def check_track_coverage(horizon: str, n: int, covers: Mapping[int, float], *, level: float) -> Check:
    """Grade the coverage of n scored forecasts per nominal level against its binomial band at `level` (pure).

    Below CHECK_MIN_SCORED forecasts the band is too wide to say anything: OK, not graded.
    """
    name = f"track {horizon} coverage"
    if n < CHECK_MIN_SCORED:
        return name, "OK", f"{n} scored forecasts (grading starts at {CHECK_MIN_SCORED})"
    outside = []
    for lv, cover in covers.items():
        lo, hi = binomial_band(n, lv / 100, level)
        if not lo <= cover <= hi:
            outside.append(f"{lv}% coverage {cover:.0%} outside [{lo:.0%}, {hi:.0%}]")
    if outside:
        return name, "WARNING", "; ".join(outside) + f" over the last {n}"
    detail = ", ".join(f"{lv}% {cover:.0%}" for lv, cover in covers.items())
    return name, "OK", f"{detail} over the last {n}, within chance"


def check_track_ratio(
    horizon: str, errors: Sequence[float], rw_errors: Sequence[float], backtest_ratio: float
) -> Check:
    """Grade non-overlapping live errors against the backtest's error ratio to the random walk (pure).

    WARNING when the served squared error exceeds backtest_ratio squared times the random walk's, by a
    one-sided t-test at RATIO_TEST_P; fewer than RATIO_TEST_MIN forecasts are not tested (OK).
    """
    name, n = f"track {horizon} error ratio", len(errors)
    if n < RATIO_TEST_MIN:
        return name, "OK", f"{n} non-overlapping scored forecasts (testing starts at {RATIO_TEST_MIN})"
    excess = [e**2 - backtest_ratio**2 * r**2 for e, r in zip(errors, rw_errors, strict=True)]
    p = t_test_greater(excess)
    live_ratio = _rmse(errors) / max(_rmse(rw_errors), 1e-12)
    return (
        name,
        "WARNING" if p < RATIO_TEST_P else "OK",
        f"live {live_ratio:.3f}x the random walk vs backtest {backtest_ratio:.3f}x "
        f"over {n} non-overlapping (p={p:.3f})",
    )


def check_track(ledger: pl.DataFrame, *, today: date) -> list[Check]:
    """Grade the live track record of each horizon (pure, on a scored ledger): scoring, coverage, error ratio.

    - scoring: `check_track_scoring` on the forecasts UNSCORED_GRACE_DAYS past their target with no close;
    - coverage: `check_track_coverage` on the last CHECK_LAST scored forecasts' 80% and 95% hits;
    - error ratio: `check_track_ratio` on the last CHECK_LAST non-overlapping scored forecasts (overlapping
      windows share shocks, which would make any test over-confident), once coverage is graded.
    """

    live = ledger.filter(pl.col("kind") == "live")
    if live.is_empty():
        return [("track record", "OK", "no live forecasts in the ledger yet")]
    found: list[Check] = []
    for horizon in [h for h in HORIZONS if h in set(live["horizon"])]:
        rows = live.filter(pl.col("horizon") == horizon).sort("origin")
        due = rows.filter(pl.col("actual").is_null() & (pl.col("target") < today - timedelta(days=UNSCORED_GRACE_DAYS)))
        found += check_track_scoring(horizon, due.height, due["target"].min())
        scored = rows.filter(pl.col("actual").is_not_null())
        recent = scored.tail(CHECK_LAST)
        covers = {lv: float(recent[f"hit_{lv}"].mean()) for lv in LEVELS} if recent.height else {}
        found.append(check_track_coverage(horizon, recent.height, covers, level=CHECK_BAND_LEVEL))
        if recent.height < CHECK_MIN_SCORED:
            continue
        # a ledger written by an older fxcu may lack a column (read as nulls): such rows are not tested
        apart = _non_overlapping(scored).drop_nulls(["error", "rw_error"]).tail(CHECK_LAST)
        ratios = recent["backtest_ratio"].drop_nulls()
        if ratios.is_empty():
            continue
        found.append(check_track_ratio(horizon, apart["error"].to_list(), apart["rw_error"].to_list(), ratios[-1]))
    return found


def format_track_section(
    horizon: str, stats: Mapping[str, Any], change: Mapping[str, Any] | None, chart: str | None
) -> list[Section]:
    """The report's track-record sections: what changed, then the live numbers and the chart of served ranges."""
    lines = format_track({horizon: stats}).splitlines()
    if chart:
        lines += ["", f"![Realised USD/CLP against the served ranges]({chart})"]
    return [
        Section("changed", "What changed since the last run", (format_change(change),)),
        Section("track", f"Live track record ({horizon})", tuple(lines)),
    ]


def weekly_origins(days: Sequence[date], start: date) -> list[date]:
    """The last trading day of each week (Monday to Sunday) from `start` on, among `days` (sorted or not)."""
    by_week: dict[tuple[int, int], date] = {}
    for day in sorted(d for d in days if d >= start):
        by_week[day.isocalendar()[:2]] = day
    return sorted(by_week.values())


def reconstruct(
    usdclp: pl.DataFrame,
    copper: pl.DataFrame | None,
    origins: Sequence[date],
    horizons: Sequence[str],
    *,
    now: datetime,
) -> Iterator[dict[str, Any]]:
    """What fxcu would have served at each origin, from the data up to it only: ledger rows marked reconstructed.

    An origin with too little history for the backtest is skipped (logged).
    """

    for origin in origins:
        cut = usdclp.filter(pl.col(DATE) <= origin)
        cut_copper = None if copper is None else copper.filter(pl.col(DATE) <= origin)
        if cut_copper is not None and cut_copper.is_empty():
            cut_copper = None
        bundle = Bundle(
            cut, cut_copper, None, {"usdclp": "warehouse", "copper": "warehouse" if cut_copper is not None else "none"}
        )
        try:
            forecasts = forecast_all(cut, cut_copper, horizons)
        except ValueError as exc:
            log.warning("Backfill: origin %s skipped (%s)", origin, exc)
            continue
        for fc in forecasts.values():
            yield ledger_entry(fc, bundle, run_id=None, now=now, kind="reconstructed")


class NoServedForecast(LookupError):
    """The ledger holds no served (live) forecast of a horizon yet."""


def served_odds_table(
    ledger: pl.DataFrame, horizon: str, levels: Sequence[float], quantiles: Sequence[float] = QUANTILES
) -> dict[str, Any]:
    """The odds of ending above and below each level, and the quantiles, from the horizon's last served forecast.

    The last live ledger row of the horizon (latest origin, then latest recorded) is the served
    density: in log price around its forecast with its `ledger_scale`, Gaussian or its FHS `shape`. Pure; raises
    NoServedForecast without such a row and ValueError for a level that is not a positive number or a
    quantile outside (0, 1).
    """
    rows = ledger.filter((pl.col("horizon") == horizon) & (pl.col("kind") == "live"))
    if rows.is_empty():
        raise NoServedForecast(f"no served {horizon} forecast in the ledger yet: run `fxcu run {horizon}` first")
    row = rows.with_columns(ledger_scale()).sort("origin", "recorded_at").row(-1, named=True)
    median, scale, shape = row["forecast"], row["scale"], row["shape"]
    odds = [dict(zip(("prob_below", "prob_above"), served_odds(median, scale, x, shape), strict=True)) for x in levels]
    return {
        "horizon": horizon,
        "origin": str(row["origin"]),
        "target": str(row["target"]),
        "last_close": row["last_close"],
        "forecast": median,
        "scale": scale,
        "run_id": row["run_id"],
        "recorded_at": None if row["recorded_at"] is None else row["recorded_at"].isoformat(),
        "levels": [{"level": float(x), **o} for x, o in zip(levels, odds, strict=True)],
        "quantiles": {
            quantile_key(q): float(served_quantile(median, scale, check_probability(q), shape)) for q in quantiles
        },
    }


def _chance(p: float) -> str:
    """A probability for people: '42.1%', '<0.1%', '>99.9%'."""
    return "<0.1%" if p < 0.0005 else ">99.9%" if p > 0.9995 else f"{p:.1%}"


def format_odds(odds: Mapping[str, Any]) -> str:
    """`fxcu odds`: the forecast it answers from, then one line per level and the quantiles (pure)."""
    target = date.fromisoformat(odds["target"])
    lines = [
        f"USD/CLP {odds['horizon']}, forecast made on {odds['origin']} (last close {odds['last_close']:.2f}) "
        f"for {target:%a %d %b %Y}: {odds['forecast']:.2f}",
        *(
            f"  above {o['level']:.2f}: {_chance(o['prob_above'])}   below {o['level']:.2f}: {_chance(o['prob_below'])}"
            for o in odds["levels"]
        ),
        "  quantiles (ends below with that probability): "
        + ", ".join(f"{k} {v:.2f}" for k, v in odds["quantiles"].items()),
    ]
    return "\n".join(lines)


# -- Core: the run dashboard (runs, compare, stats) ------------------------------------

SHORT_METRICS = ("rmse", "mae", "mape", "ratio_to_naive", "coverage_80", "coverage_95", "direction_hit")


def metric_rank(name: str) -> Any:
    """Sort key for "best" on a metric: closest to nominal for coverage, highest for hit rate, else lowest (pure)."""
    nominal = re.search(r"coverage_(\d+)$", name)
    if nominal:
        return lambda value: abs(value - int(nominal.group(1)) / 100)
    if name.endswith("direction_hit"):
        return lambda value: -value
    return lambda value: value


def best_run_searches(name: str) -> list[tuple[str, str]]:
    """The MLflow searches (filter, order) whose first runs hold the best finished value of metric `name` (pure).

    The same best as `metric_rank`: a coverage's is the nearest above or the nearest below its nominal level.

    >>> best_run_searches("7d_rmse")
    [("attributes.status = 'FINISHED'", 'metrics.`7d_rmse` ASC')]
    """
    finished, key = "attributes.status = 'FINISHED'", f"metrics.`{name}`"
    nominal = re.search(r"coverage_(\d+)$", name)
    if nominal:
        level = int(nominal.group(1)) / 100
        return [(f"{finished} and {key} >= {level}", f"{key} ASC"), (f"{finished} and {key} < {level}", f"{key} DESC")]
    return [(finished, f"{key} {'DESC' if name.endswith('direction_hit') else 'ASC'}")]


# The dashboard reads a local SQLite store with sqlite3 alone (an interactive command: importing mlflow is most
# of its wait, docs/BENCHMARKS.md). MLFLOW_TRACKING_URI pointing to a server goes through mlflow's client instead.


@dataclass(frozen=True, slots=True)
class StoredRun:
    """One tracked run as the dashboard reads it, from a SQLite store or a tracking server."""

    run_id: str
    horizon: str
    name: str
    status: str  # MLflow's: FINISHED, FAILED, RUNNING, KILLED, SCHEDULED
    start_ms: int
    end_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def age_words(seconds: float) -> str:
    """An age in words: 'just now', '5 minutes ago', '3 hours ago', '2 days ago', '6 weeks ago' (pure)."""
    for size, unit in ((7 * 86400, "week"), (86400, "day"), (3600, "hour"), (60, "minute")):
        count = int(seconds // size)
        if count >= (2 if unit == "week" else 1):
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now" if seconds >= -60 else "in the future"


def run_status(run: StoredRun) -> str:
    """A run's status in words: ok, degraded (why), failed, running (pure)."""
    if run.status != "FINISHED":
        return run.status.lower()
    degraded = run.tags.get("fxcu.degraded", "none")
    return "ok" if degraded in {"none", ""} else f"degraded: {degraded.replace(',', ', ')}"


def run_served(run: StoredRun) -> str:
    """The served models of a run, from its `fxcu.served_models` tag ("-" without one) (pure)."""
    return run.tags.get("fxcu.served_models", "-")


def runs_rows(runs: Sequence[StoredRun], last: int) -> list[dict[str, Any]]:
    """One row per run for `runs`, newest first, `last` per horizon; change from the horizon's previous run (pure)."""
    rows, shown = [], dict.fromkeys({r.horizon for r in runs}, 0)
    for index, run in enumerate(runs):
        if shown[run.horizon] >= last:
            continue
        shown[run.horizon] += 1
        forecast = run.metrics.get("forecast")
        previous = next(
            (r.metrics["forecast"] for r in runs[index + 1 :] if r.horizon == run.horizon and "forecast" in r.metrics),
            None,
        )
        rows.append(
            {
                "run_id": run.run_id,
                "started": datetime.fromtimestamp(run.start_ms / 1000, UTC).isoformat(timespec="seconds"),
                "data_date": run.params.get("data_last_date"),
                "horizon": run.horizon,
                "target_date": run.params.get("target_date"),
                "forecast": forecast,
                "lo_80": run.metrics.get("forecast_lo_80"),
                "hi_80": run.metrics.get("forecast_hi_80"),
                "change": None if forecast is None or previous is None else forecast - previous,
                "served": run_served(run),
                "status": run_status(run),
            }
        )
    return rows


def _titled(title: str, table: Any, footer: str | None = None) -> Any:
    """A table under a bold title line (and over a footer line), neither wrapped to the table's width."""
    from rich.console import Group
    from rich.text import Text

    return Group(Text(title, style="bold"), table, *([Text(footer)] if footer else []))


def _styled(text: str, style: str) -> Any:
    from rich.text import Text

    return Text(text, style=style)


def _rich_table(columns: str, right: set[str], **options: Any) -> Any:
    """An empty Rich table with the `|`-separated `columns`, those named in `right` right-justified."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in columns.split("|"):
        table.add_column(name, justify="right" if name in right else "left", **options)
    return table


def runs_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The `runs` table (Rich), newest first; styles show only where `render` is asked for colour (pure)."""
    right = {"h", "forecast", "80% range", "change"}
    table = _rich_table("data|h|target|forecast|80% range|change|served|status", right, overflow="fold")
    for r in rows:
        change = "-" if r["change"] is None else f"{r['change']:+.2f}"
        span = "-" if r["lo_80"] is None else f"{r['lo_80']:.2f}–{r['hi_80']:.2f}"
        tone = "green" if r["status"] == "ok" else "yellow" if r["status"].startswith("degraded") else "red"
        table.add_row(
            r["data_date"] or "-",
            r["horizon"],
            r["target_date"] or "-",
            _fmt(r["forecast"], "-", ",.2f"),
            span,
            change,
            r["served"],
            _styled(r["status"], tone),
        )
    return _titled("USD/CLP forecasts tracked in MLflow (CLP per USD), newest first", table)


METRIC_INFO: dict[str, tuple[str, str, str]] = {
    "rmse": ("RMSE", "CLP per USD", "lower is better"),
    "mae": ("MAE", "CLP per USD", "lower is better"),
    "mape": ("MAPE", "%", "lower is better"),
    "ratio_to_naive": ("RMSE ratio to Naive", "x Naive's RMSE", "lower is better, below 1 beats the random walk"),
    "coverage_80": ("80% interval coverage", "% of outcomes inside", "closest to 80% is best"),
    "coverage_95": ("95% interval coverage", "% of outcomes inside", "closest to 95% is best"),
    "direction_hit": ("direction hit rate", "% of origins", "higher is better"),
}


def compare_rows(runs: Sequence[StoredRun], metric: str) -> list[dict[str, Any]]:
    """Per horizon: the latest run's `metric` for every model, the best model, and the best served run (pure)."""
    rows = []
    for horizon in HORIZONS:
        mine = [r for r in runs if r.horizon == horizon]
        if not mine:
            continue
        latest, name = mine[0], f"{horizon}_{metric}"
        models = [m for m in latest.params.get("models", "").split(",") if m]
        values = {m: latest.metrics.get(f"{m}_{metric}") for m in [*models, COMBINATION]}
        values[ENSEMBLE] = latest.metrics.get(name)
        scored = {k: v for k, v in values.items() if v is not None}
        finished = [r for r in mine if r.status == "FINISHED" and name in r.metrics]
        best = min(finished, key=lambda r: metric_rank(name)(r.metrics[name]), default=None)
        rows.append(
            {
                "horizon": horizon,
                "run_id": latest.run_id,
                "data_date": latest.params.get("data_last_date"),
                "models": values,
                "best_model": min(scored, key=lambda k: metric_rank(name)(scored[k])) if scored else None,
                "best_served": best.metrics[name] if best else None,
                "best_served_data_date": best.params.get("data_last_date") if best else None,
                "best_served_run": best.run_id if best else None,
            }
        )
    return rows


def compare_table(rows: Sequence[Mapping[str, Any]], metric: str) -> Any:
    """The `compare` table (Rich): models down, horizons across, the best of each column marked (pure)."""
    from rich import box
    from rich.table import Table

    label, unit, better = METRIC_INFO[metric]
    share = metric.startswith(("coverage", "direction"))
    spec = ".0%" if share else ".4f" if metric == "ratio_to_naive" else ".2f"
    fmt = lambda v: format(v, spec)  # noqa: E731
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("model")
    for r in rows:
        table.add_column(r["horizon"], justify="right")
    models = list(dict.fromkeys(m for r in rows for m in r["models"]))
    for model in models:
        cells = []
        for r in rows:
            value = r["models"].get(model)
            best = model == r["best_model"]
            cells.append(
                "-" if value is None else _styled(fmt(value) + (" *" if best else "  "), "bold green" if best else "")
            )
        table.add_row(f"{model} (served)" if model == ENSEMBLE else model, *cells)
    table.add_section()
    table.add_row(
        "best served, any run", *("-" if r["best_served"] is None else fmt(r["best_served"]) + "  " for r in rows)
    )
    table.add_row("  its data date", *((r["best_served_data_date"] or "-") + "  " for r in rows))
    return _titled(f"{label} ({unit}): {better}", table, "Latest run of each horizon; * marks the best in its column.")


def stats_rows(runs: Sequence[StoredRun], *, now: datetime) -> list[dict[str, Any]]:
    """Per experiment: runs, share finished, failures, newest run's age and data date (pure)."""
    rows = []
    for horizon in HORIZONS:
        mine = [r for r in runs if r.horizon == horizon]
        finished = sum(r.status == "FINISHED" for r in mine)
        newest = mine[0] if mine else None
        age = None if newest is None else now.timestamp() - newest.start_ms / 1000
        rows.append(
            {
                "experiment": EXPERIMENT_PREFIX + horizon,
                "runs": len(mine),
                "success_rate": finished / len(mine) if mine else None,
                "failed": sum(r.status == "FAILED" for r in mine),
                "degraded": sum(run_status(r).startswith("degraded") for r in mine),
                "last_run_age_s": None if age is None else round(age),
                "last_run": None if age is None else age_words(age),
                "last_data_date": newest.params.get("data_last_date") if newest else None,
            }
        )
    return rows


def stats_table(rows: Sequence[Mapping[str, Any]], sizes: Mapping[str, int]) -> Any:
    """The `stats` table (Rich) (pure)."""
    table = _rich_table(
        "experiment|runs|finished|failed|degraded|last run|data", {"runs", "finished", "failed", "degraded"}
    )
    for r in rows:
        rate = "-" if r["success_rate"] is None else f"{r['success_rate']:.0%}"
        tone = "green" if r["success_rate"] == 1 else "yellow" if r["success_rate"] is not None else ""
        failed = _styled(str(r["failed"]), "red" if r["failed"] else "")
        table.add_row(
            r["experiment"],
            str(r["runs"]),
            _styled(rate, tone),
            failed,
            str(r["degraded"]),
            r["last_run"] or "never",
            r["last_data_date"] or "-",
        )
    sizes_line = (
        f"Database and artifacts on the tracking server {sizes['server']}."
        if sizes.get("server")
        else f"Database {sizes['database_bytes'] / 1e6:.1f} MB, artifacts {sizes['artifacts_bytes'] / 1e6:.1f} MB."
    )
    return _titled("MLflow experiments: runs, share finished, newest run", table, sizes_line)


def render(table: Any, *, color: bool, width: int = 100) -> str:
    """Draw a Rich table as text at most `width` columns wide, with ANSI colour only when `color`."""

    from rich.console import Console

    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        color_system="standard" if color else None,
        force_terminal=color,
        no_color=not color,
        highlight=False,
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()).strip("\n")


# -- Core: grading the health check ----------------------------------------------------

# `check`'s default limits; sizes in decimal units, as its messages print them
BYTES_PER_MB, BYTES_PER_GB = 10**6, 10**9
DATA_CRITICAL_DAYS = 30.0  # USD/CLP a month old: every forecast since has been served from stale data
RUN_WARN_HOURS = 80.0  # a weekday cron's Friday run is still fresh on Monday evening
DB_WARN_MB = 100.0  # about 33 kB a run (issue 5): three years of weekday runs of four horizons; then prune
DISK_WARN_GB = 1.0  # a run writes a few MB (report, charts, ledger, MLflow): weeks of runs left
DISK_CRITICAL_GB = 0.1  # the next parquet or SQLite write may fail
SERVER_WARN_SECONDS = 2.0  # one search_runs of a tracking server; `fxcu runs` makes one per horizon


@dataclass(frozen=True, slots=True)
class Thresholds:
    """`check`'s limits: defaults from the config (`Thresholds.defaults`), then FXCU_CHECK_* variables, then flags."""

    data_warn_days: float = 5  # USD/CLP and copper: Config.max_age_days, the age at which a run calls data stale
    data_critical_days: float = DATA_CRITICAL_DAYS  # USD/CLP only: copper never stops a forecast
    run_warn_hours: float = RUN_WARN_HOURS
    db_warn_mb: float = DB_WARN_MB
    disk_warn_gb: float = DISK_WARN_GB
    disk_critical_gb: float = DISK_CRITICAL_GB
    server_warn_seconds: float = SERVER_WARN_SECONDS

    @classmethod
    def defaults(cls, config: Config | None = None) -> Thresholds:
        """The default limits for a config (pure): data warns past its `max_age_days` (FXCU_MAX_AGE_DAYS).

        That is the age at which a run calls its data stale, so `check` and `run` agree. USD/CLP turns
        CRITICAL past DATA_CRITICAL_DAYS, or twice the warning age when that is later.
        """
        if config is None:
            return cls()
        warn = float(config.max_age_days)
        return cls(data_warn_days=warn, data_critical_days=max(DATA_CRITICAL_DAYS, 2 * warn))

    @classmethod
    def from_env(cls, environ: Mapping[str, str], config: Config | None = None, **flags: float | None) -> Thresholds:
        """The config's defaults, then FXCU_CHECK_<FIELD> variables, then flags; ConfigError if inconsistent.

        A data warning age that was not given (derived from FXCU_MAX_AGE_DAYS) and is not below the
        critical age becomes half the critical age, so `check -c 30` alone works whatever the config.
        """
        base = cls.defaults(config)
        values = {
            f.name: env_number(environ, f"FXCU_CHECK_{f.name.upper()}", getattr(base, f.name))
            for f in dataclasses.fields(cls)
        }
        values |= {name: value for name, value in flags.items() if value is not None}
        limits = cls(**values)
        warn_given = flags.get("data_warn_days") is not None or environ.get("FXCU_CHECK_DATA_WARN_DAYS", "").strip()
        if not warn_given and limits.data_critical_days <= limits.data_warn_days:
            # a warning age derived from FXCU_MAX_AGE_DAYS yields to a critical age set at or below it
            limits = dataclasses.replace(limits, data_warn_days=limits.data_critical_days / 2)
        if limits.data_critical_days <= limits.data_warn_days:
            raise ConfigError(
                f"data critical age ({limits.data_critical_days:g} days) must exceed "
                f"the warning age ({limits.data_warn_days:g})"
            )
        if limits.disk_critical_gb >= limits.disk_warn_gb:
            raise ConfigError(
                f"disk critical free space ({limits.disk_critical_gb:g} GB) must be below "
                f"the warning ({limits.disk_warn_gb:g} GB)"
            )
        return limits


@dataclass(frozen=True, slots=True)
class Perf:
    """One Nagios performance datum, rendered `'label'=value[uom];warn;crit;min;max`.

    Nagios knows only the units s, %, B and c (and none), so ages carry their unit in the label.
    A threshold `10:` alerts below 10 (Nagios range syntax), as free disk space needs.
    """

    label: str
    value: float
    uom: str = ""
    warn: str = ""
    crit: str = ""
    min: float | None = 0
    max: float | None = None


def format_perf(perf: Sequence[Perf]) -> str:
    """Perfdata for the part of the status line after `|`, trailing empty fields dropped."""
    items = []
    for p in perf:
        fields = [f"{_fmt(p.value)}{p.uom}", p.warn, p.crit, _fmt(p.min, ""), _fmt(p.max, "")]
        items.append(f"'{p.label}'=" + ";".join(fields).rstrip(";"))
    return " ".join(items)


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What `check` read of a warehouse file: its last date and row count, or why it could not be read."""

    file: str
    last: date | None = None
    rows: int = 0
    error: str | None = None  # the exception's type name: the file is unreadable
    seed_only: bool = False  # every row is the shipped seed's: no live source has answered yet


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """What `check` read of the MLflow store: a remote URI, a missing file, or its runs and size.

    A tracking server (`probed`) is asked over HTTP: how long one search of its runs took and when its newest
    fxcu run started, or why it did not answer (`error`). Another remote URI (a database) is not probed.
    """

    remote: str | None = None  # MLFLOW_TRACKING_URI, redacted
    missing: Path | None = None
    runs: int = 0
    size_bytes: int = 0
    error: str | None = None  # unreadable, or half-made by a crash; a server: unreachable or failing
    probed: bool = False
    search_seconds: float | None = None
    last_run: datetime | None = None  # None: no fxcu run on the server yet


@dataclass(frozen=True, slots=True)
class CheckFacts:
    """Everything `check` grades, read once by `read_check_facts`; `check_findings` and `check_perf` grade it."""

    usdclp: SeriesFacts
    copper: SeriesFacts
    status: Mapping[str, Any]  # status.json: the last run per horizon
    database: DatabaseFacts
    free_bytes: int  # on the data dir's disk
    ledger: pl.DataFrame | None = None  # scored in memory against the warehouse; None without a ledger
    ledger_error: str | None = None  # the ledger exists but cannot be read


def _with_rows(message: str, rows: int) -> str:
    """`9 days old (last 2026-11-17)` -> `9 days old (last 2026-11-17, 6590 rows)`."""
    return f"{message[:-1]}, {rows} rows)" if rows and message.endswith(")") else message


def grade(value: float, warn: float, crit: float | None = None) -> Level:
    """The level of a value against its limits (pure): CRITICAL past `crit`, WARNING past `warn`, else OK.

    The limits are upper bounds, unless `crit` is below `warn`: then they are lower bounds (free disk).
    Without `crit` there is no CRITICAL.
    """
    sign = -1 if crit is not None and crit < warn else 1
    if crit is not None and sign * value > sign * crit:
        return "CRITICAL"
    return "WARNING" if sign * value > sign * warn else "OK"


def check_age(
    name: str, last: date | None, *, today: date, warn_days: float, critical_days: float | None, missing: Level
) -> Check:
    """Grade a series by the age of its last date (pure): WARNING past warn_days, CRITICAL past critical_days."""
    if last is None:
        return name, missing, "no data"
    if last > today + timedelta(days=1):  # a negative age is a poisoned file, never fresh data
        return name, "CRITICAL", f"last {last} is in the future: the file holds implausible rows"
    age = (today - last).days
    return name, grade(age, warn_days, critical_days), f"{age} days old (last {last})"


def only_seed(check: Check) -> Check:
    """A history that is still only the shipped seed warns, whatever its age: nothing live has been stored (pure).

    An offline first day is a set-up to finish, not an outage; a poisoned (future) date stays CRITICAL.
    """
    name, level, message = check
    if "future" in message:
        return check
    return name, "WARNING", f"seed history only, {message}: no live source has answered yet (run `fxcu fetch`)"


def check_unreadable(name: str, facts: SeriesFacts) -> Check:
    """A warehouse file that cannot be read is CRITICAL: a run would fail on it too (pure)."""
    return name, "CRITICAL", f"{facts.file} unreadable ({facts.error})"


def check_usdclp(facts: SeriesFacts, *, today: date, limits: Thresholds) -> Check:
    """Grade USD/CLP by its warehouse age (pure): CRITICAL when missing, unreadable or past the critical age."""
    if facts.error:
        return check_unreadable("usdclp data", facts)
    name, level, message = check_age(
        "usdclp data",
        facts.last,
        today=today,
        warn_days=limits.data_warn_days,
        critical_days=limits.data_critical_days,
        missing="CRITICAL",
    )
    graded = name, level, _with_rows(message, facts.rows)
    return only_seed(graded) if facts.seed_only else graded


def check_copper(
    last: date | None,
    rows: int,
    degraded: Sequence[str] | None,
    *,
    today: date,
    limits: Thresholds,
    seed_only: bool = False,
) -> Check:
    """One copper verdict from its warehouse age and the last run's degraded reasons, so none contradict (pure)."""
    name, level, message = check_age(
        "copper data", last, today=today, warn_days=limits.data_warn_days, critical_days=None, missing="WARNING"
    )
    message = "no data: forecasts run without copper" if last is None else _with_rows(message, rows)
    if seed_only and last is not None:
        name, level, message = only_seed((name, level, message))
    said = {
        Degraded.NO_COPPER: "the last run had no copper",
        Degraded.STALE_COPPER: "the last run had stale copper (no copper model)",
    }
    found = [said[r] for r in degraded or () if r in said]
    if found and last is not None:
        level, message = "WARNING", f"{found[0]}; data {message}"
    elif degraded and Degraded.MONTHLY_COPPER in degraded:
        message += "; the last run used monthly FRED copper (degraded)"
    return name, level, message


def _entry_time(entry: Any) -> datetime | None:
    """The time of a status entry, or None when the entry is not a mapping with an ISO time (with zone)."""
    try:
        stamp = datetime.fromisoformat(entry["time"])
    except (TypeError, KeyError, ValueError):
        return None
    return stamp if stamp.tzinfo is not None else None


def last_run_degraded(status: Mapping[str, Any]) -> list[str] | None:
    """The degraded reasons of the latest run of any horizon in the status file; None when none has a time (pure)."""
    timed = [(stamp, e) for e in status.values() if (stamp := _entry_time(e)) is not None]
    if not timed:
        return None
    listed = max(timed, key=lambda pair: pair[0])[1].get("degraded")
    return [str(d) for d in listed] if isinstance(listed, list) else []


def check_runs(status: Mapping[str, Any], *, now: datetime, max_age_hours: float = RUN_WARN_HOURS) -> Iterator[Check]:
    """Grade the last run of each horizon from the status file (pure): failed CRITICAL; untracked or old WARNING."""
    for horizon in HORIZONS:
        entry = status.get(horizon)
        name = f"run {horizon}"
        if not entry:
            yield name, "WARNING", "never run"
            continue
        stamp = _entry_time(entry)
        if stamp is None:
            yield name, "WARNING", "status.json entry malformed (no valid time); the next run rewrites it"
            continue
        age = (now - stamp).total_seconds() / 3600
        if not entry.get("ok"):
            yield name, "CRITICAL", f"last run failed {age:.0f} h ago: {entry.get('error', 'no report')}"
        elif not entry.get("tracked"):
            yield name, "WARNING", f"last run {age:.0f} h ago, NOT tracked in MLflow ({entry.get('tracking_error')})"
        elif age > max_age_hours:
            yield name, "WARNING", f"last run {age:.0f} h ago (older than {max_age_hours:.0f} h)"
        else:
            reasons = entry.get("degraded") if isinstance(entry.get("degraded"), list) else []
            degraded = f", degraded: {', '.join(map(str, reasons))}" if reasons else ""
            yield (
                name,
                "OK",
                f"{age:.1f} h ago, tracked, forecast {entry.get('forecast')} for {entry.get('target_date')}{degraded}",
            )


def check_database(size_bytes: int, runs: int, *, limits: Thresholds) -> Check:
    """Grade the local MLflow database by its size (pure): WARNING over db_warn_mb."""
    level = grade(size_bytes, limits.db_warn_mb * BYTES_PER_MB)
    over = level != "OK"
    return (
        "mlflow database",
        level,
        f"{runs} runs, {size_bytes / BYTES_PER_MB:.1f} MB" + (f" (over {limits.db_warn_mb:g} MB)" if over else ""),
    )


def check_mlflow(facts: DatabaseFacts, *, limits: Thresholds) -> Check:
    """Grade the MLflow store (pure): a remote one is not probed, a missing one warns, an unreadable one is CRITICAL."""
    name = "mlflow database"
    if facts.remote is not None:
        return name, "OK", f"remote tracking at {facts.remote} (not probed)"
    if facts.missing is not None:
        return name, "WARNING", f"missing ({facts.missing}); run `fxcu init`"
    if facts.error is not None:
        return name, "CRITICAL", f"unreadable ({facts.error})"
    return check_database(facts.size_bytes, facts.runs, limits=limits)


def check_server(facts: DatabaseFacts, *, now: datetime, limits: Thresholds) -> Check:
    """Grade a tracking server (pure): CRITICAL when it fails or runs stopped arriving, WARNING when slow or empty.

    Runs stopped arriving: its newest fxcu run, from any analyst, is older than `run_warn_hours`.
    """
    name, where = "mlflow server", facts.remote
    if facts.error is not None or facts.search_seconds is None:
        return name, "CRITICAL", f"{where} {facts.error or 'not probed'}: runs are not being tracked"
    took = f"search_runs {facts.search_seconds:.2f} s"
    if facts.last_run is None:
        return name, "WARNING", f"{where} answers ({took}) but holds no fxcu run yet"
    age = (now - facts.last_run).total_seconds() / 3600
    if age > limits.run_warn_hours:
        said = f"runs stopped arriving: the newest on {where} started {age:.0f} h ago"
        return name, "CRITICAL", f"{said} (over {limits.run_warn_hours:g} h)"
    if facts.search_seconds > limits.server_warn_seconds:
        return name, "WARNING", f"{where} is slow: {took} (over {limits.server_warn_seconds:g} s)"
    return name, "OK", f"{where} answers: {took}, newest run {age:.1f} h ago"


def check_disk(free_bytes: int, *, limits: Thresholds) -> Check:
    """Grade the data dir's free disk (pure): WARNING under disk_warn_gb, CRITICAL under disk_critical_gb."""
    level = grade(free_bytes, limits.disk_warn_gb * BYTES_PER_GB, limits.disk_critical_gb * BYTES_PER_GB)
    return "disk", level, f"{free_bytes / BYTES_PER_GB:.1f} GB free"


def check_ledger(facts: CheckFacts, *, today: date) -> list[Check]:
    """The track-record checks (pure): none without a ledger, a WARNING for an unreadable one, else `check_track`."""
    if facts.ledger_error is not None:
        return [("track record", "WARNING", facts.ledger_error)]
    return [] if facts.ledger is None else check_track(facts.ledger, today=today)


def check_findings(facts: CheckFacts, *, now: datetime, limits: Thresholds) -> list[Check]:
    """Every check of the facts (pure), in the order the plugin prints them."""
    today = now.date()
    copper = facts.copper
    return [
        check_usdclp(facts.usdclp, today=today, limits=limits),
        check_unreadable("copper data", copper)
        if copper.error
        else check_copper(
            copper.last,
            copper.rows,
            last_run_degraded(facts.status),
            today=today,
            limits=limits,
            seed_only=copper.seed_only,
        ),
        *check_runs(facts.status, now=now, max_age_hours=limits.run_warn_hours),
        *check_ledger(facts, today=today),
        check_server(facts.database, now=now, limits=limits)
        if facts.database.probed
        else check_mlflow(facts.database, limits=limits),
        check_disk(facts.free_bytes, limits=limits),
    ]


def overall(checks: Sequence[Check]) -> Level:
    """The worst level of all checks."""
    return max((level for _, level, _ in checks), key=LEVEL_CODE.__getitem__, default="OK")


def headline(checks: Sequence[Check]) -> str:
    """The Nagios status line: overall level and worst problem, e.g. `WARNING - copper data: 9 days old` (pure)."""
    level = overall(checks)
    if level == "OK":
        return f"OK - all {len(checks)} checks passed"
    worst = [c for c in checks if c[1] == level]
    others = sum(lv != "OK" for _, lv, _ in checks) - 1
    return f"{level} - {worst[0][0]}: {worst[0][2]}" + (
        f" (+{others} more {'problem' if others == 1 else 'problems'})" if others else ""
    )


def format_check(checks: Sequence[Check], perf: Sequence[Perf]) -> str:
    """The plugin output: status line with perfdata after `|`, then one line per check (pure)."""
    first = headline(checks) + (f" | {format_perf(perf)}" if perf else "")
    return "\n".join([first, *(f"{lv:<8} {name}: {message}" for name, lv, message in checks)])


def format_check_json(checks: Sequence[Check], perf: Sequence[Perf]) -> str:
    """`check --json`: status, headline, checks and perfdata for scripts (pure)."""
    document = {
        "status": overall(checks),
        "headline": headline(checks),
        "checks": [{"name": n, "level": lv, "message": m} for n, lv, m in checks],
        "perfdata": [dataclasses.asdict(p) for p in perf],
    }
    return json.dumps(document, indent=2)


def track_perf(ledger: pl.DataFrame) -> list[Perf]:
    """Perfdata of the live record: each horizon's 80% and 95% coverage over its last CHECK_LAST scored forecasts."""
    record = track_record(ledger, list(HORIZONS), last=CHECK_LAST)
    return [
        Perf(f"live_coverage_{level}_{horizon}", round(100 * stats[f"coverage_{level}"], 1), "%", min=0, max=100)
        for horizon, stats in record.items()
        for level in LEVELS
        if stats["scored"] and stats[f"coverage_{level}"] is not None
    ]


def check_perf(facts: CheckFacts, *, now: datetime, limits: Thresholds) -> list[Perf]:
    """The perfdata of the facts (pure): data ages, live coverage, run ages, database size, free disk."""
    today = now.date()
    data_warn = f"{limits.data_warn_days:g}"
    perf = [
        Perf(f"{label}_age_days", (today - s.last).days, warn=data_warn, crit=crit)
        for label, s, crit in (
            ("usdclp", facts.usdclp, f"{limits.data_critical_days:g}"),
            ("copper", facts.copper, ""),  # copper never stops a forecast: no critical age
        )
        if s.last is not None and not s.error
    ]
    perf += track_perf(facts.ledger) if facts.ledger is not None else []
    perf += [
        Perf(f"run_{h}_age_hours", round((now - stamp).total_seconds() / 3600, 2), warn=f"{limits.run_warn_hours:g}")
        for h in HORIZONS
        if (stamp := _entry_time(facts.status.get(h))) is not None
    ]
    db = facts.database
    if db.remote is None and db.missing is None and db.error is None:
        perf.append(Perf("mlflow_db", db.size_bytes, "B", warn=f"{limits.db_warn_mb * BYTES_PER_MB:.0f}"))
    if db.search_seconds is not None:
        perf.append(
            Perf("mlflow_search_seconds", round(db.search_seconds, 4), "s", warn=f"{limits.server_warn_seconds:g}")
        )
    if db.last_run is not None:
        hours = round((now - db.last_run).total_seconds() / 3600, 2)
        perf.append(Perf("mlflow_last_run_age_hours", hours, crit=f"{limits.run_warn_hours:g}"))
    warn, crit = (f"{gb * BYTES_PER_GB:.0f}:" for gb in (limits.disk_warn_gb, limits.disk_critical_gb))
    perf.append(Perf("disk_free", facts.free_bytes, "B", warn=warn, crit=crit))
    return perf


# -- Core: the sources, each described in one place ------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """One live source of one series: where it is, what to ask, how to read the answer, what to expect of it."""

    name: Literal["yahoo", "mindicador", "fred"]
    series: Literal["usdclp", "copper"]
    rank: int  # a lower rank wins when two sources disagree on a date (SOURCE_RANK)
    base: Literal[
        "yahoo_url", "mindicador_url", "fred_url"
    ]  # the Config field with the base URL (tests point it at 127.0.0.1)
    path: str
    requests: Callable[[date | None, datetime], list[tuple[str, dict[str, str]]]]  # (path suffix, params) per request
    parse: Callable[[Mapping[str, Any]], pl.DataFrame]
    plausible: Plausible
    probe: tuple[str, Mapping[str, str]]  # (path suffix, params) of the short `check --network` request
    frequency: Literal["daily", "monthly"] = "daily"
    symbol: str | None = None
    key: bool = False  # needs FRED_API_KEY: it fills the empty `api_key` param (redacted everywhere)

    @property
    def label(self) -> str:
        return f"{self.name} {self.symbol}" if self.symbol else self.name


def _yahoo(symbol: str, series: Literal["usdclp", "copper"], currency: str, rules: Plausible) -> Source:
    return Source(
        "yahoo",
        series,
        SOURCE_RANK["yahoo"],
        "yahoo_url",
        f"/v8/finance/chart/{symbol}",
        requests=lambda since, now: [("", yahoo_params(since, now))],
        parse=lambda payload: parse_yahoo_chart(payload, symbol=symbol, currency=currency),
        plausible=rules,
        probe=("", {"interval": "1d", "range": "5d"}),
        symbol=symbol,
    )


FRED_PARAMS = {"series_id": FRED_COPPER_SERIES, "api_key": "", "file_type": "json"}  # `with_key` fills the key
SOURCES: dict[str, tuple[Source, ...]] = {
    "usdclp": (
        _yahoo(USDCLP_SYMBOL, "usdclp", "CLP", USDCLP_RULES),
        Source(
            "mindicador",
            "usdclp",
            SOURCE_RANK["mindicador"],
            "mindicador_url",
            "/api/dolar",
            requests=lambda since, now: [(f"/{year}", {}) for year in mindicador_years(since, now)],
            parse=parse_mindicador,
            plausible=USDCLP_RULES,
            probe=("", {}),
        ),
    ),
    "copper": (
        _yahoo(COPPER_SYMBOL, "copper", "USD", COPPER_RULES),
        Source(
            "fred",
            "copper",
            SOURCE_RANK["fred"],
            "fred_url",
            "/fred/series/observations",
            requests=lambda since, now: [("", FRED_PARAMS)],
            parse=parse_fred_observations,
            plausible=COPPER_RULES,
            probe=("", {**FRED_PARAMS, "sort_order": "desc", "limit": "3"}),
            frequency="monthly",
            key=True,
        ),
    ),
}


def with_key(params: Mapping[str, str], key: str | None) -> dict[str, str]:
    """The params with an empty `api_key` filled in (its place kept: the query reads as FRED documents it)."""
    return {k: (key or "") if k == "api_key" else v for k, v in params.items()}


# -- Shell: files, locks and processes -------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float, what: str = "lock") -> Iterator[None]:
    """Hold an exclusive advisory lock on `path`, waiting at most `timeout` seconds.

    Raises TimeoutError when another process holds it longer; the lock dies with its process.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(path, "a+")  # noqa: SIM115 -- closed by the `with` below
    except OSError as exc:
        if exc.errno not in {errno.EACCES, errno.EPERM, errno.EROFS}:
            raise
        if not path.exists():  # a read-only dir with no lock file: this process cannot write, so nothing to serialise
            yield
            return
        handle = open(path)  # noqa: SIM115 -- flock works on a read-only handle too
    with handle:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{what} {path} is held by another process after {timeout:g} s") from None
                if not said:
                    holder = path.read_text(errors="replace").strip()[:120] or "unknown"
                    log.warning("Waiting for %s %s, held by %s, for up to %g s", what, path, holder, timeout)
                    said = True
                time.sleep(0.1)
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
        with contextlib.suppress(OSError):  # unbuffered: a read-only handle or a full disk only leaves it unnamed
            os.ftruncate(handle.fileno(), 0)
            os.pwrite(handle.fileno(), holder.encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def temp_owner() -> str:
    """`PID@HOST` for temp names, so `clean_leftovers` can tell a dead run's files from a live one's."""

    return f"{os.getpid()}@{re.sub(r'[^A-Za-z0-9]', '_', socket.gethostname())[:32]}"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; once the block has written it, fsync and rename it over `path`.

    Readers never see half a file, and on any failure the old file stays and the temp file goes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{temp_owner()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str | bytes, path: Path) -> None:
    """Write a text or bytes file atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode() if isinstance(text, str) else text)


@contextlib.contextmanager
def tempfile_dir(data_dir: Path) -> Iterator[Path]:
    """A scratch folder under the data dir (same filesystem), removed afterwards."""

    data_dir.mkdir(parents=True, exist_ok=True)
    # the owner in the name: `clean_leftovers` spares live runs
    path = Path(tempfile.mkdtemp(prefix=f".tmp-{temp_owner()}-", dir=data_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


LEFTOVER_FOLDERS = ("", "warehouse", "reports", "mlflow", "backups")


def leftover_owner(name: str) -> tuple[int, str] | None:
    """The (pid, host) of a temp name, else None.

    Temp names are `.tmp-PID@HOST-xyz` (tempfile_dir) and `.NAME.PID@HOST.tmp` (atomic_path).
    """
    found = re.fullmatch(r"\.tmp-(\d+)@(\w+)-.*|\..+\.(\d+)@(\w+)\.tmp(?:-journal)?", name)
    if not found:
        return None
    pid, host = (found.group(1), found.group(2)) if found.group(1) else (found.group(3), found.group(4))
    return int(pid), host


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_leftovers(data_dir: Path, *, now: float | None = None) -> int:
    """Remove temp files and folders a killed run left; return how many.

    Stale: made on this host by a process that is gone, or an hour old whoever made it (another
    container, whose process ids this one cannot see, or an older release with no owner in the name).
    """

    now = time.time() if now is None else now
    me = temp_owner()
    host = me.split("@", 1)[1]
    removed = 0
    for folder in LEFTOVER_FOLDERS:
        with contextlib.suppress(OSError):
            for path in (data_dir / folder).iterdir():
                owner = leftover_owner(path.name)
                name = path.name
                temp_like = name.startswith(".tmp-") or (name[:1] == "." and name.endswith((".tmp", ".tmp-journal")))
                if owner is None and not temp_like:
                    continue  # not a temp name
                if owner is not None and owner[1] == host:  # this host's process ids can be checked
                    stale = f"{owner[0]}@{owner[1]}" != me and not _alive(owner[0])
                else:
                    stale = now - path.lstat().st_mtime > 3600
                if not stale:
                    continue
                with contextlib.suppress(OSError):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                    removed += 1
    if removed:
        log.info("Removed %d leftover temp file(s) of an interrupted run", removed)
    return removed


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _bounded(
    seconds: float, what: str, fn: Any, *args: Any, cancel: Any = None, said: str | None = None, **kwargs: Any
) -> Any:
    """Run `fn` in a daemon thread and give up after `seconds` (MLflow retries a bad SQLite path for minutes).

    On giving up, `cancel` (a threading.Event) is set, so the thread can stop before its next write, and
    the TimeoutError says `said` (else "<what> did not finish within <seconds> s").
    """

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 -- handed back to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"fxcu-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if cancel is not None:
            cancel.set()
        raise TimeoutError(said or f"{what} did not finish within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- Shell: HTTP -----------------------------------------------------------------------


def _unreachable(exc: BaseException | None) -> bool:
    """True when the chain holds a name that did not resolve, a connection refused or no route: no network."""
    while exc is not None:
        if isinstance(exc, socket.gaierror | ConnectionRefusedError) or (
            isinstance(exc, OSError) and exc.errno in {errno.ENETUNREACH, errno.EHOSTUNREACH}
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _is_transient(exc: BaseException) -> bool:
    """429, 5xx, timeouts and other transport errors are worth another try; a name that does not resolve or a
    connection refused is not (offline it never will be this run, and each retry only waits)."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError) and not _unreachable(exc)


def _retry_after(exc: BaseException | None, cap: float) -> float | None:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        raw = exc.response.headers.get("Retry-After", "")
        if raw.strip().isascii() and raw.strip().isdigit():  # str.isdigit accepts "²", which float() refuses
            return min(float(raw), cap)
    return None


MAX_BODY_BYTES = 32 * 2**20  # decompressed; the largest real answer (HG=F, range=max) is about 1 MB
MAX_ERROR_BODY_BYTES = 2**16  # an error body is only quoted (200 characters)
PIECE = 2**16  # about the most one step of decoding yields (brotli may give half again), so a bomb stops at the cap


def _gunzip(chunks: Iterable[bytes], wbits: int = zlib.MAX_WBITS | 32) -> Iterator[bytes]:
    """gzip or zlib (wbits | 32: told apart by their headers), member after member; raw deflate with wbits < 0."""
    inflater = zlib.decompressobj(wbits)
    try:
        for chunk in chunks:
            while chunk:
                yield inflater.decompress(chunk, PIECE)
                chunk = inflater.unconsumed_tail
                if inflater.eof:  # a member ended: what follows is the next member (gzip allows several)
                    chunk, inflater = inflater.unused_data, zlib.decompressobj(wbits)
        yield inflater.flush()
    except zlib.error as exc:
        raise PayloadError(f"bad compressed body ({exc})") from None


def _inflate(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """`deflate` as servers send it: zlib-wrapped as the RFC says, or raw deflate as some servers do (browsers and
    httpx accept both)."""
    chunks, first = iter(chunks), b""
    for chunk in chunks:  # the header is two bytes, which may come in two chunks
        first += chunk
        if len(first) >= 2:
            break
    wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0  # RFC 1950 header
    return _gunzip(itertools.chain([first], chunks), zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)


def _unbrotli(chunks: Iterable[bytes]) -> Iterator[bytes]:
    import brotli

    decoder = brotli.Decompressor()
    try:
        for chunk in chunks:
            piece = decoder.process(chunk, output_buffer_limit=PIECE)
            while piece:  # output held back by the limit comes out on calls with no input
                yield piece
                piece = decoder.process(b"", output_buffer_limit=PIECE)
    except brotli.error as exc:
        raise PayloadError(f"bad compressed body ({exc})") from None


class _ChunkReader:
    """A file-like `read` over an iterator of chunks: what zstandard's streaming decoder pulls from."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)

    def read(self, size: int = -1) -> bytes:
        return next(self.chunks, b"")


def _unzstd(chunks: Iterable[bytes]) -> Iterator[bytes]:
    import zstandard

    # it takes input only as its output is taken (a few bytes of zstd may stand for gigabytes), frame after frame
    reader = zstandard.ZstdDecompressor().stream_reader(_ChunkReader(chunks), read_size=PIECE, read_across_frames=True)
    try:
        while piece := reader.read(PIECE):
            yield piece
    except zstandard.ZstdError as exc:
        raise PayloadError(f"bad compressed body ({exc})") from None


# Content-Encoding -> decoder: what Chrome advertises (gzip, deflate, br, zstd), and so what the curl transport asks
DECODERS: dict[str, Callable[[Iterable[bytes]], Iterator[bytes]]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _inflate,
    "br": _unbrotli,
    "zstd": _unzstd,
}


def decoded(chunks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """Decode a body sent with this Content-Encoding, in pieces of about PIECE bytes at most.

    >>> b"".join(decoded([zlib.compress(b"[1]")], "deflate"))
    b'[1]'
    """
    encoding = encoding.strip().lower()
    if encoding in {"", "identity"}:
        return iter(chunks)
    if encoding not in DECODERS:
        raise PayloadError(f"Content-Encoding {encoding!r} was not asked for")
    return DECODERS[encoding](chunks)


def _read_capped(response: httpx.Response, *, cap: int, ends: float) -> bytes:
    """Read a streamed body, decoding its Content-Encoding once; raise past `cap` bytes decoded or the clock `ends`.

    Every transport hands the body over as it was sent (httpx's raw stream; curl with its own decoding off), so
    this is the one place a body is decoded, and the cap holds on the decoded size whichever transport read it.
    """
    import httpx

    pieces: list[bytes] = []
    size = 0
    if response.is_stream_consumed:  # built whole in memory (httpx.MockTransport): httpx has decoded it already
        chunks, encoding = iter([response.content]), ""
    else:
        chunks, encoding = response.iter_raw(), response.headers.get("content-encoding", "")
    for piece in decoded(chunks, encoding):
        size += len(piece)
        if size > cap:
            if cap < MAX_BODY_BYTES:  # an error body: the start is enough to quote
                break
            raise PayloadError(f"response body over {cap / 2**20:g} MB (decompressed): not read further")
        pieces.append(piece)
        if time.monotonic() > ends:  # the exchange was given up already: stop reading
            raise httpx.ReadTimeout("request deadline", request=response.request)
    return b"".join(pieces)


def _where(url: str) -> str:

    parts = urlsplit(str(url))
    host = parts.netloc.rpartition("@")[2]  # never the user:password before `@`
    return f"{host}{parts.path}"  # never the query: it may hold the FRED key


def describe_error(exc: BaseException | None, secret: str | None) -> str:
    """One redacted line for an HTTP or parsing failure."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        body = exc.response.text.strip().replace("\n", " ")
        with contextlib.suppress(ValueError, RecursionError):
            parsed = json.loads(body)
            chart = parsed.get("chart") if isinstance(parsed, Mapping) else None
            inner = (parsed.get("error_message") if isinstance(parsed, Mapping) else None) or (
                chart.get("error") if isinstance(chart, Mapping) else None
            )
            body = json.dumps(inner) if isinstance(inner, Mapping) else str(inner or body)
        text = f"HTTP {status} {exc.response.reason_phrase}: {body[:200]}"
    elif isinstance(exc, httpx.TimeoutException):
        ours = str(exc).startswith(("network time budget", "no complete answer"))  # the deadlines of _get_json
        text = f"timeout ({exc if ours else type(exc).__name__})"
    elif isinstance(exc, httpx.TransportError):
        text = f"connection error ({one_line(exc)})"
    elif isinstance(exc, json.JSONDecodeError):
        text = f"malformed JSON ({exc.msg} at char {exc.pos})"
    else:
        text = one_line(exc)
    return redact(text, secret)


def _get_json(
    client: httpx.Client, url: str, params: Mapping[str, str], *, timeout: float, ends: float, said: str
) -> Any:
    """GET once and parse the JSON body; a non-2xx answer raises HTTPStatusError with its body (cut) kept to quote.

    The whole exchange, headers included, ends by `ends` (a `time.monotonic()` value) on every transport: it runs
    in a daemon thread that is given up at `ends` with a ReadTimeout that says `said`. `timeout` bounds each read.
    """
    import httpx

    def exchange() -> tuple[httpx.Response, bytes]:
        with client.stream("GET", url, params=params, timeout=timeout, extensions={"fxcu.ends": ends}) as response:
            cap = MAX_BODY_BYTES if response.is_success else MAX_ERROR_BODY_BYTES
            return response, _read_capped(response, cap=cap, ends=ends)

    try:
        response, body = _bounded(ends - time.monotonic(), "request", exchange)
    except TimeoutError:
        raise httpx.ReadTimeout(said) from None
    if not response.is_success:
        framing = {"content-encoding", "content-length", "transfer-encoding"}  # the body is already decoded
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in framing]
        reason = {"reason_phrase": response.extensions.get("reason_phrase", b"")}
        kept = httpx.Response(
            response.status_code, headers=headers, content=body, request=response.request, extensions=reason
        )
        kept.raise_for_status()
    try:
        return json.loads(body)
    except RecursionError:  # 100k nested brackets overflow json's C parser: outside input, not a crash
        raise PayloadError("malformed JSON (nested too deeply)") from None


def make_fetch_json(config: Config, *, deadline: float | None = None) -> Any:
    """Build the one retried call: GET a URL, raise for non-2xx, return the parsed JSON body.

    Retries transport errors, 429 and 5xx with jittered exponential backoff (honouring a
    Retry-After capped at `config.max_retry_after`), at most `config.attempts` tries and
    `config.retry_budget` seconds, and never past `deadline` (a `time.monotonic()` value: the
    run's network budget), which also shortens the last request's timeout. Tests keep the waits
    and replace only tenacity's sleep: `fetch_json.retry.sleep = slept.append`.
    """
    import httpx
    import tenacity

    backoff = tenacity.wait_exponential_jitter(initial=1, max=20, jitter=2)

    def left() -> float:
        return math.inf if deadline is None else deadline - time.monotonic()

    def wait_for(state: tenacity.RetryCallState) -> float:
        outcome = state.outcome.exception() if state.outcome else None
        hinted = _retry_after(outcome, config.max_retry_after)
        seconds = backoff(state) if hinted is None else hinted
        return max(0.0, min(seconds, left(), config.retry_budget - state.seconds_since_start))

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(config.attempts)
        | tenacity.stop_after_delay(config.retry_budget)
        | (lambda state: left() <= 1.0),  # a retry with under a second left would only time out
        wait=wait_for,
        retry=tenacity.retry_if_exception(_is_transient),
        reraise=True,
        before_sleep=lambda s: log.warning(
            "Retrying %s (try %d of %d failed: %s)",
            _where(s.args[1] if len(s.args) > 1 else "?"),
            s.attempt_number,
            config.attempts,
            describe_error(s.outcome.exception(), config.fred_api_key),
        ),
    )
    def fetch_json(client: httpx.Client, url: str, params: Mapping[str, str]) -> Any:
        if left() <= 0:
            raise httpx.TimeoutException("network time budget spent")
        # httpx's timeout is per read: a server that trickles its headers or body is cut by this wall-clock end
        said = (
            "network time budget spent" if left() <= config.timeout else f"no complete answer in {config.timeout:g} s"
        )
        ends = time.monotonic() + min(left(), config.timeout)
        return _get_json(client, url, params, timeout=min(config.timeout, left()), ends=ends, said=said)

    return fetch_json


def _origin(url: str) -> str | None:

    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed base URL fails its source on request (InvalidURL), never the client
        return None
    return f"{parts.scheme}://{parts.netloc}"


# curl error codes -> the httpx error httpx's own transport raises for the same failure (the rest: NetworkError)
CURL_ERRORS: dict[int, str] = {
    1: "UnsupportedProtocol",  # unsupported protocol
    3: "InvalidURL",  # malformed URL
    5: "ProxyError",  # could not resolve the proxy
    6: "ConnectError",  # could not resolve the host
    7: "ConnectError",  # could not connect
    35: "ConnectError",  # TLS handshake failed
    52: "RemoteProtocolError",  # empty reply
    56: "ReadError",  # failure receiving data
    60: "ConnectError",  # certificate not trusted
    97: "ProxyError",  # proxy handshake
}


def curl_error_name(code: int, connected: bool) -> str:
    """The httpx error class name for a libcurl error code; a timeout (28) before connecting is a ConnectTimeout."""
    if code == 28:
        return "ReadTimeout" if connected else "ConnectTimeout"
    return CURL_ERRORS.get(code, "NetworkError")


def curl_message(text: str) -> str:
    """curl_cffi's error text as one line, without its "Failed to perform, ... See https://curl.se/..." boilerplate."""
    return re.sub(r"^Failed to perform, |\s*See https://curl\.se/\S+ first for more details\.$", "", text)


class BrowserTransport:
    """An httpx transport that presents Chrome's TLS and HTTP/2 fingerprint, on libcurl through curl_cffi.

    curl sends Chrome's own headers (Accept-Encoding: gzip, deflate, br, zstd among them) but leaves the body as
    sent: `_read_capped` decodes it once, under the size cap, as for every transport. The raw body is capped at
    MAX_BODY_BYTES too, each request ends by the deadline its `fxcu.ends` extension gives (headers included), and a
    stall longer than the read timeout ends it sooner. curl_cffi is loaded on the first request; where it cannot
    load, one warning is logged and the requests go through plain httpx.
    """

    def __init__(self, proxy: str | None, verify: str | bool) -> None:
        self.proxy, self.verify = proxy, verify
        self.plain: Any = None  # httpx.HTTPTransport, where curl_cffi cannot load
        self.impersonating: bool | None = None  # None until the first request
        self.detail = "not used yet"

    def _load(self) -> None:
        import httpx

        try:
            import curl_cffi
            from curl_cffi.requests.impersonate import DEFAULT_CHROME

            curl_cffi.Curl().close()  # a wheel whose libcurl-impersonate cannot load fails here (OSError)
            self.target = DEFAULT_CHROME
            self.impersonating = True
            self.detail = f"{DEFAULT_CHROME} TLS fingerprint (curl_cffi {curl_cffi.__version__})"
        except (ImportError, OSError) as exc:
            self.impersonating, self.detail = False, f"curl_cffi could not load ({one_line(exc)})"
            log.warning(
                "Browser TLS fingerprint unavailable, Yahoo requests use plain httpx and may draw 429s: %s", self.detail
            )
            self.plain = httpx.HTTPTransport(proxy=self.proxy, verify=True, trust_env=True)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.impersonating is None:
            self._load()
        if not self.impersonating:
            return self.plain.handle_request(request)
        return self._perform(request)

    def _perform(self, request: httpx.Request) -> httpx.Response:
        import certifi
        import httpx
        from curl_cffi import Curl, CurlError, CurlInfo, CurlOpt

        limits = request.extensions.get("timeout") or {}
        ends = request.extensions.get("fxcu.ends") or time.monotonic() + (limits.get("read") or 60.0)
        head: list[bytes] = []
        body = bytearray()

        def on_header(line: bytes) -> int:
            if line.startswith(b"HTTP/"):  # a new response (after a 100 Continue): keep the last one's headers
                head.clear()
            head.append(line)
            return len(line)

        def on_body(chunk: bytes) -> int:
            body.extend(chunk)
            if len(body) > MAX_BODY_BYTES:  # raising here makes curl stop the transfer; perform raises it again
                raise PayloadError(f"response body over {MAX_BODY_BYTES / 2**20:g} MB (as sent): not read further")
            return len(chunk)

        # as httpx does: SSL_CERT_FILE, else certifi's bundle (curl_cffi's own default is fixed when it is imported)
        curl = Curl(cacert=self.verify if isinstance(self.verify, str) else certifi.where())
        try:
            if curl.impersonate(self.target, default_headers=True):
                raise httpx.UnsupportedProtocol(f"curl_cffi cannot impersonate {self.target}", request=request)
            curl.setopt(CurlOpt.URL, str(request.url).encode())
            # curl-impersonate sends Chrome's User-Agent, Accept and Accept-Encoding: the client's would contradict it
            skip = {"host", "user-agent", "accept", "accept-encoding", "connection", "content-length"}
            headers = [f"{k}: {v}".encode() for k, v in request.headers.items() if k.lower() not in skip]
            curl.setopt(CurlOpt.HTTPHEADER, headers)
            curl.setopt(CurlOpt.HTTP_CONTENT_DECODING, 0)  # the body as sent: `_read_capped` decodes it, capped
            curl.setopt(CurlOpt.PROXY, (self.proxy or "").encode())  # "": no proxy, whatever the environment says
            curl.setopt(CurlOpt.CONNECTTIMEOUT_MS, max(1, int(1000 * (limits.get("connect") or 10.0))))
            # _get_json gives the exchange up at `ends`; curl stops its own transfer a second later
            curl.setopt(CurlOpt.TIMEOUT_MS, max(1, int(1000 * (ends + 1.0 - time.monotonic()))))
            curl.setopt(CurlOpt.LOW_SPEED_LIMIT, 1)  # a stall (under a byte a second) longer than the read timeout
            curl.setopt(CurlOpt.LOW_SPEED_TIME, max(1, math.ceil(limits.get("read") or 10.0)))
            curl.setopt(CurlOpt.HEADERFUNCTION, on_header)
            curl.setopt(CurlOpt.WRITEFUNCTION, on_body)
            try:
                curl.perform()
            except CurlError as exc:
                connected = bool(curl.getinfo(CurlInfo.CONNECT_TIME))
                kind = getattr(httpx, curl_error_name(int(exc.code), connected))
                # 6 and 7 (host not resolved, connection refused): what httpx's transport reports as the OS's errors
                causes = {6: socket.gaierror, 7: ConnectionRefusedError}
                cause = causes[int(exc.code)](curl_message(str(exc))) if int(exc.code) in causes else None
                raise kind(curl_message(str(exc)), request=request) from cause
            status = int(curl.getinfo(CurlInfo.RESPONSE_CODE))
        finally:
            curl.close()
        reason = head[0].split(b" ", 2)[2].strip() if head and head[0].count(b" ") >= 2 else b""
        fields = [tuple(part.strip() for part in line.split(b":", 1)) for line in head[1:] if b":" in line]
        return httpx.Response(
            status,
            headers=fields,
            stream=httpx.ByteStream(bytes(body)),
            request=request,
            extensions={"reason_phrase": reason},
        )

    def close(self) -> None:
        if self.plain is not None:
            self.plain.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def yahoo_transport(config: Config) -> BrowserTransport | None:
    """The transport for Yahoo's hosts: a browser fingerprint unless FXCU_HTTP_IMPERSONATE=off (then plain httpx)."""

    if config.impersonate == "off":
        return None
    # httpx reads proxies and SSL_CERT_FILE from the environment only for its own transports: do the same here
    try:
        host = urllib.parse.urlsplit(config.yahoo_url).hostname or ""
    except ValueError:  # a malformed URL: its requests fail as InvalidURL
        host = ""
    proxies = urllib.request.getproxies()
    proxy = None if urllib.request.proxy_bypass(host) else proxies.get("https") or proxies.get("all")
    return BrowserTransport(proxy, os.environ.get("SSL_CERT_FILE") or True)


CrumbState = Literal["not asked", "fetched", "refused"]


class YahooSession:
    """A run's Yahoo side: its transport, and the cookie and crumb Yahoo asked for (in memory only, never logged).

    `auth_flow` is httpx's auth hook: a Yahoo answer of 401, 403 or 429 that asks for a crumb makes it fetch a
    cookie (fc.yahoo.com) and a crumb (getcrumb) as a browser does, then retry the request once. Later requests
    carry the crumb. If Yahoo refuses a crumb, no further crumb is asked this run.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.transport = yahoo_transport(config)
        self.origins = {o for o in (_origin(config.yahoo_url), _origin(config.yahoo_cookie_url)) if o}
        self.crumb: str | None = None
        self.crumb_state: CrumbState = "not asked"
        self.refusal: str | None = None
        self._cookies: Any = None  # httpx.Cookies, made on first use

    def __repr__(self) -> str:  # never the crumb
        return f"YahooSession(transport={self.transport_text()!r}, crumb_state={self.crumb_state!r})"

    def transport_text(self) -> str:
        """Which transport Yahoo requests used, in words."""
        if self.transport is None:
            return "plain httpx (FXCU_HTTP_IMPERSONATE=off)"
        detail = self.transport.detail
        return detail if self.transport.impersonating is not False else f"plain httpx: {detail}"

    def level(self) -> Level:
        """WARNING when Yahoo went without the browser fingerprint it was meant to have, or refused a crumb."""
        fell_back = self.transport is not None and self.transport.impersonating is False
        return "WARNING" if fell_back or self.crumb_state == "refused" else "OK"

    def crumb_text(self) -> str:
        """The cookie and crumb state, in words (never the values)."""
        return {"not asked": "no cookie or crumb asked for", "fetched": "cookie and crumb fetched on demand"}.get(
            self.crumb_state, f"crumb refused ({self.refusal})"
        )

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        """Send a request; for Yahoo, carry the crumb once there is one, and fetch one when Yahoo asks (one retry)."""
        if f"{request.url.scheme}://{request.url.netloc.decode()}" != _origin(self.config.yahoo_url):
            yield request
            return
        if self.crumb:
            request.url = request.url.copy_merge_params({"crumb": self.crumb})
        response = yield request
        if self._asks(response):
            log.info("Yahoo asked for a cookie and crumb (HTTP %d): fetching them, retrying once", response.status_code)
            yield from self._crumb_then_retry(request)

    def _asks(self, response: httpx.Response) -> bool:
        """True when a Yahoo answer asks for a crumb and this run has not been refused one."""
        if self.crumb_state == "refused" or response.status_code not in CRUMB_STATUSES:
            return False
        if int(response.headers.get("Content-Length") or 0) > 65536:  # Yahoo's asks are under 200 bytes
            return False
        return asks_for_crumb(response.status_code, response.read().decode(errors="replace"))

    def _crumb_then_retry(self, request: httpx.Request) -> Iterator[httpx.Request]:
        """Fetch a cookie and a crumb as a browser does, then send the request again once, with the crumb if given."""
        import httpx

        self._cookies = httpx.Cookies()
        # requests made here skip the client's header and cookie merging: carry the request's own headers
        skip = {"host", "cookie", "content-length"}
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in skip]
        same = {"headers": headers, "extensions": request.extensions}  # extensions: the (budget-trimmed) timeout
        done = False
        try:
            cookie_answer = yield httpx.Request("GET", self.config.yahoo_cookie_url, **same)
            for answer in (*cookie_answer.history, cookie_answer):  # fc.yahoo.com sets the cookie on a 404
                self._cookies.extract_cookies(answer)
            ask = httpx.Request("GET", f"{self.config.yahoo_url}{YAHOO_CRUMB_PATH}", **same)
            self._cookies.set_cookie_header(ask)
            crumb_answer = yield ask
            done = True
        finally:
            if not done:  # the cookie or crumb request failed in transport; httpx raises that error to the caller
                self.crumb_state, self.refusal = "refused", "cookie or crumb request failed"
        self._cookies.extract_cookies(crumb_answer)
        self.crumb = crumb_from(crumb_answer.status_code, crumb_answer.read().decode(errors="replace"))
        if self.crumb is None:
            self.crumb_state, self.refusal = "refused", f"getcrumb answered HTTP {crumb_answer.status_code}"
            log.warning("Yahoo refused a crumb (%s): retrying once without, and asking no more this run", self.refusal)
        else:
            self.crumb_state, self.refusal = "fetched", None
        url = request.url.copy_remove_param("crumb")
        url = url.copy_merge_params({"crumb": self.crumb}) if self.crumb else url
        retry = httpx.Request(request.method, url, **same)
        self._cookies.set_cookie_header(retry)
        yield retry


def make_client(config: Config, yahoo: YahooSession | None = None) -> httpx.Client:
    """The one HTTP client of a run: timeouts, a browser User-Agent, redirects followed.

    Yahoo's hosts go through `yahoo_transport` (a browser TLS fingerprint unless FXCU_HTTP_IMPERSONATE=off) and get
    their cookie and crumb on demand (`YahooSession`); the other sources use plain httpx.
    """
    import httpx

    yahoo = yahoo or YahooSession(config)
    auth = httpx.Auth()
    # httpx.Auth's hook set on an instance, so that `import fxcu` needs no httpx for a subclass
    auth.auth_flow = yahoo.auth_flow  # type: ignore[method-assign]
    return httpx.Client(
        timeout=httpx.Timeout(config.timeout),
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        follow_redirects=True,
        auth=auth,
        mounts={origin: yahoo.transport for origin in yahoo.origins} if yahoo.transport else None,
    )


def _fetch(
    source: str,
    fetch_json: Any,
    client: httpx.Client,
    secret: str | None,
    calls: Sequence[tuple[str, Mapping[str, str]]],
    parse: Any,
) -> Result:
    import httpx

    frames = []
    for url, params in calls:
        try:
            payload = fetch_json(client, url, params)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:  # ValueError: a body that is not JSON
            return Result(source, error=describe_error(exc, secret), unreachable=_unreachable(exc))
        try:
            frames.append(parse(payload))
        except Implausible as exc:  # a well-formed wrong answer: its findings are values `degraded` reports
            return Result(source, error=redact(str(exc)[:300], secret), findings=exc.findings)
        except Exception as exc:  # noqa: BLE001 -- a body of any shape is outside input: a failed source, never a crash
            detail = (
                describe_error(exc, secret) if isinstance(exc, PayloadError) else f"malformed payload ({one_line(exc)})"
            )
            return Result(source, error=redact(detail, secret)[:300])
    frame = pl.concat(frames) if frames else None
    return Result(source, frame=frame)


NO_KEY = "FRED_API_KEY is not set"  # a source not asked: it neither answered nor showed the network down


def fetch_source(
    source: Source, config: Config, client: httpx.Client, fetch_json: Any, *, since: date | None, now: datetime
) -> Result:
    """Ask one source (its description in SOURCES) for what the cache lacks; a raw (uncleaned) frame or the failure."""
    secret = config.fred_api_key if source.key else None
    if source.key and not secret:
        return Result(source.name, error=NO_KEY, frequency=source.frequency)
    base = getattr(config, source.base)
    calls = [
        (f"{base}{source.path}{suffix}", with_key(params, secret)) for suffix, params in source.requests(since, now)
    ]
    return dataclasses.replace(
        _fetch(source.name, fetch_json, client, secret, calls, source.parse), frequency=source.frequency
    )


def probe_sources(config: Config, timeout: float = 5.0) -> list[tuple[str, Level, str]]:
    """Ask each source for a few days with a short timeout, no retries; then say how Yahoo was reached."""
    config = dataclasses.replace(config, timeout=timeout)
    probes = [
        (
            source,
            f"{getattr(config, source.base)}{source.path}{source.probe[0]}",
            with_key(source.probe[1], config.fred_api_key),
        )
        for series in SOURCES.values()
        for source in series
        if config.fred_api_key or not source.key
    ]
    found: list[tuple[str, Level, str]] = []
    # the run's own bounded reader (size cap, wall-clock end), one try: a hostile body costs a probe no more than a run
    fetch_json = make_fetch_json(dataclasses.replace(config, attempts=1, network_budget=2 * timeout))
    yahoo = YahooSession(config)
    with make_client(config, yahoo) as client:
        for source, url, params in probes:
            try:
                rows = source.parse(fetch_json(client, url, params)).height
                found.append((f"source {source.label}", "OK", f"{rows} rows"))
            except Exception as exc:  # noqa: BLE001 -- every failure is a finding
                found.append((f"source {source.label}", "WARNING", describe_error(exc, config.fred_api_key)))
    found.append(("yahoo session", yahoo.level(), f"{yahoo.transport_text()}; {yahoo.crumb_text()}"))
    return found


# -- Shell: the parquet warehouse ------------------------------------------------------


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write a parquet file atomically (`atomic_path`); a full disk or a denied write is an OSError."""

    buffer = io.BytesIO()
    frame.write_parquet(buffer)  # in memory first: polars reports ENOSPC as a ComputeError, Python as OSError
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def cache_schema() -> dict[str, pl.DataType]:
    """The column types of a warehouse file."""

    return {DATE: pl.Date(), CLOSE: pl.Float64(), SOURCE: pl.String(), FETCHED_AT: pl.Datetime("us", "UTC")}


def _convert(name: str, have: pl.DataType, want: pl.DataType) -> pl.Expr:

    if have == pl.String and want == pl.Date:  # polars 2 removed the string-to-date cast
        return pl.col(name).str.to_date("%Y-%m-%d", strict=True)
    if have == pl.String and isinstance(want, pl.Datetime):
        return pl.col(name).str.to_datetime(time_unit="us", time_zone="UTC", strict=True)
    return pl.col(name).cast(want, strict=True)


def _parse_cache(data: bytes, name: str) -> pl.DataFrame:
    """A warehouse file's frame, columns of the wrong type converted; raises when it is not one."""

    frame = pl.read_parquet(io.BytesIO(data))
    missing = {DATE, CLOSE, SOURCE} - set(frame.columns)
    if missing:
        raise ValueError(f"missing columns {sorted(missing)}")
    schema = {k: v for k, v in cache_schema().items() if k in frame.columns}
    wrong = {k: frame.schema[k] for k, v in schema.items() if frame.schema[k] != v}
    if wrong:  # each conversion is strict: a value that does not convert makes the file corrupt
        frame = frame.with_columns(_convert(col, frame.schema[col], schema[col]) for col in wrong)
        found = ", ".join(f"{k} {v}" for k, v in wrong.items())
        log.warning("Cache %s had columns of the wrong type (%s): converted", name, found)
    return frame


def write_repaired(path: Path, frame: pl.DataFrame, kept: pl.DataFrame, *, now: datetime) -> str:
    """Save the rows `repair` dropped beside the file (`.rejected-*`), rewrite it with the rest; say what happened."""
    aside = path.with_name(f"{path.name}.rejected-{now:%Y%m%dT%H%M%S}")
    try:
        write_parquet_atomic(
            frame.join(kept.select(DATE, CLOSE), on=[DATE, CLOSE], how="anti", nulls_equal=True), aside
        )
        write_parquet_atomic(kept, path)
    except OSError as exc:
        return f"served without them, not rewritten ({exc.strerror or exc})"
    return f"rewritten, the rows kept in {aside.name}"


def read_cache(path: Path, *, now: datetime, rules: Plausible | None = None) -> Result:
    """Read a warehouse file; a corrupt one is renamed aside (never overwritten) and reported.

    A file that cannot be read (permissions, I/O) is not corrupt: it stays where it is. Columns of
    the wrong type are converted when every value converts, else the file is corrupt. With `rules`,
    rows `repair` refuses (null or implausible closes, impossible dates, a bad tail) are not served:
    they are saved beside the file as `.rejected-*` and the file is rewritten.
    """
    if not path.exists():
        return Result("cache", error=f"no cache at {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        log.error("Cache %s unreadable (%s): left in place, not replaced", path.name, why)
        return Result("cache", error=f"cache {path.name} unreadable ({why})")
    try:
        frame = _parse_cache(data, path.name)
        kept, found = repair(frame, rules=rules, now=now) if rules is not None else (frame, [])
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is set aside, not fatal
        aside = path.with_name(f"{path.name}.corrupt-{now:%Y%m%dT%H%M%S}")
        try:
            os.replace(path, aside)
            where = f"moved to {aside.name}"
        except OSError as move_error:
            where = f"could not be moved aside ({move_error.strerror})"
        log.error("Corrupt cache %s (%s): %s", path.name, type(exc).__name__, where)
        return Result("cache", error=f"corrupt cache {path.name} ({type(exc).__name__}), {where}")
    if not found:
        return Result("cache", frame=frame)
    what = "; ".join(map(str, found))
    where = write_repaired(path, frame, kept, now=now)
    log.warning("Cache %s held rows that cannot be right (%s): %s", path.name, what, where)
    reason = Reason(Degraded.REPAIRED, f"repaired cache: {path.name} dropped {what}")
    return Result("cache", frame=kept, notes=(f"cache: dropped {what}",), degraded=(reason,))


SEED_BUILT = datetime(2026, 11, 26, tzinfo=UTC)  # when data/seed was cut from data/real (its README says how)


def read_seed(folder: Path, name: Literal["usdclp", "copper"]) -> Result:
    """The shipped seed history of a series (data/seed), as a stored history with source `seed`."""

    path = folder / SEED_FILES[name]
    try:
        frame = pl.read_csv(path, schema={DATE: pl.Date, CLOSE: pl.Float64})
    except (OSError, pl.exceptions.PolarsError) as exc:
        return Result("seed", error=f"seed {path.name} unreadable ({type(exc).__name__})")
    return Result("seed", frame=with_provenance(frame, "seed", SEED_BUILT))


def _clean_result(result: Result, fetched_at: datetime) -> Result:
    if not result.ok:
        return result
    cleaned = clean_prices(result.frame, frequency=result.frequency)
    frame = with_provenance(cleaned.frame, result.source, fetched_at)
    reasons = (Reason(Degraded.BAD_PRINTS),) if cleaned.removed.get(BAD_PRINTS) else ()
    notes = result.notes + tuple(f"{result.source}: {n}" for n in cleaned.notes)
    return dataclasses.replace(result, frame=frame, notes=notes, degraded=result.degraded + reasons)


def _vet(raw: Result, cleaned: Result, *, rules: Plausible, now: datetime, history: pl.DataFrame | None) -> Result:
    """The cleaned result, or a failed one when `implausible` finds anything (the frame is kept for `confirms`)."""
    if not cleaned.ok:
        return cleaned
    found = implausible(raw.frame, cleaned.frame, rules=rules, now=now, history=history)
    if not found:
        return cleaned
    return dataclasses.replace(cleaned, error="; ".join(map(str, found)), findings=tuple(found))


def _jump_only(result: Result) -> bool:
    return (
        bool(result.findings)
        and result.frame is not None
        and all(f.kind is Problem.JUMP and f.since for f in result.findings)
    )


def _source_title(source: str) -> str:
    return {
        "yahoo": "Yahoo Finance",
        "mindicador": "mindicador.cl",
        "fred": "FRED",
        "cache": "Cache",
        "seed": "Seed",
    }.get(source, source)


def _staleness(chosen: Result, *, now: datetime, max_age_days: int) -> tuple[date, int, bool]:
    """The chosen frame's last date, its age in days, and whether that age is stale."""
    last = chosen.frame[DATE].max()
    age = (now.date() - last).days
    leeway = 75 if chosen.frequency == "monthly" else 0  # as in refusal: a monthly series lags up to two months
    return last, age, age > max(max_age_days, leeway)


def stored(chosen: Result) -> bool:
    """True when the chosen answer is a live daily one, which the warehouse keeps (not the cache, seed or FRED)."""
    return chosen.ok and chosen.source not in {"cache", "seed"} and chosen.frequency == "daily"


def settle(
    name: Literal["usdclp", "copper"],
    chosen: Result,
    cache: Result,
    results: Sequence[Result],
    *,
    now: datetime,
    max_age_days: int,
) -> ChosenSeries:
    """The series served from the chosen answer: its history (a live daily one merged), notes and degraded reasons."""
    label = PLAUSIBLE[name].label
    notes = tuple(n for r in results for n in r.notes)
    failures = tuple(f"{r.source} failed: {r.error}" for r in results if r.error and r.source not in {"cache", "seed"})
    rejected = tuple(
        Reason(Degraded.REJECTED, f"rejected {r.source} {label}: {r.error}") for r in results if r.findings
    )
    if not chosen.ok:
        return ChosenSeries(
            name, None, "none", notes=failures + notes, error=chosen.error, degraded=rejected, failures=failures
        )
    last, age, is_stale = _staleness(chosen, now=now, max_age_days=max_age_days)
    stale = (Reason(Degraded.STALE, f"stale: {label} last date {last}, {age} days old"),) if is_stale else ()
    reasons = rejected + cache.degraded
    if chosen.source in {"cache", "seed"}:
        if chosen.source == "seed":
            reasons += (
                Reason(Degraded.SEED, f"seed history: {label} from the shipped seed, last date {last}, {age} days old"),
            )
        else:
            reasons += (Reason(Degraded.CACHED), *stale)
        cached_note = (f"{'seed' if chosen.source == 'seed' else 'cached'} data ({age} days old)",)
        frame = chosen.frame.select(DATE, CLOSE, SOURCE, FETCHED_AT)
        return ChosenSeries(
            name, frame, chosen.source, notes=failures + notes + cached_note, degraded=reasons, failures=failures
        )
    reasons += chosen.degraded + stale
    if chosen.frequency == "monthly":
        notes = failures + notes + ("monthly copper (FRED PCOPPUSDM)",)
        return ChosenSeries(name, chosen.frame, chosen.source, "monthly", notes, degraded=reasons, failures=failures)
    merged = merge_prices(cache.frame if cache.ok else None, chosen.frame)
    return ChosenSeries(name, merged, chosen.source, notes=failures + notes, degraded=reasons, failures=failures)


def log_choice(
    name: Literal["usdclp", "copper"], chosen: Result, results: Sequence[Result], *, now: datetime, config: Config
) -> None:
    """Log where a series comes from unless all is well: nowhere, stale data, the seed, the cache or a backup."""
    label = PLAUSIBLE[name].label
    if not chosen.ok:
        if name == "copper":
            log.error("All copper sources failed: continuing without copper (forecasts degraded)")
        else:
            log.error("All USD/CLP sources failed: %s", chosen.error)
        return
    last, age, is_stale = _staleness(chosen, now=now, max_age_days=config.max_age_days)
    if is_stale and chosen.source != "seed":  # the seed's own line gives its age
        log.warning("Serving stale %s data: last date %s, %d days old", label, last, age)
    if chosen.source == "seed":
        log.warning("No %s history yet: starting from the shipped seed (last date %s, %d days old)", label, last, age)
    elif chosen.source == "cache" and config.offline:
        log.info("Offline: using %d cached %s data points (last %s)", chosen.frame.height, label, last)
    elif chosen.source == "cache":
        tried = sum(r.source not in {"cache", "seed", "network"} for r in results)
        log.warning(
            "%s failed, using %d cached %s data points",
            {1: "The source", 2: "Both sources"}.get(tried, f"All {tried} sources"),
            chosen.frame.height,
            label,
        )
    elif chosen.frequency == "monthly":
        log.warning("Using FRED backup for %s prices (monthly, degraded)", label)
    elif chosen.source != "yahoo":
        log.warning("Using %s backup for %s prices", _source_title(chosen.source), label)


def write_series(series: ChosenSeries, path: Path, cache: Result) -> ChosenSeries:
    """Store a merged history in the warehouse; on a full disk or a read-only one, the series noting it was not."""
    try:
        if not cache.ok and path.exists():
            path.open("rb").close()  # an unreadable (not corrupt) cache raises here: never replaced by less
        write_parquet_atomic(series.frame, path)
    except OSError as exc:  # a full disk or a read-only warehouse: serve the fetched data, keep the old file
        log.error(
            "Warehouse %s not updated (%s): using the fetched data for this run only", path.name, exc.strerror or exc
        )
        return dataclasses.replace(series, notes=series.notes + (f"warehouse not updated ({exc.strerror or exc})",))
    return series


def _confirm(results: list[Result], rules: Plausible) -> bool:
    """Accept an earlier answer refused only for a jump when the newest shows the same closes; True if one was."""
    newest = results[-1]
    if newest.frame is None or newest.frame.is_empty() or not (newest.ok or _jump_only(newest)):
        return False
    for i, suspect in enumerate(results[:-1]):
        if _jump_only(suspect):
            since = min(f.since for f in suspect.findings if f.since is not None)
            if confirms(suspect.frame, newest.frame, since=since, rules=rules):
                log.warning(
                    "%s %s: the jump from %s is confirmed by %s",
                    _source_title(suspect.source),
                    rules.label,
                    since,
                    _source_title(newest.source),
                )
                note = f"{suspect.source}: jump from {since} confirmed by {newest.source}"
                results[i] = dataclasses.replace(suspect, error=None, findings=(), notes=suspect.notes + (note,))
                if _jump_only(newest):  # two sources showing the same jump vouch for each other
                    results[-1] = dataclasses.replace(newest, error=None, findings=())
                return True
    return False


def ask_sources(
    name: Literal["usdclp", "copper"],
    config: Config,
    client: httpx.Client | None,
    fetch_json: Any,
    *,
    cache: Result,
    now: datetime,
    deadline: float | None = None,
) -> list[Result]:
    """Ask a series' live sources in priority order, each answer cleaned and vetted, until one may be served.

    Offline (or without a client) nothing is asked.
    """
    if config.offline or client is None:
        return []
    rules = PLAUSIBLE[name]
    fetch_json = fetch_json or make_fetch_json(config, deadline=deadline)
    history = cache.frame if cache.ok and not cache.frame.is_empty() else None
    since = history[DATE].max() if history is not None else None
    results: list[Result] = []
    for source in SOURCES[name]:  # lazily, so a good primary costs one request
        if deadline is not None and time.monotonic() > deadline:
            log.warning(
                "Network time budget (%.0f s) spent: no further %s sources tried", config.network_budget, rules.label
            )
            results.append(Result("network", error=f"network time budget ({config.network_budget:.0f} s) spent"))
            break
        raw = fetch_source(source, config, client, fetch_json, since=since, now=now)
        result = _vet(raw, _clean_result(raw, now), rules=rules, now=now, history=history)
        results.append(result)
        if _confirm(results, rules):
            break
        why = refusal(result, now=now, max_age=timedelta(days=config.max_age_days))
        if why is None:
            break
        # no network is said once for the run (fetch_both); a backup that answers says so itself
        level = logging.INFO if result.unreachable else logging.WARNING
        log.log(level, "%s %s fetch failed (%s)", _source_title(result.source), rules.label, why)
    return results


def fetch_series(
    name: Literal["usdclp", "copper"],
    config: Config,
    client: httpx.Client | None,
    *,
    now: datetime,
    fetch_json: Any = None,
    deadline: float | None = None,
) -> ChosenSeries:
    """Walk one series' fallback chain, merge a live answer into the warehouse, return the history.

    USD/CLP: Yahoo CLP=X, mindicador, cache. Copper: Yahoo HG=F, FRED monthly, cache. Every answer
    passes `implausible` against the cached history first. An empty warehouse starts from the
    shipped seed (`config.seed_dir`). When everything is stale, the freshest is served (degraded).
    The warehouse is locked for the whole read-merge-write, so two runs never interleave.
    """
    path = config.warehouse / (USDCLP_CACHE if name == "usdclp" else COPPER_CACHE)
    label = PLAUSIBLE[name].label
    with file_lock(config.warehouse / ".lock", timeout=config.lock_timeout, what="warehouse lock"):
        cache = read_cache(path, now=now, rules=PLAUSIBLE[name])
        if not cache.ok and not path.exists() and config.seed_dir is not None:
            cache = read_seed(config.seed_dir, name)  # an empty warehouse starts from the shipped real history
        elif cache.ok and cache.frame.height and (cache.frame[SOURCE] == "seed").all():
            cache = dataclasses.replace(cache, source="seed")  # stored, but still only the seed
        asked = ask_sources(name, config, client, fetch_json, cache=cache, now=now, deadline=deadline)
        results = [*asked, cache]
        ages = {r.source: timedelta(days=config.max_age_days) for r in results}
        chosen = first_good(results, now=now, max_age=ages, serve_stale=True)
        log_choice(name, chosen, results, now=now, config=config)
        series = settle(name, chosen, cache, results, now=now, max_age_days=config.max_age_days)
        if stored(chosen):
            series = write_series(series, path, cache)
            log.info("Successfully fetched %d %s price points from %s", chosen.frame.height, label, chosen.source)
        elif chosen.source == "seed" and not path.exists():  # stored as source `seed` until live rows replace them
            series = write_series(series, path, cache)
        live = [r for r in asked if r.source != "network" and r.error != NO_KEY]
        return dataclasses.replace(series, unreachable=bool(live) and all(r.unreachable for r in live))


def fetch_both(config: Config, client: httpx.Client | None, *, now: datetime) -> tuple[ChosenSeries, ChosenSeries]:
    """Fetch USD/CLP and (unless FXCU_COPPER=off) copper through their chains, within one network time budget.

    Past `config.network_budget` seconds no new source is asked (the cache still answers); one
    request already under way can add its own bound (`retry_budget` plus a timeout).
    """
    deadline = time.monotonic() + config.network_budget
    usdclp = fetch_series("usdclp", config, client, now=now, deadline=deadline)
    if not config.copper:
        log.warning("Copper disabled (FXCU_COPPER=off): forecasting without copper")
        copper = ChosenSeries("copper", None, "off", error="disabled by FXCU_COPPER=off", unreachable=True)
    else:
        copper = fetch_series("copper", config, client, now=now, deadline=deadline)
    if usdclp.unreachable and copper.unreachable:
        log.warning("No network (no source could be reached): serving from the warehouse")
    return usdclp, copper


@contextlib.contextmanager
def _client_scope(config: Config, client: httpx.Client | None) -> Iterator[httpx.Client | None]:
    """The caller's client, or one made (and closed) here; none offline."""
    if client is not None or config.offline:
        yield client
        return
    with make_client(config) as made:
        yield made


def _fetch_alone(
    name: Literal["usdclp", "copper"], config: Config | None, client: httpx.Client | None, now: datetime | None
) -> ChosenSeries:
    config = config or Config.from_env(os.environ)
    with _client_scope(config, client) as client:
        return fetch_series(name, config, client, now=now or datetime.now(UTC))


def fetch_usdclp(
    config: Config | None = None, client: httpx.Client | None = None, *, now: datetime | None = None
) -> ChosenSeries:
    """Fetch USD/CLP through Yahoo CLP=X, mindicador and the cache; the history, its source and notes."""
    return _fetch_alone("usdclp", config, client, now)


def fetch_copper(
    config: Config | None = None, client: httpx.Client | None = None, *, now: datetime | None = None
) -> ChosenSeries:
    """Fetch copper (USD/lb) through Yahoo HG=F, FRED monthly and the cache; `.ok` is False when all failed."""
    return _fetch_alone("copper", config, client, now)


def load(config: Config | None = None, client: httpx.Client | None = None, *, now: datetime | None = None) -> Bundle:
    """Fetch (or read offline) both series and build the bundle; raises ValueError without USD/CLP.

    With no arguments it reads the environment like the CLI does, for `import fxcu; fxcu.load()`.
    """
    config = config or Config.from_env(os.environ)
    with _client_scope(config, client) as client:
        usdclp, copper = fetch_both(config, client, now=now or datetime.now(UTC))
    return build_bundle(usdclp, copper)


# -- Shell: reports, charts, status ----------------------------------------------------


def chart_figure(fc: Forecast, bundle: Bundle, *, now: datetime | None = None) -> Figure:
    """Plot USD/CLP with the forecast's labelled 80/95% fan, and copper up to the origin in its own panel."""
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure

    # History four times the horizon (at least three months), so a 7d fan is not a sliver at the edge.
    start = fc.origin - timedelta(days=max(91, 4 * parse_horizon(fc.horizon)))
    hist = bundle.usdclp.filter(pl.col(DATE) >= start)
    ens, final = fc.ensemble, fc.final
    # Copper only up to the origin: its future is unknown, and a line through the fan reads as a forecast.
    cu = None if bundle.copper is None else bundle.copper.filter(pl.col(DATE).is_between(start, fc.origin))
    panels = 2 if cu is not None and cu.height else 1
    # matplotlib's object API, not pyplot: no figure registry, no backend choice, and pyplot's import saved
    fig = Figure(figsize=(10, 6.4 if panels == 2 else 5), dpi=110, layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False, height_ratios=[3, 1][:panels])
    ax = axes[0][0]
    ax.plot(hist[DATE].to_list(), hist[CLOSE].to_list(), color="black", lw=1.2, label="USD/CLP close")
    x = [fc.origin, *ens[DATE].to_list()]
    edge = lambda col: [fc.last_close, *ens[col].to_list()]  # noqa: E731
    ax.fill_between(x, edge("lo_95"), edge("hi_95"), color="tab:blue", alpha=0.15, lw=0, label="95% range")
    ax.fill_between(
        x, edge("lo_80"), edge("hi_80"), color="tab:blue", alpha=0.3, lw=0, label=f"80% range: {fc.interval_label}"
    )
    ax.plot(x, edge("forecast"), color="tab:blue", lw=1.6, label=f"forecast ({fc.backtest.rule} rule)")
    for axis in (a[0] for a in axes):
        axis.axvline(fc.origin, color="grey", ls=":", lw=1)
        axis.grid(alpha=0.3)
    ax.annotate(
        f"origin {fc.origin:%d %b %Y}",
        (fc.origin, 1),
        xycoords=("data", "axes fraction"),
        xytext=(-4, -4),
        textcoords="offset points",
        ha="right",
        va="top",
        fontsize=8,
        color="dimgrey",
    )
    ax.plot([fc.origin], [fc.last_close], "o", color="black", ms=4)
    # below and left of the point, with an arrow: the history runs into the point from the left at its own height
    ax.annotate(
        f"last close {fc.last_close:.2f}",
        (fc.origin, fc.last_close),
        xytext=(-30, -34),
        textcoords="offset points",
        ha="right",
        va="center",
        fontsize=9,
        arrowprops={"arrowstyle": "-", "color": "black", "lw": 0.6},
        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.9},
    )
    ax.plot([final[DATE]], [final["forecast"]], "o", color="tab:blue", ms=4)
    ax.annotate(
        f"{final[DATE]:%d %b}: {final['forecast']:.2f}\n80% {final['lo_80']:.0f}-{final['hi_80']:.0f}"
        f"\n95% {final['lo_95']:.0f}-{final['hi_95']:.0f}",
        (final[DATE], final["forecast"]),
        xytext=(8, 0),
        textcoords="offset points",
        ha="left",
        va="center",
        fontsize=9,
        color="tab:blue",
    )
    ax.set_ylabel("CLP per USD")
    # room on the right for the horizon label
    ax.set_xlim(start, final[DATE] + timedelta(days=max(12, (final[DATE] - start).days // 7)))
    ax.set_title(f"{headline_of([fc])} ({_pct(final['forecast'], fc.last_close)})", loc="left", fontsize=12)
    stamp = f"made {santiago_time(now)}" if now else ""  # the headline dates the data
    ax.set_title(stamp, loc="right", fontsize=8, color="dimgrey")
    stale = [str(r) for r in bundle._all_reasons if r.kind in {Degraded.STALE, Degraded.SEED}]
    if stale:  # old or seed-only prices: the first thing a reader sees, not small grey text
        banner = textwrap.fill("DATA NOT CURRENT - " + "; ".join(stale), 110)
        bbox = {"facecolor": "tab:red", "edgecolor": "none", "pad": 4}
        ax.text(0.5, 0.97, banner, transform=ax.transAxes, ha="center", va="top", fontsize=9, color="white", bbox=bbox)
    handles, labels = ax.get_legend_handles_labels()
    if panels == 2:
        ax2 = axes[1][0]
        ax2.plot(
            cu[DATE].to_list(),
            cu[CLOSE].to_list(),
            color="tab:orange",
            lw=1.1,
            label=f"copper, USD/lb (up to the origin; source {bundle.sources['copper']})",
        )
        ax2.set_ylabel("copper, USD/lb")
        extra, extra_labels = ax2.get_legend_handles_labels()
        handles, labels = handles + extra, labels + extra_labels
    elif bundle.copper is None:
        ax.text(
            0.01,
            0.02,
            "copper unavailable: forecast made without copper",
            transform=ax.transAxes,
            fontsize=8,
            color="tab:red",
        )
    axes[-1][0].xaxis.set_major_formatter(mdates.DateFormatter("%d %b\n%Y"))
    # the range's and copper's labels run past 100 characters; unwrapped, the legend overflows the figure
    labels = [textwrap.fill(label, 64) for label in labels]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False)
    return fig


def pit_figure(db: DensityBacktest) -> Figure:
    """Bar chart of the served range's PIT deciles over the weekly origins, against the 10% a calibrated range gives."""
    from matplotlib.figure import Figure

    served = db.served
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.bar(
        np.arange(PIT_BINS) / PIT_BINS,
        served.pit_deciles,
        width=1 / PIT_BINS,
        align="edge",
        color="tab:blue",
        alpha=0.7,
        edgecolor="white",
        label=f"served range ({db.live})",
    )
    ax.axhline(1 / PIT_BINS, color="black", ls="--", lw=1, label="calibrated (10% each)")
    ax.set_xlim(0, 1)
    ax.set_xlabel("PIT: the forecast's probability of a close below the realised one")
    ax.set_ylabel("share of origins")
    ax.set_title(
        f"{db.horizon} PIT, {served.origins} weekly origins {db.origins[0]} .. {db.origins[-1]}\n"
        f"uniform p = {served.pit_p:.3f}, {TAIL_LEVEL}% interval covered {served.coverage_98:.1%}",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper center")
    ax.grid(alpha=0.3, axis="y")
    return fig


def write_png(fig: Figure, path: Path) -> None:
    """Save a figure as a PNG at `path` (atomically): every chart fxcu draws is saved here."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_chart(fc: Forecast, bundle: Bundle, path: Path, *, now: datetime | None = None) -> None:
    """Save `chart_figure` as a PNG at `path` (atomically)."""
    write_png(chart_figure(fc, bundle, now=now), path)


@dataclass(frozen=True, slots=True)
class Report:
    """Where one run's report files went."""

    markdown: Path
    chart: Path | None
    table: Path
    pit_chart: Path | None = None  # the range backtest's PIT histogram


def report_stem(horizon: str, now: datetime, *, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A report's file name without suffix, to the minute on the Santiago clock, never one already taken (pure)."""

    stem = f"forecast_{horizon}_{now.astimezone(ZoneInfo(SANTIAGO)):%Y-%m-%d_%H%M}"
    # two runs in one minute, or the hour Santiago repeats when summer time ends
    return next(s for s in (stem, *(f"{stem}_{n}" for n in range(2, len(taken) + 3))) if s not in taken)


def write_report(
    fc: Forecast,
    bundle: Bundle,
    reports: Path,
    *,
    now: datetime,
    extra: Sequence[Section] = (),
) -> Report:
    """Write the chart (PNG), the forecast table (CSV) and the Markdown report under `reports`."""
    stem = report_stem(fc.horizon, now, taken={p.stem for p in reports.glob(f"forecast_{fc.horizon}_*.md")})
    chart = reports / f"{stem}.png"
    try:
        write_chart(fc, bundle, chart, now=now)
    except Exception as exc:  # noqa: BLE001 -- a chart is never worth a failed run
        log.error("Chart failed (%s); the report goes without it", one_line(exc))
        chart = None
    pit_chart = reports / f"{stem}_pit.png" if fc.density is not None else None
    try:
        if fc.density is not None:
            write_png(pit_figure(fc.density), pit_chart)
    except Exception as exc:  # noqa: BLE001 -- a chart is never worth a failed run
        log.error("PIT chart failed (%s); the report goes without it", one_line(exc))
        pit_chart = None
    table = reports / f"{stem}.csv"
    write_text_atomic(fc.path.write_csv(), table)
    markdown = reports / f"{stem}.md"
    names = {"chart": chart.name if chart else None, "pit_chart": pit_chart.name if pit_chart else None}
    write_text_atomic(format_report(fc, bundle, now=now, extra=extra, **names), markdown)
    return Report(markdown, chart, table, pit_chart)


def report_files(markdown: Path) -> Report:
    """The files `write_report` wrote beside a Markdown report (the chart only if it was drawn)."""
    chart, pit_chart = markdown.with_suffix(".png"), markdown.with_name(f"{markdown.stem}_pit.png")
    return Report(
        markdown,
        chart if chart.exists() else None,
        markdown.with_suffix(".csv"),
        pit_chart if pit_chart.exists() else None,
    )


def status_path(config: Config) -> Path:
    return config.data_dir / "status.json"


def read_status(config: Config) -> dict[str, Any]:
    """The last run per horizon, as `run` recorded it ({} when none or unreadable)."""
    try:
        status = json.loads(status_path(config).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return status if isinstance(status, dict) else {}  # `[]` or a bare string is no status: "never run"


def write_status(config: Config, horizon: str, entry: Mapping[str, Any]) -> None:
    """Record a horizon's last run for `check` (atomic, under the status lock)."""
    with file_lock(config.data_dir / ".status.lock", timeout=30, what="status lock"):
        status = read_status(config)
        status[horizon] = dict(entry)
        write_text_atomic(json.dumps(status, indent=2, sort_keys=True), status_path(config))


# -- Shell: MLflow tracking ------------------------------------------------------------

NOTE_TAG = "mlflow.note.content"  # MLflow's description field, for runs and experiments alike
KIND_TAG = "mlflow.experimentKind"  # MLflow 3.17's UI opens an experiment of kind custom_model_development on its runs
# The served forecast's scores under names that are the same in every experiment, so MLflow's
# compare view lines 7d up against 90d; the `{horizon}_*` names of the original guide stay too.
SERVED_PREFIX = "served_"


def experiment_description(horizon: str) -> str:
    """The Markdown description of a horizon's experiment (pure)."""
    days = parse_horizon(horizon)
    return (
        f"USD/CLP forecast {days} calendar days ({horizon_steps(days)} trading days) ahead, "
        f"made by `fxcu run {horizon}`, with copper as a signal. One run per forecast, named by horizon, "
        f"forecast, 80% range, data date and Santiago time (`{horizon} 898.95 [875.5–923.0] · data YYYY-MM-DD · "
        "MM-DD HH:MM:SS`), `[degraded]` first when its data was; its description holds the served models.\n\n"
        f"Metrics `{SERVED_PREFIX}rmse`, `{SERVED_PREFIX}ratio_to_naive`, `{SERVED_PREFIX}coverage_80` ... "
        "score the served forecast in the backtest and are named alike in every fxcu experiment; "
        f"`{horizon}_rmse` ... are the same numbers under the original guide's names. RMSE and MAE are "
        "in CLP per USD; a ratio below 1 beats the random walk (Naive)."
    )


@dataclass(frozen=True, slots=True)
class TrackingStore:
    """Where runs are tracked: the URI MLflow is given and, for a SQLite store, its file and artifact root.

    `db` is None for a server (or another database), which also picks its own artifacts (`artifacts` None).
    """

    uri: str
    db: Path | None = None
    artifacts: str | None = None

    @classmethod
    def sqlite(cls, db: Path, artifacts: Path) -> TrackingStore:
        """The store of a SQLite file, its URI with `%`, `?` and `#` escaped (else the database lands elsewhere)."""
        # SQLAlchemy percent-decodes the path and cuts it at `?`; escaping only these keeps other paths verbatim
        uri = "sqlite:///" + str(db).replace("%", "%25").replace("?", "%3F").replace("#", "%23")
        return cls(uri, db, artifacts.as_uri())

    @property
    def server(self) -> bool:
        """A tracking server (http or https): it keeps its own database and artifacts."""
        return self.uri.startswith(("http:", "https:"))


def tracking_store(config: Config, environ: Mapping[str, str]) -> TrackingStore:
    """MLFLOW_TRACKING_URI when set (a team server wins), else the SQLite file under the data dir.

    A SQLite store keeps its artifacts under the data dir, by absolute path (else MLflow writes ./mlruns of the
    working directory).
    """
    uri = environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return TrackingStore.sqlite(config.mlflow_db, config.mlruns)
    if not uri.startswith("sqlite:///"):
        return TrackingStore(uri)
    return TrackingStore(uri, Path(unquote(uri.removeprefix("sqlite:///").split("?")[0])), config.mlruns.as_uri())


def read_only(db: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection to a SQLite file, for the readers (`runs`, `compare`, `stats`, `check`, `backup`)."""
    # SQLite's URI form: `quote` escapes `#`, `?` and `%`, which would otherwise cut the path (and open another file)
    return contextlib.closing(sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=5))


class OneLineRecords(logging.Filter):
    """Cut other libraries' records to one redacted line with no traceback (MLflow logs SQLAlchemy errors whole)."""

    def filter(self, record: logging.LogRecord) -> bool:
        raw = str(record.msg)
        extra = record.exc_info or record.exc_text or record.stack_info or record.args or "\n" in raw or "@" in raw
        if record.name.split(".")[0] != "fxcu" and extra:
            text = record.getMessage().strip()
            record.msg, record.args = redact_uri(redact(text.splitlines()[0] if text else "", None))[:300], None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def one_line_logs() -> None:
    """Put `OneLineRecords` on every handler that reaches stderr: the root's and those MLflow and alembic install."""
    for name in (None, "mlflow", "alembic"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, OneLineRecords) for f in handler.filters):
                handler.addFilter(OneLineRecords())


# MLflow's HTTP client retries a down server 7 times with backoff 2 by default: one retry of 5 s at most here.
MLFLOW_HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


@contextlib.contextmanager
def no_stray_folders(uri: str) -> Iterator[None]:
    """Remove the folders MLflow makes in the block for the *escaped* path of a SQLite URI (`a%23b/` beside `a#b/`).

    MLflow's engine factory makes the parent of the path as the URI writes it; fxcu makes the real one itself.
    """
    escaped = Path(uri.removeprefix("sqlite:///").split("?")[0]).parent if uri.startswith("sqlite:///") else Path()
    made = [folder for folder in (escaped, *escaped.parents) if not folder.exists()]
    try:
        yield
    finally:
        for folder in made:  # deepest first; one that is not empty stays
            with contextlib.suppress(OSError):
                folder.rmdir()


def create_database(db: Path) -> None:
    """Migrate a new SQLite database beside `db`, then rename it in: a failure (a full disk) leaves none half-made."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db.parent / ".create.lock", timeout=60, what="MLflow database creation lock"):
        if db.exists():  # another process made it while this one waited
            return
        with atomic_path(db) as tmp:
            store = TrackingStore.sqlite(tmp, db.parent / "mlruns")
            try:
                with no_stray_folders(store.uri):
                    SqlAlchemyStore(store.uri, store.artifacts).engine.dispose()  # closed before the rename
            finally:
                tmp.with_name(tmp.name + "-journal").unlink(missing_ok=True)
        log.info("Created the MLflow database %s", db)


def mlflow_client(store: TrackingStore) -> Any:
    """An MlflowClient on the store; a new SQLite database is first created whole (`create_database`)."""
    from mlflow.tracking import MlflowClient

    one_line_logs()  # after the import, which installs MLflow's own stderr handler
    if store.db is not None and not store.db.exists():
        create_database(store.db)
    if store.server:
        for name, value in MLFLOW_HTTP_BOUNDS.items():  # read by MLflow at each request; the user's values win
            os.environ.setdefault(name, value)
        # a server's client prints "View run ... at: URL" to stdout, which holds results (`run --json`)
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    with no_stray_folders(store.uri):
        return MlflowClient(tracking_uri=store.uri)


def relocate_artifacts(db: Path, root: str) -> int:
    """Point experiments and runs whose artifacts lived under another data dir's `mlflow/mlruns` at `root`.

    Returns how many experiments moved.

    A data dir that was moved or restored from `fxcu backup` elsewhere keeps working: new artifacts go
    under it, old ones are found there, and nothing is recreated at the old path.
    """

    tail = "/mlflow/mlruns"
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        query = "select artifact_location from experiments where artifact_location like 'file:%'"
        rows = conn.execute(query).fetchall()
        olds = {loc[: loc.rindex(tail) + len(tail)] for (loc,) in rows if tail in loc}
        moved = 0
        for old in olds - {root}:
            swap = (root, len(old) + 1, len(old), old)  # the prefix `old` becomes `root`
            moved += conn.execute(
                "update experiments set artifact_location = ? || substr(artifact_location, ?)"
                " where substr(artifact_location, 1, ?) = ?",
                swap,
            ).rowcount
            conn.execute(
                "update runs set artifact_uri = ? || substr(artifact_uri, ?) where substr(artifact_uri, 1, ?) = ?", swap
            )
    if moved:
        log.warning("The data dir moved: %d experiment(s) now keep their artifacts under %s", moved, root)
    return moved


def ensure_experiment(
    client: Any, name: str, artifact_location: str | None, description: str | None = None
) -> tuple[str, bool]:
    """Return the experiment id, creating it (absolute artifact location) when missing; describe it if undescribed."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    tags = {KIND_TAG: "custom_model_development"} | ({NOTE_TAG: description} if description else {})
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location, tags=tags), True
        except MlflowException as exc:  # on a team server another analyst's run may create it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
    for key, value in tags.items():
        if key not in found.tags:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id, False


def retire_default_experiment(client: Any) -> bool:
    """Delete MLflow's empty `Default` experiment, whose artifacts go to the working directory of the store's maker.

    Only for a local store; an experiment with runs is left alone. Return whether it was deleted.
    """
    try:
        default = client.get_experiment("0")
    except Exception:  # noqa: BLE001 -- no experiment 0: nothing to retire
        return False
    if (
        default is None
        or default.lifecycle_stage != "active"
        or client.search_runs(["0"], max_results=1, run_view_type=3)
    ):
        return False
    client.delete_experiment("0")
    return True


def run_name(fc: Forecast, now: datetime, degraded: bool = False) -> str:
    """The MLflow run name: horizon, forecast, 80% range, data date and when it was made, in Santiago time (pure).

    Degraded data puts `[degraded]` first, as in the email's subject.

    >>> from types import SimpleNamespace as NS
    >>> fc = NS(horizon="7d", final={"forecast": 912.404, "lo_80": 890.06, "hi_80": 935.26}, origin=date(2026, 1, 19))
    >>> run_name(fc, datetime(2026, 1, 19, 15, tzinfo=UTC))
    '7d 912.40 [890.1–935.3] · data 2026-01-19 · 01-19 12:00:00'
    """
    made = now.astimezone(ZoneInfo("America/Santiago"))
    final = fc.final
    mark = f"{DEGRADED_MARK} " if degraded else ""
    return (
        f"{mark}{fc.horizon} {final['forecast']:.2f} [{final['lo_80']:.1f}–{final['hi_80']:.1f}]"
        f" · data {fc.origin} · {made:%m-%d %H:%M:%S}"
    )


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Everything one forecast logs to MLflow."""

    horizon: str
    run_name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: tuple[Path, ...]
    start_ms: int | None = None  # when the run began (the command's start); None: when it is logged
    # MLflow Dataset fields (name, digest, source_type, source, schema, profile), one per input series
    datasets: tuple[dict[str, str], ...] = ()


def served_models(bt: Backtest) -> str:
    """The models the served forecast is made of, weighted when several: 'AutoETS 60%, Naive 40%' (pure)."""
    used = {name: w for name, w in bt.weights.items() if w > 0}
    return next(iter(used)) if len(used) == 1 else ", ".join(f"{n} {w:.0%}" for n, w in used.items())


def run_note(fc: Forecast, bundle: Bundle) -> str:
    """The run's description (`mlflow.note.content`, Markdown): forecast, range, served models, backtest (pure)."""
    final, bt = fc.final, fc.backtest
    interval = fc.interval_label
    copper = "off" if bundle.copper is None else f"{bundle.sources['copper']} ({bundle.copper_frequency})"
    return "\n".join(
        [
            f"**{headline_of([fc])}** ({_pct(final['forecast'], fc.last_close)})",
            "",
            (
                f"- Range: 80% {final['lo_80']:.2f} – {final['hi_80']:.2f}, "
                f"95% {final['lo_95']:.2f} – {final['hi_95']:.2f} ({interval})"
            ),
            f"- Served models: {served_models(bt)} (rule `{bt.rule}`)",
            (
                f"- Backtest: RMSE {bt.ensemble.rmse:.2f} CLP, {bt.ensemble.ratio:.3f}x Naive's, coverage "
                f"{bt.ensemble.coverage_80:.0%} (80%) / {bt.ensemble.coverage_95:.0%} (95%), {len(bt.origins)} origins"
            ),
            (
                f"- Data: USD/CLP {bundle.sources['usdclp']} to {fc.origin}, copper {copper}; "
                f"degraded: {', '.join(bundle.degraded) or 'no'}"
            ),
        ]
    )


def prices_digest(*frames: pl.DataFrame | None) -> str:
    """sha256 of the series' dates and closes only: the same prices give the same digest, whenever fetched (pure).

    `fetched_at` and `source` are left out on purpose: a refetch of identical prices is the same input.
    """

    digest = hashlib.sha256()
    for frame in frames:
        if frame is not None:
            digest.update(frame.select(DATE, CLOSE).sort(DATE).write_csv().encode())
    return digest.hexdigest()


def input_datasets(bundle: Bundle) -> tuple[dict[str, str], ...]:
    """The input series as MLflow Dataset fields: name, digest of the prices, source, schema and profile (pure)."""
    series = [("usdclp", bundle.usdclp, "CLP per USD", bundle.sources["usdclp"])]
    if bundle.copper is not None:
        series.append(("copper", bundle.copper, "USD per lb", bundle.sources["copper"]))
    found = []
    for name, frame, unit, source in series:
        schema = {
            "mlflow_colspec": [
                {"type": "datetime", "name": DATE, "required": True},
                {"type": "double", "name": CLOSE, "required": True},
            ]
        }
        profile = {
            "rows": frame.height,
            "first_date": str(frame[DATE].min()),
            "last_date": str(frame[DATE].max()),
            "unit": unit,
        }
        found.append(
            {
                "name": name,
                "digest": prices_digest(frame)[:16],  # MLflow's digest column holds 36 characters
                "source_type": "local",
                "source": json.dumps(
                    {
                        "uri": f"inputs/warehouse/{USDCLP_CACHE if name == 'usdclp' else COPPER_CACHE}",
                        "fetched_from": source,
                    }
                ),
                "schema": json.dumps(schema),
                "profile": json.dumps(profile),
            }
        )
    return tuple(found)


def density_metrics(db: DensityBacktest, horizon: str) -> dict[str, float]:
    """MLflow metrics of the range backtest: per interval model (the served range keyed by horizon) CRPS, WIS, IS80,
    IS95, their ratios to Naive's with CI bounds, coverage overall, per volatility regime and in each named window,
    the 98% coverage, the PIT uniformity p-value and the Brier skill per event (`bss_up2_5`: above +2.5%); and the
    served range's PIT deciles (`<horizon>_range_pit_decile_1` .. `_10`).
    """
    metrics: dict[str, float] = {"range_origins": float(len(db.origins))}
    if db.copper_ablation_pct is not None:
        metrics["range_copper_ablation_pct"] = db.copper_ablation_pct
    for name, m in {**db.models, "range": db.served}.items():
        key = f"{horizon}_range" if name == "range" else f"range_{name}"
        metrics |= {f"{key}_crps": m.crps, f"{key}_wis": m.wis, f"{key}_is80": m.is80, f"{key}_is95": m.is95}
        for score, ratio in (
            ("crps", m.crps_ratio),
            ("wis", m.wis_ratio),
            ("is80", m.is80_ratio),
            ("is95", m.is95_ratio),
        ):
            metrics |= {
                f"{key}_{score}_ratio": ratio.value,
                f"{key}_{score}_ratio_lo": ratio.lo,
                f"{key}_{score}_ratio_hi": ratio.hi,
            }
        metrics |= {f"{key}_coverage_80": m.coverage_80, f"{key}_coverage_95": m.coverage_95}
        for group, (c80, c95) in m.coverage_by.items():
            slug = re.sub(r"\W+", "_", group).strip("_")
            if not math.isnan(c80):
                metrics |= {f"{key}_coverage_80_{slug}": c80, f"{key}_coverage_95_{slug}": c95}
        metrics |= {f"{key}_coverage_{TAIL_LEVEL}": m.coverage_98, f"{key}_pit_p": m.pit_p}
        for event, skill in m.brier_skill.items():
            slug = "bss_" + event.replace("+", "up").replace("-", "down").replace(".", "_").rstrip("%")
            metrics |= {f"{key}_{slug}": skill.value, f"{key}_{slug}_lo": skill.lo, f"{key}_{slug}_hi": skill.hi}
    # the served range's PIT histogram, decile by decile (MLflow's chart view draws a run's metrics side by side)
    metrics |= {f"{horizon}_range_pit_decile_{j + 1}": v for j, v in enumerate(db.served.pit_deciles)}
    return metrics


def run_record(
    fc: Forecast,
    bundle: Bundle,
    *,
    now: datetime,
    seconds: Mapping[str, float],
    artifacts: Sequence[Path],
    input_hash: str | None = None,
    versions: Mapping[str, str] | None = None,
) -> RunRecord:
    """Turn a forecast into MLflow params, batch metrics, tags, description and datasets (pure).

    `now` is when the command started: the run's start time. `input_hash` defaults to the digest of the prices.
    `versions` (from `package_versions`) become `version_<package>` params.
    """
    bt, h = fc.backtest, fc.horizon
    if input_hash is None:
        input_hash = prices_digest(bundle.usdclp, bundle.copper)
    params = {
        "horizon": h,
        "horizon_trading_days": str(bt.steps),
        "models": ",".join(bt.weights),
        "served_models": served_models(bt),
        "ensemble_rule": bt.rule,
        "ensemble_weights": json.dumps({k: round(v, 4) for k, v in bt.weights.items()}),
        "num_sources": str(sum(1 for v in bundle.sources.values() if v not in {"none", "off"})),
        "copper_available": str(bundle.copper is not None),
        "usdclp_source": bundle.sources["usdclp"],
        "copper_source": bundle.sources["copper"],
        "copper_frequency": bundle.copper_frequency or "none",
        "data_first_date": str(bundle.usdclp[DATE].min()),
        "data_last_date": str(bundle.usdclp[DATE].max()),
        "target_date": str(fc.final[DATE]),
        "observations": str(bundle.usdclp.height),
        "backtest_origins": str(len(bt.origins)),
        "backtest_first_origin": str(bt.origins[0]),
        "backtest_last_origin": str(bt.origins[-1]),
        "interval_model": fc.interval_model,
        "interval_label": fc.interval_label,
        "input_sha256": input_hash,
        "version_fxcu": __version__,
        **{f"version_{pkg}": version for pkg, version in (versions or {}).items()},
    }
    metrics: dict[str, float] = {}
    for name, m in bt.models.items():
        keys = [h, SERVED_PREFIX.rstrip("_")] if name == ENSEMBLE else [name]
        for key in keys:
            metrics |= {
                f"{key}_rmse": m.rmse,
                f"{key}_mae": m.mae,
                f"{key}_mape": m.mape,
                f"{key}_ratio_to_naive": m.ratio,
            }
            metrics |= {f"{key}_coverage_80": m.coverage_80, f"{key}_coverage_95": m.coverage_95}
            if m.direction is not None:
                metrics[f"{key}_direction_hit"] = m.direction
    if bt.copper_ablation_pct is not None:
        metrics["copper_ablation_pct"] = bt.copper_ablation_pct
        metrics["copper_model_pct"] = bt.copper_model_pct
    if fc.density is not None:
        metrics |= density_metrics(fc.density, fc.horizon)
    final = fc.final
    metrics |= {"forecast": final["forecast"], "forecast_lo_80": final["lo_80"], "forecast_hi_80": final["hi_80"]}
    metrics |= {"forecast_lo_95": final["lo_95"], "forecast_hi_95": final["hi_95"], "last_close": fc.last_close}
    metrics["forecast_change_pct"] = (final["forecast"] / fc.last_close - 1) * 100
    metrics |= {f"seconds_{stage}": round(v, 4) for stage, v in seconds.items()}
    tags = {
        "fxcu.status": "degraded" if bundle.degraded else "ok",
        "fxcu.degraded": ",".join(bundle.degraded) or "none",
    }
    tags |= {f"fxcu.degraded.{r.replace(' ', '_')}": "true" for r in bundle.degraded}
    if bt.notes:
        tags["fxcu.backtest_notes"] = "; ".join(bt.notes)
    if fc.density is not None and fc.density.notes:
        tags["fxcu.range_notes"] = "; ".join(fc.density.notes)
    tags |= {NOTE_TAG: run_note(fc, bundle), "fxcu.version": __version__, "fxcu.served_models": served_models(bt)}
    tags |= {"mlflow.source.name": f"fxcu run {h}", "mlflow.source.type": "LOCAL"}
    start_ms = int(now.timestamp() * 1000)
    datasets = input_datasets(bundle)
    return RunRecord(
        h,
        run_name(fc, now, bool(bundle.degraded)),
        params,
        metrics,
        tags,
        tuple(artifacts),
        start_ms=start_ms,
        datasets=datasets,
    )


def package_versions(packages: Sequence[str] = ("polars", "statsforecast", "mlflow", "numpy")) -> dict[str, str]:
    """The installed version of each package a run depends on, read from its metadata (missing ones left out)."""
    versions = {}
    for pkg in packages:
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return versions


_UNREACHABLE: dict[str, str] = {}  # tracking servers that failed in this process, and how


def _follow_data_dir(config: Config, store: TrackingStore) -> None:
    """Relocate the artifacts of the data dir's own SQLite store when the data dir was moved or restored elsewhere."""
    if store.db == config.mlflow_db and store.db.exists():
        relocate_artifacts(store.db, config.mlruns.as_uri())


def run_user(environ: Mapping[str, str]) -> str:
    """Who ran it, for `mlflow.user`: $LOGNAME/$USER (cron sets them), else the account name."""

    with contextlib.suppress(Exception):  # getpass raises when a container's uid has no passwd entry
        return environ.get("LOGNAME") or environ.get("USER") or getpass.getuser()
    return "unknown"


def artifact_files(path: Path, artifacts: Sequence[Path], tmp: Path) -> list[Path]:
    """The files to log for `path`: a Markdown report goes with its HTML twin (chart inlined) that MLflow draws."""
    if path.suffix != ".md":
        return [path]
    images = {p.name: p.read_bytes() for p in artifacts if p.suffix == ".png" and p.exists()}
    twin = tmp / path.with_suffix(".html").name
    write_text_atomic(html_page(path.read_text(), images), twin)
    return [path, twin]


def end_run(client: Any, run_id: str, status: str, why: str, note: str = "") -> None:
    """End a run that could not finish as `status` (FAILED or KILLED); its `fxcu.ended` tag and description say why."""
    from mlflow.entities import RunTag

    said = f"**{status}: {why}**\n\n{note}".strip()
    client.log_batch(run_id, tags=[RunTag("fxcu.ended", why), RunTag(NOTE_TAG, said)])
    client.set_terminated(run_id, status=status)


LEFTOVER_RUN_AGE = 3600.0  # seconds before another host's RUNNING run counts as left behind (as for temp files)


def close_leftovers(client: Any, *, bound: float, now: float | None = None) -> int:
    """End as FAILED, with a note, the fxcu runs a stopped process left RUNNING; return how many.

    Left behind: its writer (tags `fxcu.pid`, `fxcu.host`) is gone from this host, or, on another host, whose
    processes cannot be checked, the run is an hour old; and either way it is older than the tracking bound.
    A run without those tags (made by an older fxcu) is left alone.
    """
    now = time.time() if now is None else now
    host = temp_owner().split("@", 1)[1]
    ids = [e.experiment_id for e in client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")]
    running = client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=1000) if ids else []
    closed = 0
    for run in running:
        tags, age = run.data.tags, now - (run.info.start_time or 0) / 1000
        pid, where = tags.get("fxcu.pid", ""), tags.get("fxcu.host")
        if not pid.isdigit():
            continue
        gone = not _alive(int(pid)) if where == host else age > LEFTOVER_RUN_AGE
        if gone and age > bound:
            why = f"left RUNNING by process {pid} on {where}, which stopped before the run was written"
            end_run(client, run.info.run_id, "FAILED", why, tags.get(NOTE_TAG, ""))
            closed += 1
    if closed:
        log.warning("Closed %d MLflow run(s) that a stopped fxcu left RUNNING (now FAILED)", closed)
    return closed


@dataclass(slots=True)
class Writing:
    """A run being written by `log_run`'s thread, shared with the caller, which may stop waiting for it.

    On a timeout the caller sets `cancel`; on a signal it first makes `status` KILLED and `why` the signal.
    The writer then ends its run as `status` (`end_run`), never FINISHED. `done` is set when the writer has
    left (its temp files removed).
    """

    why: str
    status: str = "FAILED"
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    client: Any = None
    run_id: str | None = None


def write_run(config: Config, record: RunRecord, environ: Mapping[str, str], writing: Writing) -> str:
    """Write one run to the tracking store (the caller holds the MLflow lock); return its run id.

    Runs a stopped fxcu left RUNNING are closed first (`close_leftovers`), and this one is tagged with its
    process (`fxcu.pid`, `fxcu.host`) so that a later run can do the same for it. A write that fails ends
    the run FAILED. Once `writing.cancel` is set no run is created, and a run already created ends, once
    written, as `writing.status` (a FAILED one deleted too), never FINISHED: raised as TimeoutError(`writing.why`).
    """
    started = time.perf_counter()
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    store = tracking_store(config, environ)
    if store.uri in _UNREACHABLE:
        raise ConnectionError(f"the tracking server failed earlier in this run: {_UNREACHABLE[store.uri]}")
    client = mlflow_client(store)
    _follow_data_dir(config, store)
    if store.db is not None:
        retire_default_experiment(client)
    name = EXPERIMENT_PREFIX + record.horizon
    experiment_id, _ = ensure_experiment(client, name, store.artifacts, experiment_description(record.horizon))
    close_leftovers(client, bound=config.tracking_timeout)
    pid, host = temp_owner().split("@", 1)
    tags = {"mlflow.runName": record.run_name, "mlflow.user": run_user(environ), **record.tags}
    tags |= {"fxcu.pid": pid, "fxcu.host": host}
    if writing.cancel.is_set():
        raise TimeoutError(writing.why)
    run = client.create_run(experiment_id, start_time=record.start_ms, run_name=record.run_name, tags=tags)
    run_id = writing.run_id = run.info.run_id
    writing.client, note = client, record.tags.get(NOTE_TAG, "")
    try:
        stamp = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in record.metrics.items() if math.isfinite(v)],
            params=[Param(k, v[:6000]) for k, v in record.params.items()],
        )
        context = [InputTag("mlflow.data.context", "training")]
        log_datasets(client, run_id, [DatasetInput(Dataset(**d), tags=context) for d in record.datasets])
        with tempfile_dir(config.data_dir) as tmp:
            for path in record.artifacts:
                for file in artifact_files(path, record.artifacts, tmp):
                    folder = "inputs/warehouse" if path.suffix == ".parquet" else None
                    client.log_artifact(run_id, str(file), artifact_path=folder)
        client.log_metric(run_id, "seconds_tracking", round(time.perf_counter() - started, 4))
    except BaseException as exc:
        cut = writing.cancel.is_set()  # then the caller's reason, else the writer's own failure
        why = writing.why if cut else f"tracking failed ({one_line(exc, config.fred_api_key)})"
        with contextlib.suppress(Exception):  # the store may be what failed: the writer's own error is raised
            end_run(client, run_id, writing.status if cut else "FAILED", why, note)
        raise
    if writing.cancel.is_set():  # the caller stopped waiting while this run was written: it must not end FINISHED
        end_run(client, run_id, writing.status, writing.why, note)
        if writing.status == "FAILED":
            client.delete_run(run_id)  # after FAILED: MLflow updates only an active run
        raise TimeoutError(writing.why)
    client.set_terminated(run_id, status="FINISHED", end_time=int(time.time() * 1000))
    return run_id


def log_datasets(client: Any, run_id: str, datasets: Sequence[Any], *, tries: int = 3) -> None:
    """Log a run's input datasets; when another run inserted the same dataset at the same moment, log them again.

    MLflow's store looks a dataset up, then inserts it: two analysts logging the same prices at once can both
    insert, and one is refused with a unique-key error (`dataset_pk` on PostgreSQL). The row exists then, and the
    next try links it. Any other error is raised at once.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(1, tries + 1):
        try:
            client.log_inputs(run_id, datasets=list(datasets))
            return
        except MlflowException as exc:
            if attempt == tries or not re.search(r"duplicate key|unique constraint", str(exc.message), re.I):
                raise
            log.info("MLflow: the same dataset was logged by another run at once; logging it again")


def server_failure(exc: BaseException) -> str:
    """Why a tracking server did not take a run, in a few words: unreachable, no answer in time, or its own error.

    MLflow's client raises MlflowException for all of them; the requests error it wraps is its context.
    A timeout keeps its `TimeoutError: ` prefix, which `run all` reads to skip the other horizons.
    """
    import requests
    from mlflow.exceptions import RestException

    if isinstance(exc, ConnectionError):  # `write_run`'s own: this server failed for an earlier horizon
        return str(exc)
    if isinstance(exc, RestException):  # the server answered with an error (its database down, say)
        first = next(iter(str(exc.message).strip().splitlines()), "")
        return f"answered {exc.error_code}: {redact(redact_uri(first), None)[:200]}"
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, requests.Timeout):
        return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s"
    if isinstance(cause, requests.ConnectionError):
        return "unreachable (connection failed)"
    if isinstance(cause, requests.exceptions.RetryError):  # a 5xx on every try; `check` shows the server's message
        status = re.search(r"too many (\d{3}) error responses", str(cause))
        return "answered an error on every try" + (f" (HTTP {status[1]})" if status else "")
    return one_line(exc)


def log_run(config: Config, record: RunRecord, *, environ: Mapping[str, str]) -> str:
    """Log one run to MLflow (`write_run`) under the tracking lock, within `config.tracking_timeout`; return its id.

    A run still being written when the bound passes ends FAILED, with a note, and deleted at its next
    step, so it never ends FINISHED after the caller was told it failed. On Ctrl-C or SIGTERM the run
    ends KILLED: the writer is given a few seconds to end it (and remove its temp files), else it is ended
    from here; then the signal goes on.
    """

    seconds = config.tracking_timeout
    writing = Writing(f"MLflow tracking did not finish within {seconds:g} s")

    def locked() -> str:
        # the lock is taken inside the bounded thread, so if the run gives up waiting, the
        # lock stays held until that thread's last write: no second writer can start meanwhile.
        # It waits half the budget for the lock, and starts no run once the caller has given up.
        try:
            with file_lock(config.mlflow_dir / ".lock", timeout=seconds / 2, what="MLflow lock"):
                if writing.cancel.is_set():
                    raise TimeoutError("MLflow tracking gave up before writing")
                return write_run(config, record, environ, writing)
        finally:
            writing.done.set()

    store = tracking_store(config, environ)
    try:
        return _bounded(seconds, "MLflow tracking", locked, cancel=writing.cancel, said=writing.why)
    except Exception as exc:
        # the other horizons do not wait for it again
        if store.server and store.uri not in _UNREACHABLE:
            _UNREACHABLE[store.uri] = server_failure(exc)
        raise
    except BaseException as exc:  # Ctrl-C, or SIGTERM (`Terminated`): the run ends KILLED, then the signal goes on
        ctrl_c = isinstance(exc, KeyboardInterrupt)
        writing.why = f"the run was {'interrupted (Ctrl-C)' if ctrl_c else 'terminated (SIGTERM)'} while it was tracked"
        writing.status = "KILLED"
        writing.cancel.set()
        if writing.run_id is not None and not writing.done.wait(5):  # a writer that hangs: ended from here
            with contextlib.suppress(Exception):
                note = record.tags.get(NOTE_TAG, "")
                _bounded(5, "MLflow tracking", end_run, writing.client, writing.run_id, "KILLED", writing.why, note)
        raise


def write_inputs(bundle: Bundle, folder: Path) -> tuple[list[Path], str]:
    """Save the exact inputs as a warehouse a replay can read (`FXCU_DATA_DIR=<inputs> ... --offline`).

    Return the files and the sha256 of the prices (`prices_digest`).
    """
    paths = [folder / "warehouse" / USDCLP_CACHE]
    write_parquet_atomic(bundle.usdclp, paths[0])
    if bundle.copper is not None:
        paths.append(folder / "warehouse" / COPPER_CACHE)
        write_parquet_atomic(bundle.copper, paths[1])
    return paths, prices_digest(bundle.usdclp, bundle.copper)


def report_record(
    fc: Forecast, bundle: Bundle, report: Report | None, inputs: Path, *, now: datetime, seconds: Mapping[str, float]
) -> RunRecord:
    """The run record of a horizon: its report's files, and its exact inputs (saved under `inputs`), as artifacts."""
    saved, digest = write_inputs(bundle, inputs)
    files = [p for p in (report.markdown, report.chart, report.pit_chart, report.table) if p] if report else []
    return run_record(
        fc,
        bundle,
        now=now,
        seconds=seconds,
        artifacts=[*files, *saved],
        input_hash=digest,
        versions=package_versions(),
    )


def best_run(
    horizon: str, metric: str = "rmse", *, config: Config | None = None, environ: Mapping[str, str] | None = None
) -> Any:
    """The finished run of a horizon that is best on `metric` (the original guide's get_best_run), or None.

    `metric` is a short name (`rmse`, `mae`, `mape`, `ratio_to_naive`, `coverage_80`, ...) meaning
    the ensemble's `{horizon}_{metric}`, or a full metric name (`7d_rmse`, `AutoETS_mae`). Best is
    lowest, except coverage (closest to its nominal level) and direction hit rate (highest).
    """
    parse_horizon(horizon)
    environ = os.environ if environ is None else environ
    config = config or Config.from_env(environ)
    client = mlflow_client(tracking_store(config, environ))
    experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + horizon)
    if experiment is None:
        return None
    name = f"{horizon}_{metric}" if metric in SHORT_METRICS else metric
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=5000
    )
    scored = [r for r in runs if name in r.data.metrics]
    rank = metric_rank(name)
    return min(scored, key=lambda r: rank(r.data.metrics[name]), default=None)


def read_runs_sqlite(db: Path, horizons: Sequence[str], last: int | None) -> list[StoredRun]:
    """The newest `last` active runs per horizon (all when None), newest first, straight from MLflow's tables."""

    if not db.exists():
        return []
    names = {EXPERIMENT_PREFIX + h: h for h in horizons}
    marks = ",".join("?" * len(names))
    query = f"""
        select * from (
            select r.run_uuid, e.name, r.name, r.status, r.start_time, r.end_time,
                   row_number() over (partition by e.experiment_id order by r.start_time desc) as k
            from runs r join experiments e on e.experiment_id = r.experiment_id
            where e.name in ({marks}) and r.lifecycle_stage = 'active' and e.lifecycle_stage = 'active'
        ) where ? is null or k <= ? order by 5 desc"""  # only placeholders are interpolated
    with read_only(db) as conn:
        rows = conn.execute(query, [*names, last, last]).fetchall()
        ids = [r[0] for r in rows]
        found: dict[str, dict[str, dict[str, Any]]] = {i: {"params": {}, "latest_metrics": {}, "tags": {}} for i in ids}
        for start in range(0, len(ids), 500):  # SQLite caps the number of placeholders
            chunk = ids[start : start + 500]
            for table in ("params", "latest_metrics", "tags"):
                sql = f"select run_uuid, key, value from {table} where run_uuid in ({','.join('?' * len(chunk))})"
                for run_id, key, value in conn.execute(sql, chunk):
                    found[run_id][table][key] = value
    return [
        StoredRun(
            i, names[e], n or "", s, int(st or 0), en, found[i]["params"], found[i]["latest_metrics"], found[i]["tags"]
        )
        for i, e, n, s, st, en, _ in rows
    ]


def _stored(run: Any, horizon: str) -> StoredRun:
    """An MLflow Run as the dashboard reads it."""
    info, data = run.info, run.data
    return StoredRun(
        info.run_id,
        horizon,
        info.run_name or "",
        info.status,
        info.start_time or 0,
        info.end_time,
        data.params,
        data.metrics,
        data.tags,
    )


def read_runs_mlflow(store: TrackingStore, horizons: Sequence[str], last: int | None) -> list[StoredRun]:
    """The same as `read_runs_sqlite`, through mlflow's client (a tracking server)."""
    client = mlflow_client(store)
    runs = []
    for horizon in horizons:
        experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + horizon)
        if experiment is None:
            continue
        found = client.search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=last or 5000
        )
        runs += [_stored(r, horizon) for r in found]
    return sorted(runs, key=lambda r: r.start_ms, reverse=True)


def read_compare_mlflow(store: TrackingStore, metric: str) -> list[StoredRun]:
    """What `compare` reads from a server: each horizon's latest run, then its best finished runs on `metric`.

    A server sends every metric of every run it lists (hundreds per fxcu run), so `compare` asks for these
    few runs (`best_run_searches`) rather than all of them.
    """
    client, runs = mlflow_client(store), []
    for horizon in HORIZONS:
        experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + horizon)
        if experiment is None:
            continue
        newest = "attributes.start_time DESC"  # ties go to the newest run, as on the local store
        found = client.search_runs([experiment.experiment_id], order_by=[newest], max_results=1)
        for where, order in best_run_searches(f"{horizon}_{metric}"):
            found += client.search_runs([experiment.experiment_id], where, order_by=[order, newest], max_results=1)
        runs += [_stored(r, horizon) for r in found]
    return runs


def read_runs(config: Config, environ: Mapping[str, str], horizons: Sequence[str], last: int | None) -> list[StoredRun]:
    """Read the runs from wherever they are tracked: sqlite3 for a local store, mlflow for a server."""
    store = tracking_store(config, environ)
    return read_runs_sqlite(store.db, horizons, last) if store.db else read_runs_mlflow(store, horizons, last)


# -- Shell: the forecast ledger --------------------------------------------------------


class LedgerError(ValueError):
    """A ledger that cannot be read or would shrink: it is left as it is."""


def ledger_path(config: Config) -> Path:
    return config.warehouse / LEDGER


def read_ledger(path: Path) -> pl.DataFrame:
    """The ledger on disk (empty when there is none); raises LedgerError for an unreadable one, left untouched."""

    if not path.exists():
        return empty_ledger()
    try:
        frame = pl.read_parquet(path)
        schema = ledger_schema()
        # a ledger written before a column existed gains it as nulls, never loses rows
        return (
            frame.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in schema.items() if c not in frame.columns)
            .select(list(schema))
            .cast(schema)
        )
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is reported, never overwritten
        raise LedgerError(f"forecast ledger {path} unreadable ({type(exc).__name__}); left untouched") from None


def write_ledger(ledger: pl.DataFrame, path: Path) -> None:
    """Write the ledger atomically, refusing to replace it with fewer rows."""

    if path.exists():
        before = pl.scan_parquet(path).select(pl.len()).collect().item()
        if ledger.height < before:
            raise LedgerError(f"refusing to shrink the forecast ledger from {before} to {ledger.height} rows")
    write_parquet_atomic(ledger, path)


@contextlib.contextmanager
def ledger_lock(config: Config) -> Iterator[None]:
    """Hold the ledger's lock: one read-modify-write at a time."""
    with file_lock(config.warehouse / ".ledger.lock", timeout=config.lock_timeout, what="ledger lock"):
        yield


def update_ledger(config: Config, prices: pl.DataFrame, rows: Sequence[Mapping[str, Any]] = ()) -> pl.DataFrame:
    """Read the ledger, add `rows`, score it on `prices`, write it."""
    path = ledger_path(config)
    with ledger_lock(config):
        ledger = read_ledger(path)
        ledger = score_ledger(upsert_ledger(ledger, rows), prices)
        write_ledger(ledger, path)
        return ledger


def track_figure(ledger: pl.DataFrame, prices: pl.DataFrame, horizon: str, *, last: int = 120) -> Figure | None:
    """Plot realised USD/CLP against the 80/95% ranges served for it over the last `last` forecasts; None with none."""
    from matplotlib.figure import Figure

    rows = ledger.filter(pl.col("horizon") == horizon).sort("origin")
    shown = {kind: rows.filter(pl.col("kind") == kind).tail(last) for kind in ("reconstructed", "live")}
    if rows.is_empty():
        return None
    fig = Figure(figsize=(10, 5), dpi=100)  # the object API, as in `chart_figure`
    ax = fig.subplots()
    start = min(frame["origin"].min() for frame in shown.values() if frame.height)
    hist = prices.filter(pl.col(DATE) >= start)
    # on a first run only the origin's close is realised: a one-point line draws nothing, so it gets a marker
    marker = "o" if hist.height < 2 else None
    realised = {"color": "black", "lw": 1.1, "marker": marker, "ms": 4, "label": "USD/CLP realised"}
    ax.plot(hist[DATE].to_list(), hist[CLOSE].to_list(), **realised)
    for kind, colour in (("reconstructed", "tab:gray"), ("live", "tab:blue")):
        mine = shown[kind]
        if mine.is_empty():
            continue
        x = mine["target"].to_list()
        for lv, alpha in ((95, 0.25), (80, 0.6)):
            lo, hi = mine[f"lo_{lv}"].to_list(), mine[f"hi_{lv}"].to_list()
            ax.vlines(x, lo, hi, color=colour, alpha=alpha, lw=3, label=f"{lv}% served ({kind})")
        ax.scatter(x, mine["forecast"].to_list(), color=colour, s=8, zorder=3)
        missed = mine.filter(pl.col("hit_80").not_().fill_null(False))
        ax.scatter(
            missed["actual_date"].to_list(), missed["actual"].to_list(), color="tab:red", marker="x", s=20, zorder=4
        )
    ax.scatter([], [], color="tab:red", marker="x", label="outside the 80% range")
    ax.set_ylabel("CLP per USD")
    ax.set_title(f"USD/CLP {horizon}: realised closes against the ranges served for their dates")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def write_track_chart(ledger: pl.DataFrame, prices: pl.DataFrame, horizon: str, path: Path, *, last: int = 120) -> bool:
    """Save `track_figure` as a PNG at `path` (atomically); False, and no file, when the horizon has no forecasts."""
    fig = track_figure(ledger, prices, horizon, last=last)
    if fig is None:
        return False
    write_png(fig, path)
    return True


# -- Shell: email ----------------------------------------------------------------------


def send_email(environ: Mapping[str, str], message: Any) -> bool:
    """Send a message to FXCU_SMTP_HOST; a failure is logged, never raised.

    Port 465 speaks TLS from the start; other ports use STARTTLS unless FXCU_SMTP_STARTTLS=0.
    Certificates are verified (FXCU_SMTP_CAFILE adds a private CA), and credentials are never
    sent without TLS.
    """
    host, user = environ["FXCU_SMTP_HOST"], environ.get("FXCU_SMTP_USER")
    try:
        port = int(environ.get("FXCU_SMTP_PORT") or 587)
        implicit = port == 465
        starttls = not implicit and env_flag(environ, "FXCU_SMTP_STARTTLS", True)
        if user and not (implicit or starttls):
            raise ValueError("refusing to send SMTP credentials without TLS (FXCU_SMTP_STARTTLS=0 on a plain port)")
        context = ssl.create_default_context(cafile=environ.get("FXCU_SMTP_CAFILE") or None)
        smtp_class = smtplib.SMTP_SSL if implicit else smtplib.SMTP
        extra = {"context": context} if implicit else {}
        with smtp_class(host, port, timeout=30, **extra) as smtp:
            if starttls:
                smtp.starttls(context=context)
            if user:
                smtp.login(user, environ.get("FXCU_SMTP_PASSWORD", ""))
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        # a UnicodeError's text quotes the offending characters, which may be the password's
        log.error(
            "Email failed (%s); the run is not affected",
            type(exc).__name__ if isinstance(exc, UnicodeError) else one_line(exc),
        )
        return False
    log.info("Report emailed to %s", message["To"])
    return True


def email_reports(
    environ: Mapping[str, str],
    forecasts: Sequence[Forecast],
    bundle: Bundle,
    reports: Sequence[Report],
    *,
    now: datetime,
    preview: Path | None = None,
    extra: Mapping[str, Sequence[Section]] | None = None,
) -> bool:
    """Build one email for the run's horizons, write it to `preview` or send it; a failure is logged, never raised.

    `extra` adds sections per horizon (what changed since the last run).
    """
    to = [a.strip() for a in environ.get("FXCU_SMTP_TO", "").split(",") if a.strip()]
    if preview is None and not (environ.get("FXCU_SMTP_HOST") and to):
        return False
    sender = environ.get("FXCU_SMTP_FROM") or environ.get("FXCU_SMTP_USER") or "fxcu@localhost"
    try:
        charts = {
            fc.horizon: r.chart.read_bytes() if r.chart else None for fc, r in zip(forecasts, reports, strict=True)
        }
        domain = sender.rpartition("@")[2] or "localhost"
        message = build_email(
            forecasts,
            bundle,
            charts,
            now=now,
            sender=sender,
            to=to or ["undisclosed-recipients:;"],
            message_id=make_msgid("fxcu", domain=domain),
            extra=extra,
        )
        if preview is not None:
            write_text_atomic(message.as_bytes(), preview)
            log.info("Email written to %s, not sent", preview)
            return True
    except (OSError, ValueError) as exc:
        log.error("Email could not be built (%s); the run is not affected", one_line(exc))
        return False
    return send_email(environ, message)


# -- Shell: the facts `check` grades ---------------------------------------------------


def read_series_stats(path: Path) -> tuple[date | None, int, bool]:
    """Last date, row count and whether every row is the seed's, of a warehouse file; raises on an unreadable one."""

    if not path.exists():
        return None, 0, False
    # a poisoned file can hold year 33658, which Python's date cannot: clip it to a date that says "future"
    last, rows, seed_only = (
        pl.scan_parquet(path)
        .select(pl.col(DATE).max().clip(date(1, 1, 1), date(9999, 12, 31)), pl.len(), (pl.col(SOURCE) == "seed").all())
        .collect()
        .row(0)
    )
    return last, rows, bool(seed_only and rows)


def read_series_facts(warehouse: Path, file: str) -> SeriesFacts:
    """A warehouse file's last date and row count; an unreadable file is a fact for `check`, not a crash."""
    try:
        last, rows, seed_only = read_series_stats(warehouse / file)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is a finding, not a crash
        return SeriesFacts(file, error=type(exc).__name__)
    return SeriesFacts(file, last, rows, seed_only=seed_only)


SERVER_PROBE_TIMEOUT = 8.0  # seconds per request of `check`'s probe: two of them stay under Nagios's plugin timeout


def _server_error(exc: Exception) -> str:
    """Why a tracking server failed `check`'s probe, in words: `unreachable (...)` or `answered HTTP 500 (...)`."""
    import httpx

    if not isinstance(exc, httpx.HTTPStatusError):
        return f"unreachable ({one_line(exc)})"
    try:
        message = str(exc.response.json().get("message", ""))
    except ValueError:
        message = exc.response.text
    first = next(iter(message.strip().splitlines()), "")
    return f"answered HTTP {exc.response.status_code}" + (
        f" ({redact(redact_uri(first), None)[:200]})" if first else ""
    )


def read_server_facts(uri: str, environ: Mapping[str, str]) -> DatabaseFacts:
    """Probe a tracking server over MLflow's REST API: fxcu's experiments, then one timed search for the newest run.

    Credentials as MLflow's client takes them: user:password in the URI, MLFLOW_TRACKING_USERNAME and
    _PASSWORD, or MLFLOW_TRACKING_TOKEN. Imports no mlflow, so monitoring can call it often.
    """
    import httpx

    shown, token = redact_uri(uri), environ.get("MLFLOW_TRACKING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        url = httpx.URL(uri.rstrip("/") + "/api/2.0/mlflow/")
        auth = (url.username, url.password) if url.username else None
        if environ.get("MLFLOW_TRACKING_USERNAME"):
            auth = (environ["MLFLOW_TRACKING_USERNAME"], environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        base = url.copy_with(username=None, password=None)
        with httpx.Client(base_url=base, auth=auth, headers=headers, timeout=SERVER_PROBE_TIMEOUT) as http:
            found = http.post(
                "experiments/search", json={"filter": f"name LIKE '{EXPERIMENT_PREFIX}%'", "max_results": 100}
            )
            ids = [e["experiment_id"] for e in found.raise_for_status().json().get("experiments", [])]
            seconds, runs = found.elapsed.total_seconds(), []
            if ids:  # the timed search: the newest run of any fxcu experiment
                query = {"experiment_ids": ids, "max_results": 1, "order_by": ["attributes.start_time DESC"]}
                started = time.perf_counter()
                answer = http.post("runs/search", json=query).raise_for_status()
                seconds, runs = time.perf_counter() - started, answer.json().get("runs", [])
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, KeyError, TypeError) as exc:
        return DatabaseFacts(remote=shown, probed=True, error=_server_error(exc))
    newest = datetime.fromtimestamp(int(runs[0]["info"]["start_time"]) / 1000, UTC) if runs else None
    return DatabaseFacts(remote=shown, probed=True, search_seconds=seconds, last_run=newest)


def read_database_facts(config: Config, environ: Mapping[str, str]) -> DatabaseFacts:
    """The MLflow store: a tracking server probed (`read_server_facts`), another remote URI as is (not probed),
    else the local database's run count and size, read-only."""

    uri = environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith(("http:", "https:")):
        return read_server_facts(uri, environ)
    if uri:
        return DatabaseFacts(remote=redact_uri(uri))
    db = config.mlflow_db
    if not db.exists():
        return DatabaseFacts(missing=db)
    try:
        with read_only(db) as conn:
            runs = conn.execute("select count(*) from runs").fetchone()[0]
            versioned = conn.execute("select 1 from sqlite_master where name = 'alembic_version'").fetchone()
            # no schema version: half-made by a crash
            if not versioned or not conn.execute("select version_num from alembic_version").fetchone():
                raise sqlite3.DatabaseError("no schema version: half-made; move it aside and run `fxcu init`")
        return DatabaseFacts(runs=runs, size_bytes=db.stat().st_size)
    except sqlite3.Error as exc:
        return DatabaseFacts(error=str(exc))


def read_scored_ledger(config: Config) -> tuple[pl.DataFrame | None, str | None]:
    """The forecast ledger scored in memory against the warehouse (nothing written), or why it cannot be read.

    (None, None) without a ledger.
    """
    path = ledger_path(config)
    if not path.exists():
        return None, None

    try:
        ledger = read_ledger(path)
    except LedgerError as exc:
        return None, str(exc)
    # an unreadable price file is the usdclp check's finding; grade the ledger as stored
    with contextlib.suppress(Exception):
        prices = pl.read_parquet(config.warehouse / USDCLP_CACHE, columns=[DATE, CLOSE])
        ledger = score_ledger(ledger, prices)
    return ledger, None


def read_free_bytes(data_dir: Path) -> int:
    """Free bytes on the disk of the data dir, or of its nearest existing parent when it is not made yet."""

    existing = next(p for p in (data_dir, *data_dir.parents) if p.exists())
    return shutil.disk_usage(existing).free


def read_check_facts(config: Config, environ: Mapping[str, str]) -> CheckFacts:
    """Read what `check` grades: warehouse files, status file, ledger, MLflow store, free disk (nothing written)."""
    ledger, ledger_error = read_scored_ledger(config)
    return CheckFacts(
        usdclp=read_series_facts(config.warehouse, USDCLP_CACHE),
        copper=read_series_facts(config.warehouse, COPPER_CACHE),
        status=read_status(config),
        database=read_database_facts(config, environ),
        free_bytes=read_free_bytes(config.data_dir),
        ledger=ledger,
        ledger_error=ledger_error,
    )


# -- Commands: fetch, validate, run ----------------------------------------------------


def cmd_fetch(config: Config, client: httpx.Client | None, *, now: datetime) -> int:
    """Refresh both series through their chains into the warehouse; print what was used."""
    usdclp, copper = fetch_both(config, client, now=now)
    for series in (usdclp, copper):
        print(format_series_line(series))
        # an unavailable series' line already lists every source's failure
        for line in series.notes if series.ok else [n for n in series.notes if n not in series.failures]:
            print(f"  {line}")
        for reason in dict.fromkeys(map(str, series.degraded)):
            print(f"  degraded: {reason}")
    return 0 if usdclp.ok else 1


def _empty_features() -> pl.DataFrame:

    return pl.DataFrame(
        schema={DATE: pl.Date, **{f: pl.Int8 if f == "copper_trend_signal" else pl.Float64 for f in FEATURES}}
    )


class Stages:
    """Wall time of a run's stages by name, in the order they first ran; a stage timed again adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def merge(self, other: Stages) -> None:
        """Add another timer's stages to these."""
        for name, seconds in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def format_stages(seconds: Mapping[str, float]) -> str:
    """`fetch 0.12 s, backtest 2.53 s, ...` (pure)."""
    return ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())


class NoForecast(Exception):
    """No forecast can be made: no usable USD/CLP, or too little history for an honest backtest."""


def cmd_validate(config: Config, client: httpx.Client | None, *, now: datetime) -> int:
    """Load, compute features, check ranges and freshness; 0 when every check passes, 1 otherwise."""
    try:
        bundle = load(config, client, now=now)
    except ValueError as exc:
        print(f"fxcu: {exc}", file=sys.stderr)
        return 1
    features = bundle.copper_features if bundle.copper_features is not None else _empty_features()
    found = feature_problems(
        features, bundle.usdclp, bundle.copper, now=now, max_age=timedelta(days=config.max_age_days)
    )
    if bundle.copper is None:
        found.append("copper unavailable: forecasts would run without copper")
    print(format_validation(bundle, found))
    return 1 if found else 0


def _fail_run(config: Config, horizons: Sequence[str], now: datetime, reason: str) -> int:
    """Say why no forecast was made, record it for `check` under every horizon, and return exit code 1."""
    print(f"fxcu: {reason}", file=sys.stderr)
    for horizon in horizons:
        write_status(config, horizon, {"time": now.isoformat(), "ok": False, "tracked": False, "error": reason})
    return 1


def _run_ledger(config: Config, prices: pl.DataFrame) -> pl.DataFrame | None:
    """The run's scored ledger, or None when it cannot be updated."""
    try:
        return update_ledger(config, prices)
    except Exception as exc:  # noqa: BLE001 -- the track record is never worth a failed forecast
        log.error("Forecast ledger not updated (%s): forecasting without the track record", one_line(exc))
        return None


def _track_horizon(
    config: Config,
    fc: Forecast,
    bundle: Bundle,
    ledger: pl.DataFrame | None,
    *,
    now: datetime,
) -> dict[str, Any]:
    """This horizon's ledger row, live numbers, change against the previous run, chart and report section."""

    entry = ledger_entry(fc, bundle, run_id=None, now=now)
    if ledger is None:
        return {"entry": entry, "metrics": {}, "change": None, "chart": None, "section": []}
    mine = ledger.filter((pl.col("horizon") == fc.horizon) & (pl.col("kind") == "live"))
    previous = mine.sort("recorded_at").tail(1).row(0, named=True) if mine.height else None
    stats = track_record(ledger, [fc.horizon])[fc.horizon]
    chart: Path | None = config.data_dir / "reports" / f"track_{fc.horizon}_{now:%Y-%m-%d}.png"
    try:
        # this run's row too, so the chart shows the range just served (and exists from the first run)
        if not write_track_chart(upsert_ledger(ledger, [entry]), bundle.usdclp, fc.horizon, chart):
            chart = None
    except Exception as exc:  # noqa: BLE001 -- a chart is never worth a failed run
        log.error("Track-record chart failed (%s)", one_line(exc))
        chart = None
    change = what_changed(previous, entry)
    section = format_track_section(fc.horizon, stats, change, chart.name if chart else None)
    return {"entry": entry, "metrics": live_metrics(stats), "change": change, "chart": chart, "section": section}


def _log_horizon(
    config: Config,
    fc: Forecast,
    bundle: Bundle,
    report: Report | None,
    track: Mapping[str, Any],
    *,
    now: datetime,
    environ: Mapping[str, str],
    seconds: Mapping[str, float],
    skip: str | None,
) -> tuple[str | None, str | None]:
    """Track one horizon's run (unless `skip` says why not): (run id, None), or (None, why not) logged as an error."""
    run_id, error = None, skip
    if error is None:
        try:
            with tempfile_dir(config.data_dir) as tmp:
                record = report_record(fc, bundle, report, tmp / "inputs", now=now, seconds=seconds)
                reasons = ",".join(track["change"]["reasons"]) if track["change"] else "first"
                record = dataclasses.replace(
                    record,
                    metrics=record.metrics | track["metrics"],
                    tags=record.tags | {"fxcu.changed": reasons or "nothing"},
                    artifacts=record.artifacts + ((track["chart"],) if track["chart"] else ()),
                )
                run_id = log_run(config, record, environ=environ)  # inside the scratch folder, which holds the inputs
        except Exception as exc:  # noqa: BLE001 -- tracking never stops a forecast (a full disk for the inputs)
            server = tracking_store(config, environ).server
            error = server_failure(exc) if server else one_line(exc, config.fred_api_key)
    if run_id is not None:
        log.info("Tracked %s in MLflow as run %s", fc.horizon, run_id)
    else:
        log.error("MLflow tracking failed (%s): the forecast and its report are kept", error)
    return run_id, error


def _write_run_status(config: Config, horizon: str, outcome: Mapping[str, Any], *, now: datetime) -> None:
    """Record this horizon's run for `check`; a failure to write it is logged, never raised."""
    try:
        write_status(
            config,
            horizon,
            {
                "time": now.isoformat(),
                "ok": outcome.get("report") is not None,
                "tracked": outcome["run_id"] is not None,
                "run_id": outcome["run_id"],
                "tracking_error": outcome["tracking_error"],
                "forecast": outcome["forecast"],
                "target_date": outcome["target_date"],
                "degraded": outcome["degraded"],
            },
        )
    except (OSError, TimeoutError) as exc:
        log.error("Status file could not be written (%s): `check` will not see this run", exc)


def _run_horizon(
    config: Config,
    bundle: Bundle,
    fc: Forecast,
    ledger: pl.DataFrame | None,
    *,
    now: datetime,
    environ: Mapping[str, str],
    seconds: Mapping[str, float],
    stages: Stages,
    skip: str | None,
) -> dict[str, Any]:
    """Report one horizon's forecast, track it (unless `skip`), add it to the ledger and the status file.

    Returns its summary. `seconds` are the run's shared stages so far; this horizon's own (report,
    tracking) go to `stages`.
    """
    horizon, bt = fc.horizon, fc.backtest
    for note in (*bt.notes, *(fc.density.notes if fc.density else ())):
        log.warning("%s: %s", horizon, note)
    log.info("%s: serving %s", horizon, fc.interval_label)
    outcome: dict[str, Any] = summary(fc, bundle)
    report = None
    with stages("report"):  # the track record's section and chart are part of the report
        track = _track_horizon(config, fc, bundle, ledger, now=now)
        outcome |= {"changed": track["change"], "live": track["metrics"]}
        try:
            report = write_report(fc, bundle, config.data_dir / "reports", now=now, extra=track["section"])
            outcome["report"] = str(report.markdown)
        except OSError as exc:
            log.error(
                "Report for %s could not be written (%s): forecast printed, not saved", horizon, exc.strerror or exc
            )
    with stages("tracking"):
        shown = {**seconds, **stages.seconds}
        run_id, tracking_error = _log_horizon(
            config, fc, bundle, report, track, now=now, environ=environ, seconds=shown, skip=skip
        )
    outcome |= {"run_id": run_id, "tracked": run_id is not None, "tracking_error": tracking_error}
    store = tracking_store(config, environ)
    outcome["tracking_server"] = redact_uri(store.uri) if store.server else None
    if ledger is not None:
        try:
            update_ledger(config, bundle.usdclp, [track["entry"] | {"run_id": run_id}])
        except Exception as exc:  # noqa: BLE001 -- the ledger is never worth a failed forecast
            log.error("Forecast ledger: %s not recorded (%s)", horizon, one_line(exc))
    _write_run_status(config, horizon, outcome, now=now)
    return outcome


def make_forecasts(
    config: Config, client: httpx.Client | None, horizons: Sequence[str], *, now: datetime, stages: Stages
) -> tuple[Bundle, dict[str, Forecast]]:
    """Fetch once, build the features, backtest points and ranges, and forecast every horizon; raise NoForecast."""
    with stages("fetch"):
        usdclp, copper = fetch_both(config, client, now=now)
    if not usdclp.ok:
        raise NoForecast(f"no usable USD/CLP data: {usdclp.error}")
    with stages("features"):
        bundle = build_bundle(usdclp, copper)
    for reason in bundle.degraded_detail:
        log.warning("Degraded run: %s", reason)
    log.info("Backtesting %s (%d origins per horizon)", ", ".join(horizons), WINDOWS)
    try:
        with stages("backtest"):
            backtests = backtest_all(bundle.usdclp, bundle.copper, horizons)
    except ValueError as exc:  # too little history for an honest backtest: no forecast without one
        raise NoForecast(f"cannot forecast: {exc}") from exc
    log.info("Backtesting the ranges of %s (%d weekly origins)", ", ".join(horizons), DENSITY_ORIGINS)
    with stages("density_backtest"):
        densities = density_backtest_all(bundle.usdclp, bundle.copper, horizons)
    log.info("Forecasting %s", ", ".join(horizons))
    with stages("forecast"):
        forecasts = forecast_all(bundle.usdclp, bundle.copper, horizons, backtests=backtests, densities=densities)
    return bundle, forecasts


def _report_horizons(
    config: Config,
    bundle: Bundle,
    forecasts: Mapping[str, Forecast],
    ledger: pl.DataFrame | None,
    *,
    now: datetime,
    environ: Mapping[str, str],
    stages: Stages,
) -> list[dict[str, Any]]:
    """Report, track and record the status of each horizon in turn; return their summaries.

    After one horizon's tracking times out the others are not tracked: its write may still hold the MLflow lock.
    """
    summaries, shared, skip = [], dict(stages.seconds), None  # every horizon logs the shared stages, then its own
    for index, (horizon, fc) in enumerate(forecasts.items(), 1):
        log.info("[%d/%d] %s: report and tracking", index, len(forecasts), horizon)
        mine = Stages()
        outcome = _run_horizon(
            config, bundle, fc, ledger, now=now, environ=environ, seconds=shared, stages=mine, skip=skip
        )
        stages.merge(mine)
        summaries.append(outcome)
        if skip is None and (outcome["tracking_error"] or "").startswith("TimeoutError"):
            skip = f"skipped: MLflow tracking timed out for {horizon}"
    return summaries


def _email_run(
    environ: Mapping[str, str],
    bundle: Bundle,
    forecasts: Mapping[str, Forecast],
    summaries: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    preview: Path | None,
) -> None:
    """One email for the whole run (a digest for `run all`), with every horizon whose report was written."""
    written = [o for o in summaries if o.get("report")]
    if not written:
        return
    changed = {
        o["horizon"]: [Section("changed", "What changed since the last run", (format_change(o["changed"]),))]
        for o in written
        if o.get("changed") is not None
    }
    fcs, files = [forecasts[o["horizon"]] for o in written], [report_files(Path(o["report"])) for o in written]
    email_reports(environ, fcs, bundle, files, now=now, preview=preview, extra=changed)


def print_summaries(summaries: Sequence[Mapping[str, Any]], *, as_json: bool) -> None:
    """Print each horizon's summary, report and run id; with `as_json` one JSON object (keyed by horizon if several)."""
    if as_json:
        document = summaries[0] if len(summaries) == 1 else {s["horizon"]: s for s in summaries}
        print(json.dumps(document, indent=2, default=str))
        return
    for outcome in summaries:
        print(format_summary(outcome))
        server, why = outcome.get("tracking_server"), outcome.get("tracking_error")
        untracked = f"no (server {server}: {why})" if server else "no"
        tracked = f"yes, run {outcome['run_id']}" if outcome.get("run_id") else untracked
        print(f"  report: {outcome.get('report') or 'NOT WRITTEN'}; tracked: {tracked}")


def cmd_run(
    config: Config,
    client: httpx.Client | None,
    horizons: Sequence[str],
    *,
    now: datetime,
    environ: Mapping[str, str],
    skip_email: bool = False,
    as_json: bool = False,
    email_preview: Path | None = None,
) -> int:
    """Fetch once; per horizon backtest, forecast, report, track, record status; email one digest; print the summaries.

    0 done (degraded or not, tracked or not); 1 no usable USD/CLP, too little history for the
    backtest, or no report could be written.
    """
    _UNREACHABLE.clear()  # a tracking server that failed in an earlier run (same process) is asked again
    stages = Stages()
    with file_lock(config.data_dir / ".run.lock", timeout=config.lock_timeout, what="run lock"):
        try:
            bundle, forecasts = make_forecasts(config, client, horizons, now=now, stages=stages)
        except NoForecast as exc:
            return _fail_run(config, horizons, now, str(exc))
        with stages("score"):
            ledger = _run_ledger(config, bundle.usdclp)
        summaries = _report_horizons(config, bundle, forecasts, ledger, now=now, environ=environ, stages=stages)
        with stages("email"):
            if email_preview or not skip_email:
                _email_run(environ, bundle, forecasts, summaries, now=now, preview=email_preview)
    print_summaries(summaries, as_json=as_json)
    log.info("Stage times: %s", format_stages(stages.seconds))
    return max(0 if outcome.get("report") else 1 for outcome in summaries)


# -- Commands: the tracking store (init, ui, runs, compare, stats, backup) -------------


def cmd_init(config: Config, environ: Mapping[str, str]) -> int:
    """Create the MLflow database and the four experiments; running it again changes nothing."""
    store = tracking_store(config, environ)
    client = mlflow_client(store)
    _follow_data_dir(config, store)
    print(f"tracking URI: {redact_uri(store.uri)}")
    if store.db is not None and retire_default_experiment(client):
        print("deleted the empty `Default` experiment (its artifacts would go to the working directory)")
    for horizon in HORIZONS:
        name, about = EXPERIMENT_PREFIX + horizon, experiment_description(horizon)
        experiment_id, created = ensure_experiment(client, name, store.artifacts, about)
        location = client.get_experiment(experiment_id).artifact_location
        print(
            f"{'created' if created else 'exists '} {EXPERIMENT_PREFIX + horizon}"
            f" (id {experiment_id}, artifacts {location})"
        )
    for folder in ("warehouse", "reports", "mlflow/mlruns"):
        (config.data_dir / folder).mkdir(parents=True, exist_ok=True)
    print(f"data dir: {config.data_dir}")
    return 0


def ui_command(config: Config, uri: str, host: str, port: int) -> list[str]:
    """The `mlflow server` command line that serves the store's UI, artifacts read from the data dir (pure)."""
    artifacts = config.mlruns.as_uri()
    return [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--default-artifact-root", artifacts,
        "--artifacts-destination", artifacts, "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def cmd_ui(config: Config, environ: Mapping[str, str], *, host: str, port: int) -> int:
    """Start the MLflow UI on the data dir's store, print its URL, and serve until interrupted."""

    uri = tracking_store(config, environ).uri
    if not uri.startswith("sqlite:"):
        print(f"fxcu: MLFLOW_TRACKING_URI is a server ({redact_uri(uri)}): open its own UI", file=sys.stderr)
        return 1
    config.mlflow_dir.mkdir(parents=True, exist_ok=True)  # the server runs in the data dir
    shown = f"[{host}]" if ":" in host else host
    print(f"MLflow UI: http://{shown}:{port}/#/experiments  (store {uri}; Ctrl-C stops it)", flush=True)
    # the server's own log lines go to stderr, so stdout holds only the URL; in a process group of its own, so
    # that Ctrl-C, SIGTERM or SIGHUP (handled by `main`) stop it and every worker it started, nothing re-parented
    server = subprocess.Popen(
        ui_command(config, uri, host, port), cwd=config.data_dir, stdout=sys.stderr.fileno(), start_new_session=True
    )
    try:
        while True:  # timed waits: polars' SIGINT handler restarts a blocking waitpid, which would hide Ctrl-C
            with contextlib.suppress(subprocess.TimeoutExpired):
                return server.wait(1.0)
    finally:
        stop_group(server)


def stop_group(leader: subprocess.Popen[Any], grace: float = 8.0) -> None:
    """Stop a process group started with `start_new_session`: SIGTERM, then SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):  # the group is gone
            os.killpg(leader.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(wait)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, 0)  # a worker outlived its leader: SIGKILL the group
            continue
        return


def print_table(table: Any, environ: Mapping[str, str]) -> None:
    """Print a table: colour on a terminal unless NO_COLOR is set, never 100 columns wider."""

    tty = sys.stdout.isatty()
    width = min(shutil.get_terminal_size((100, 24)).columns, 100) if tty else 100
    print(render(table, color=tty and not environ.get("NO_COLOR"), width=width))


def show_rows(rows: Any, document: Any, table: Callable[[], Any], environ: Mapping[str, str], as_json: bool) -> int:
    """Print the dashboard's `document` as JSON, else its Rich `table`, or say there are no runs yet; return 0."""
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        print_table(table(), environ) if rows else print("no runs yet: `fxcu run 7d` makes one")
    return 0


def cmd_runs(config: Config, environ: Mapping[str, str], horizons: Sequence[str], last: int, as_json: bool) -> int:
    """Print the recent runs of the horizons, newest first: forecast, range, change, served models, status."""
    runs = read_runs(config, environ, horizons, last + 1)  # one more per horizon: the change of the oldest shown
    rows = runs_rows(runs, last)
    return show_rows(rows, rows, lambda: runs_table(rows), environ, as_json)


def cmd_compare(config: Config, environ: Mapping[str, str], metric: str, as_json: bool) -> int:
    """Print each horizon's models on `metric` (latest run): its unit, which way is better, the best marked."""
    store = tracking_store(config, environ)
    runs = read_runs_sqlite(store.db, HORIZONS, None) if store.db else read_compare_mlflow(store, metric)
    rows = compare_rows(runs, metric)
    label, unit, better = METRIC_INFO[metric]
    document = {"metric": metric, "label": label, "unit": unit, "better": better, "horizons": rows}
    return show_rows(rows, document, lambda: compare_table(rows, metric), environ, as_json)


def cmd_stats(config: Config, environ: Mapping[str, str], *, now: datetime, as_json: bool) -> int:
    """Runs per experiment, share finished, last run's age in words, database and artifact sizes."""
    rows = stats_rows(read_runs(config, environ, list(HORIZONS), None), now=now)
    store = tracking_store(config, environ)
    sizes: dict[str, Any]
    if store.server:  # its database and artifacts are on the server, which knows their sizes
        sizes = {"database_bytes": None, "artifacts_bytes": None, "server": redact_uri(store.uri)}
    else:
        db = store.db
        sizes = {
            "database_bytes": db.stat().st_size if db and db.exists() else 0,
            "artifacts_bytes": dir_size(config.mlruns),
        }
    if as_json:
        print(json.dumps({"experiments": rows, **sizes}, indent=2))
    else:
        print_table(stats_table(rows, sizes), environ)
    return 0


def cmd_backup(config: Config, dest: Path, *, now: datetime, environ: Mapping[str, str] | None = None) -> int:
    """Write one dated archive: a consistent copy of the MLflow database (SQLite online backup) and the artifacts.

    A tracking server's database and artifacts are backed up where it runs: exit 2, nothing written.
    """
    store = tracking_store(config, environ or {})
    if store.server:
        where = redact_uri(store.uri)
        print(
            f"fxcu: the tracking store is a server ({where}): back up its database where it runs (pg_dump)",
            file=sys.stderr,
        )
        return 2
    db = config.mlflow_db
    if not db.exists():
        print(f"fxcu: no MLflow database at {db}", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"fxcu_mlflow_{now:%Y%m%d_%H%M%S}.tar.gz"
    with tempfile_dir(config.data_dir) as tmp:
        copy = tmp / "mlflow.db"
        with (
            read_only(db) as source,
            contextlib.closing(sqlite3.connect(copy)) as target,
        ):
            source.backup(target)  # SQLite's online backup is consistent while a run writes
            tables = {row[0] for row in target.execute("select name from sqlite_master where type = 'table'")}
        if not {"alembic_version", "experiments", "runs"} <= tables:  # an empty copy is no backup
            why = "no experiments or runs table"
            print(f"fxcu: {db} is not an MLflow database ({why}): no backup written", file=sys.stderr)
            return 1
        with atomic_path(archive) as partial, tarfile.open(partial, "w:gz") as tar:
            tar.add(copy, arcname="mlflow/mlflow.db")
            mlruns = config.mlruns
            if mlruns.exists():
                tar.add(mlruns, arcname="mlflow/mlruns")
    print(f"backup written: {archive} ({archive.stat().st_size / 1e6:.2f} MB)")
    return 0


# -- Commands: track and check ---------------------------------------------------------


def cmd_track(
    config: Config,
    environ: Mapping[str, str],
    horizons: Sequence[str],
    *,
    now: datetime,
    last: int | None,
    as_json: bool,
    backfill: date | None,
) -> int:
    """Score the ledger against the warehouse and print the track record per horizon (imports no mlflow).

    With `backfill`, first reconstruct what fxcu would have served at each weekly origin since then, at
    these horizons (rows marked reconstructed; origins already reconstructed are skipped, so it resumes).
    """

    prices = read_cache(config.warehouse / USDCLP_CACHE, now=now)
    if not prices.ok:
        print(f"fxcu: no USD/CLP history in {config.warehouse} (run `fxcu fetch` first)", file=sys.stderr)
        return 1
    ledger = update_ledger(config, prices.frame)
    if backfill is not None:
        copper = read_cache(config.warehouse / COPPER_CACHE, now=now)
        made = ledger.filter((pl.col("kind") == "reconstructed") & pl.col("horizon").is_in(list(horizons)))
        done = {o for o, n in made.group_by("origin").len().iter_rows() if n == len(horizons)}
        origins = [d for d in weekly_origins(prices.frame[DATE].to_list(), backfill) if d not in done]
        log.info(
            "Backfill: %d weekly origins since %s to reconstruct (%d already done)", len(origins), backfill, len(done)
        )
        for index, origin in enumerate(origins, 1):
            rows = list(reconstruct(prices.frame, copper.frame if copper.ok else None, [origin], horizons, now=now))
            ledger = update_ledger(config, prices.frame, rows)  # one write per origin: an interrupted backfill resumes
            log.info("Backfill: [%d/%d] origin %s", index, len(origins), origin)
    record = track_record(ledger, horizons, last=last)
    print(json.dumps(record, indent=2, default=str) if as_json else format_track(record))
    return 0


def cmd_odds(
    config: Config, horizon: str, levels: Sequence[float], quantiles: Sequence[float], *, as_json: bool
) -> int:
    """Print the odds of each level and the quantiles from the horizon's last served forecast in the ledger.

    Runs no model and imports neither mlflow nor statsforecast. 0 done, 1 unreadable ledger, 2 no served forecast.
    """
    try:
        odds = served_odds_table(read_ledger(ledger_path(config)), horizon, levels, quantiles or QUANTILES)
    except NoServedForecast as exc:
        print(f"fxcu: {exc.args[0]}", file=sys.stderr)
        return 2
    except LedgerError as exc:
        print(f"fxcu: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(odds, indent=2) if as_json else format_odds(odds))
    return 0


def gather_checks(
    config: Config, environ: Mapping[str, str], *, now: datetime, network: bool, limits: Thresholds
) -> tuple[list[Check], list[Perf]]:
    """Read the facts and grade them; with `network`, probe each source too. Returns the checks and the perfdata."""
    facts = read_check_facts(config, environ)
    checks = check_findings(facts, now=now, limits=limits)
    if network:
        checks += probe_sources(config)
    return checks, check_perf(facts, now=now, limits=limits)


def cmd_check(
    config: Config,
    environ: Mapping[str, str],
    *,
    now: datetime,
    network: bool,
    as_json: bool,
    limits: Thresholds | None = None,
) -> int:
    """Health probe in the Nagios plugin format; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the probe itself failed).

    Imports neither mlflow nor statsforecast (scipy.stats only to grade a ledger), so monitoring can call it often.
    """
    try:
        limits = limits or Thresholds.from_env(environ, config)
        checks, perf = gather_checks(config, environ, now=now, network=network, limits=limits)
    except ConfigError as exc:
        print(f"UNKNOWN - {exc}")
        return UNKNOWN
    except Exception as exc:  # noqa: BLE001 -- a broken probe says UNKNOWN, not a traceback read as CRITICAL
        print(f"UNKNOWN - check failed ({one_line(exc, config.fred_api_key, limit=240)})")
        return UNKNOWN
    print(format_check_json(checks, perf) if as_json else format_check(checks, perf))
    return LEVEL_CODE[overall(checks)]


# -- CLI -------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (monitoring and cron mail read the first line)."""

    def error(self, message: str) -> NoReturn:
        # a monitoring plugin given bad arguments exits UNKNOWN (3), not 2, which Nagios reads as CRITICAL
        code = UNKNOWN if self.prog.endswith(" check") else 2
        self.exit(code, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """An argparse type: a whole number of at least 1 (`int`), or a number above zero and below 1e12 (`float`)."""
    whole = kind is int
    noun, bound, rule = ("a whole number", math.inf, "at least 1") if whole else ("a number", 1e12, "a positive number")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not 0 < value < bound:
            raise argparse.ArgumentTypeError(f"{text!r} must be {rule}")
        return value

    return parse


positive_int, positive_float = positive(int), positive(float)


def iso_date(text: str) -> date:
    """argparse type: a YYYY-MM-DD date."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def run_horizons(text: str) -> list[str]:
    """argparse type: '7d' -> ['7d'], 'all' -> all four horizons."""
    if text.strip().lower() == "all":
        return list(HORIZONS)
    try:
        parse_horizon(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return [text.strip().lower()]


def one_horizon(text: str) -> str:
    """argparse type: '30d' -> '30d' (one of HORIZONS)."""
    try:
        parse_horizon(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip().lower()


def probability(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        return check_probability(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability strictly between 0 and 1") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per command function."""
    parser = OneLineParser(prog="fxcu", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fxcu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    def offline(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--offline", action="store_true", help="use only the warehouse (also FXCU_OFFLINE=1)")
        return p

    def as_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="print one JSON document")
        return p

    offline(sub.add_parser("fetch", help="refresh the warehouse from the live sources"))
    offline(sub.add_parser("validate", help="load data, compute copper features, check their ranges"))
    run = as_json(offline(sub.add_parser("run", help="forecast: fetch, backtest, forecast, report, track")))
    run.add_argument(
        "horizon", type=run_horizons, metavar="{7d,15d,30d,90d,all}", help="calendar days ahead, or all four"
    )
    run.add_argument("--skip-email", action="store_true", help="do not email the report even if SMTP is configured")
    run.add_argument("--email-preview", type=Path, metavar="PATH", help="write the email to a .eml file; send nothing")
    check = as_json(sub.add_parser("check", help="Nagios-style health probe: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"))
    check.add_argument("--network", action="store_true", help="also probe each source with a short timeout")
    limits = check.add_argument_group("thresholds (else FXCU_CHECK_<FLAG NAME>, e.g. FXCU_CHECK_DATA_WARN_DAYS)")
    for flags, name, unit, words in (
        (("-w", "--data-warn-days"), "data_warn_days", "days", "WARNING when USD/CLP or copper data is older"),
        (("-c", "--data-critical-days"), "data_critical_days", "days", "CRITICAL when USD/CLP data is older"),
        (("--run-warn-hours",), "run_warn_hours", "hours", "WARNING when a horizon's last run is older"),
        (("--db-warn-mb",), "db_warn_mb", "MB", "WARNING when the MLflow database is larger"),
        (("--disk-warn-gb",), "disk_warn_gb", "GB", "WARNING below this free disk"),
        (("--disk-critical-gb",), "disk_critical_gb", "GB", "CRITICAL below this free disk"),
        (("--server-warn-seconds",), "server_warn_seconds", "s", "WARNING when a tracking server's search is slower"),
    ):
        default = next(f.default for f in dataclasses.fields(Thresholds) if f.name == name)
        derived = {"data_warn_days": "FXCU_MAX_AGE_DAYS, else ", "data_critical_days": "max(30, 2 x that): "}
        help_text = f"{words} (default {derived.get(name, '')}{default:g} {unit})"
        limits.add_argument(*flags, dest=name, type=positive_float, metavar=unit.upper(), help=help_text)
    sub.add_parser("init", help="create the MLflow database and experiments (idempotent)")
    runs = as_json(sub.add_parser("runs", help="recent MLflow runs as a table"))
    runs.add_argument("horizon", nargs="?", type=run_horizons, metavar="{7d,15d,30d,90d,all}")
    runs.add_argument("--last", type=positive_int, default=10, help="runs per horizon (default 10)")
    compare = as_json(sub.add_parser("compare", help="horizons and models side by side on one metric"))
    compare.add_argument("--metric", default="rmse", choices=SHORT_METRICS)
    as_json(sub.add_parser("stats", help="runs per experiment, success rate, sizes"))
    ui = sub.add_parser("ui", help="start the MLflow UI on the data dir's store and print its URL")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=positive_int, default=5000, help="port (default 5000)")
    track = as_json(sub.add_parser("track", help="live track record: served forecasts scored against what happened"))
    track.add_argument("horizon", nargs="?", type=run_horizons, metavar="{7d,15d,30d,90d,all}")
    track.add_argument("--last", type=positive_int, default=None, help="only the latest N scored forecasts per horizon")
    track.add_argument(
        "--backfill",
        type=iso_date,
        metavar="START",
        default=None,
        help="first reconstruct weekly origins since START (YYYY-MM-DD)",
    )
    odds = as_json(sub.add_parser("odds", help="odds of ending above/below levels, from the last served forecast"))
    odds.add_argument("horizon", type=one_horizon, metavar="{7d,15d,30d,90d}", help="the served forecast's horizon")
    odds.add_argument("levels", nargs="*", type=positive_float, metavar="LEVEL", help="CLP per USD, e.g. 950")
    odds.add_argument(
        "-q",
        "--quantile",
        dest="quantiles",
        action="append",
        type=probability,
        metavar="Q",
        help="a quantile to print, 0 < Q < 1 (repeatable; default 1, 5, 10, 25, 50, 75, 90, 95, 99%%)",
    )
    backup = sub.add_parser("backup", help="consistent archive of the MLflow database and artifacts")
    backup.add_argument(
        "dest", nargs="?", type=Path, default=None, help="folder for the archive (default DATA/backups)"
    )
    return parser


class Terminated(BaseException):  # like KeyboardInterrupt: not an Exception, so no `except Exception` swallows it
    """SIGTERM or SIGHUP, raised in the main thread so that every `finally` (temp files, locks, servers) runs."""


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:

    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread only
        yield
        return

    def handler(signum: int, frame: Any) -> NoReturn:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def dispatch(args: argparse.Namespace, config: Config, environ: Mapping[str, str], now: datetime) -> int:
    """Call the command function for the parsed arguments."""
    if args.command == "check":
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Thresholds)}
        try:
            limits = Thresholds.from_env(environ, config, **flags)
        except ConfigError as exc:
            print(f"UNKNOWN - {exc}")
            return UNKNOWN
        return cmd_check(config, environ, now=now, network=args.network, as_json=args.json, limits=limits)
    if args.command == "track":
        horizons = args.horizon or list(HORIZONS)
        return cmd_track(config, environ, horizons, now=now, last=args.last, as_json=args.json, backfill=args.backfill)
    if args.command == "odds":
        return cmd_odds(config, args.horizon, args.levels, args.quantiles or (), as_json=args.json)
    if args.command in {"fetch", "validate", "run"}:
        with _client_scope(config, None) as client:  # none offline
            if args.command == "fetch":
                return cmd_fetch(config, client, now=now)
            if args.command == "validate":
                return cmd_validate(config, client, now=now)
            return cmd_run(
                config,
                client,
                args.horizon,
                now=now,
                environ=environ,
                skip_email=args.skip_email,
                as_json=args.json,
                email_preview=args.email_preview,
            )
    if args.command == "ui":  # a long-running server, so not bounded like the commands below
        return cmd_ui(config, environ, host=args.host, port=args.port)
    commands = {
        "init": lambda: cmd_init(config, environ),
        "runs": lambda: cmd_runs(config, environ, args.horizon or list(HORIZONS), args.last, args.json),
        "compare": lambda: cmd_compare(config, environ, args.metric, args.json),
        "stats": lambda: cmd_stats(config, environ, now=now, as_json=args.json),
        "backup": lambda: cmd_backup(config, args.dest or config.data_dir / "backups", now=now, environ=environ),
    }
    try:
        # bounded like tracking: MLflow retries an unreachable server or a locked database for minutes
        return _bounded(max(config.tracking_timeout, 60.0), f"fxcu {args.command}", commands[args.command])
    except (TimeoutError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 -- MlflowException, sqlite3, SQLAlchemy errors: one line, no traceback
        print(f"fxcu: {args.command} failed ({one_line(exc, config.fred_api_key)})", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Parse arguments, build the config and client, dispatch, and return the exit code."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    try:
        config = Config.from_env(environ)
    except ConfigError as exc:
        print(f"fxcu: {exc}", file=sys.stderr)
        return UNKNOWN if args.command == "check" else 2
    if getattr(args, "offline", False):
        config = dataclasses.replace(config, offline=True)
    try:
        not_a_dir = config.data_dir.exists() and not config.data_dir.is_dir()
    except OSError as exc:  # a component over 255 bytes (ENAMETOOLONG), a loop below the resolved path
        print(f"fxcu: FXCU_DATA_DIR {config.data_dir} is unusable ({exc.strerror or exc})", file=sys.stderr)
        return UNKNOWN if args.command == "check" else 2
    if not_a_dir:
        print(f"fxcu: FXCU_DATA_DIR {config.data_dir} is not a directory", file=sys.stderr)
        return UNKNOWN if args.command == "check" else 2
    now = datetime.now(UTC)
    if args.command != "check":  # the monitoring probe only reads
        clean_leftovers(config.data_dir)
    try:
        with _sigterm_as_exception():
            return dispatch(args, config, environ, now)
    except KeyboardInterrupt:
        print("fxcu: interrupted (Ctrl-C): stopped, temp files removed, nothing half-written kept", file=sys.stderr)
        return 130
    except Terminated as exc:
        sig = signal.Signals(exc.args[0] if exc.args else signal.SIGTERM)
        print(f"fxcu: terminated ({sig.name}): stopped, temp files removed, nothing half-written kept", file=sys.stderr)
        return 128 + sig.value
    except (TimeoutError, ValueError) as exc:
        print(f"fxcu: {redact(str(exc), config.fred_api_key)}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"fxcu: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def cli() -> NoReturn:
    """The `fxcu` console script and `python fxcu.py`: `main` with the process's arguments, its result the exit code."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
