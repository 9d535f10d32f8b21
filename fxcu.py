"""Forecast USD/CLP at 7, 15, 30 and 90 days, with copper as a signal and every run tracked in MLflow.

Usage:
    python fxcu.py fetch            # refresh the parquet warehouse from the live sources
    python fxcu.py validate         # load, compute copper features, check their ranges
    python fxcu.py run 7d           # fetch, forecast, backtest, report, track
    python fxcu.py check            # health probe for monitoring (0 OK, 1 WARNING, 2 CRITICAL)
    python fxcu.py runs             # recent MLflow runs (also: init, compare, stats, backup)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

if TYPE_CHECKING:  # INFO: heavy imports stay out of `--help` and `check` (polars ~0.2 s, httpx ~0.1 s)
    import httpx
    import numpy as np
    import polars as pl

__version__ = "0.1.0"

log = logging.getLogger("fxcu")
# INFO: httpx logs every request URL at INFO, query string (the FRED key) included.
logging.getLogger("httpx").setLevel(logging.WARNING)

# -- Constants & config ------------------------------------------------------------

DATE, CLOSE, SOURCE, FETCHED_AT = "date", "close", "source", "fetched_at"
USDCLP_SYMBOL, COPPER_SYMBOL, FRED_COPPER_SERIES = "CLP=X", "HG=F", "PCOPPUSDM"
LB_PER_TONNE = 2204.62262
HORIZONS: dict[str, int] = {"7d": 7, "15d": 15, "30d": 30, "90d": 90}
# Priority order of every series: a lower rank wins when two sources disagree on a date.
SOURCE_RANK: dict[str, int] = {"yahoo": 0, "mindicador": 1, "fred": 2, "cache": 3}
USDCLP_CACHE, COPPER_CACHE = "usdclp.parquet", "copper_hgf_usd_lb.parquet"
# A browser-like User-Agent: Yahoo answers library User-Agents with 429s.
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
# A jump this far (in log terms, ~22%) from the local median that comes straight back is a bad print.
BAD_PRINT_LOG_JUMP = 0.2
# Overlap asked of an incremental fetch, so revised recent values replace cached ones.
OVERLAP_DAYS = 7
YAHOO_URL, FRED_URL, MINDICADOR_URL = "https://query1.finance.yahoo.com", "https://api.stlouisfed.org", "https://mindicador.cl"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything fxcu reads from the environment, with defaults."""

    data_dir: Path
    yahoo_url: str = YAHOO_URL
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

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Build the config from environment variables (FXCU_*, FRED_API_KEY)."""
        default_dir = Path(__file__).resolve().parent / "data"
        raw_dir = environ.get("FXCU_DATA_DIR") or default_dir
        try:
            data_dir = Path(raw_dir).expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # INFO: a symlink loop is a RuntimeError before Python 3.13
            reason = getattr(exc, "strerror", None) or "symlink loop"
            raise ConfigError(f"FXCU_DATA_DIR {raw_dir} is unusable ({reason})") from None
        return cls(
            data_dir=data_dir,
            yahoo_url=environ.get("FXCU_YAHOO_URL", YAHOO_URL).rstrip("/"),
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
        )


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
    if value > 1e6:  # INFO: `inf` or 1e20 would overflow a socket timeout or a timedelta later, as a traceback
        raise ConfigError(f"{name}={raw!r} is too large (at most 1000000)")
    return value


def parse_horizon(text: str) -> int:
    """Turn '7d', '15d', '30d' or '90d' into calendar days; raise ValueError otherwise."""
    key = text.strip().lower()
    if key not in HORIZONS:
        raise ValueError(f"unknown horizon {text!r}: choose one of {', '.join(HORIZONS)}")
    return HORIZONS[key]


# -- Values ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """One source's answer: a frame, or the reason there is none."""

    source: str
    frame: pl.DataFrame | None = None
    error: str | None = None
    notes: tuple[str, ...] = ()
    frequency: Literal["daily", "monthly"] = "daily"

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


# -- Core: parsing payloads --------------------------------------------------------


def _price_frame(days: pl.Series, closes: pl.Series) -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame({DATE: days.cast(pl.Date), CLOSE: closes.cast(pl.Float64)})


def parse_yahoo_chart(payload: Mapping[str, Any]) -> pl.DataFrame:
    """Parse a Yahoo v8 chart body into `date`, `close`, dated in the exchange's timezone.

    Null bars are kept as null closes (cleaning drops them and says how many).
    Raises PayloadError for `chart.error`, a missing result or a result without bars.
    """
    import polars as pl

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
    result = results[0]
    stamps = result.get("timestamp")
    if not stamps:
        raise PayloadError("empty result: no bars (no 'timestamp')")
    meta = result.get("meta") or {}
    tz = meta.get("exchangeTimezoneName") or "UTC"
    try:
        closes = result["indicators"]["quote"][0]["close"]
    except (KeyError, IndexError, TypeError):
        raise PayloadError("no indicators.quote[0].close") from None
    if len(closes) != len(stamps):
        raise PayloadError(f"{len(stamps)} timestamps but {len(closes)} closes")
    # INFO: Yahoo stamps bars in UTC; the trading day is the date in the exchange's timezone
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
    import polars as pl

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
    import polars as pl

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


# -- Core: cleaning and merging -------------------------------------------------------


def clean_prices(
    frame: pl.DataFrame, *, spike: float = BAD_PRINT_LOG_JUMP, frequency: Literal["daily", "monthly"] = "daily"
) -> Cleaned:
    """Return one sorted row per weekday with a positive close, isolated bad prints removed.

    Monthly series (FRED, dated the first of the month) keep their weekend dates.

    Rows must arrive in time order: of two bars with the same date the later one is kept
    (Yahoo's live bar duplicates the day before it). A bad print is a close more than `spike`
    (log) away from the median of its three neighbours on each side while those agree with each
    other, like the 5.0 among 664s in CLP=X on 2016-12-22; real moves that persist are kept.
    """
    import polars as pl

    removed: dict[str, list[date]] = {}

    def note(reason: str, rows: pl.DataFrame) -> None:
        removed[reason] = sorted(rows[DATE].to_list())

    bad = frame.filter(pl.col(CLOSE).is_null() | pl.col(CLOSE).is_nan() | (pl.col(CLOSE) <= 0))
    note("null or non-positive bars", bad)
    rest = frame.filter(pl.col(CLOSE).is_not_null() & pl.col(CLOSE).is_not_nan() & (pl.col(CLOSE) > 0))

    deduped = rest.with_row_index("_i").unique(subset=DATE, keep="last").sort(DATE)
    dups = rest.height - deduped.height
    removed["duplicated-date bars (kept the latest)"] = [] if not dups else sorted(
        rest.filter(pl.col(DATE).is_duplicated())[DATE].unique().to_list()
    )
    is_weekend = (pl.col(DATE).dt.weekday() >= 6) & pl.lit(frequency == "daily")
    note("weekend rows", deduped.filter(is_weekend))
    days = deduped.filter(~is_weekend).drop("_i")

    # INFO: removing a print can expose another (two bad prints side by side): repeat to a fixed
    # point, so cleaning a clean frame changes nothing. Each pass removes a row, so this ends.
    spikes = []
    while True:
        flagged = days.with_columns(is_spike=spike_mask(CLOSE, spike))
        found = flagged.filter("is_spike")
        if found.is_empty():
            break
        spikes += found[DATE].to_list()
        days = flagged.filter(~pl.col("is_spike")).drop("is_spike")
    removed["bad prints"] = sorted(spikes)
    return Cleaned(days, {k: v for k, v in removed.items() if v})


def spike_mask(col: str | pl.Expr, threshold: float) -> pl.Expr:
    """True where a price is an isolated spike: far from both neighbour medians, which agree.

    Uses the three rows before and the three after (as many as exist); the first and last rows
    are never flagged (nothing confirms them yet).
    """
    import polars as pl

    if threshold <= 0:
        raise ValueError("threshold must be positive")
    x = (pl.col(col) if isinstance(col, str) else col).log()
    # three on each side, so two bad prints in a row do not vouch for each other
    before = pl.concat_list(x.shift(1), x.shift(2), x.shift(3)).list.median()
    after = pl.concat_list(x.shift(-1), x.shift(-2), x.shift(-3)).list.median()
    return (
        ((x - before).abs() > threshold)
        & ((x - after).abs() > threshold)
        & ((before - after).abs() < threshold / 2)
    ).fill_null(False)


def merge_prices(cached: pl.DataFrame | None, fresh: pl.DataFrame) -> pl.DataFrame:
    """Merge a fetch into the cached history: dates added, revised values replaced, none lost.

    On a date both hold, the row from the higher-priority source wins (SOURCE_RANK), and
    between equals the fresh one: a fallback source never overwrites the primary's history.
    """
    import polars as pl

    if cached is None or cached.is_empty():
        return fresh.sort(DATE)
    both = pl.concat([cached.with_columns(_fresh=pl.lit(0)), fresh.with_columns(_fresh=pl.lit(1))], how="vertical_relaxed")
    rank = pl.col(SOURCE).replace_strict(SOURCE_RANK, default=len(SOURCE_RANK), return_dtype=pl.Int32)
    return (
        both.sort([DATE, rank, "_fresh"], descending=[False, True, False])
        .unique(subset=DATE, keep="last", maintain_order=True)
        .drop("_fresh")
        .sort(DATE)
    )


def with_provenance(frame: pl.DataFrame, source: str, fetched_at: datetime) -> pl.DataFrame:
    """Add the `source` and `fetched_at` columns every stored row carries."""
    import polars as pl

    return frame.select(DATE, CLOSE).with_columns(
        pl.lit(source).alias(SOURCE),
        pl.lit(fetched_at).cast(pl.Datetime("us", "UTC")).alias(FETCHED_AT),
    )


# -- Core: choosing a source -------------------------------------------------------


def problems(frame: pl.DataFrame | None, *, now: datetime, max_age: timedelta | None) -> list[str]:
    """List what is wrong with a price frame; an empty list means it is good."""
    if frame is None or frame.is_empty():
        return ["no rows"]
    found = []
    if frame[CLOSE].null_count() or (frame[CLOSE] <= 0).any():
        found.append("null or non-positive closes")
    last = frame[DATE].max()
    if max_age is not None and now.date() - last > max_age:
        found.append(f"stale: last date {last} is {(now.date() - last).days} days old")
    return found


def first_good(
    results: Sequence[Result], *, now: datetime, max_age: Mapping[str, timedelta | None] | timedelta | None = None
) -> Result:
    """Return the first result with a frame that passes every check, else a failed result with every reason.

    `max_age` is one limit for all sources or a limit per source name (missing names: no limit).
    """
    reasons = []
    for result in results:
        limit = max_age.get(result.source) if isinstance(max_age, Mapping) else max_age
        if result.frequency == "monthly" and limit is not None:
            limit = max(limit, timedelta(days=75))  # INFO: a monthly series lags by up to two months
        if result.error is not None:
            reasons.append(f"{result.source}: {result.error}")
            continue
        found = problems(result.frame, now=now, max_age=limit)
        if not found:
            return result
        reasons.append(f"{result.source}: {'; '.join(found)}")
    return Result("none", error="; ".join(reasons) or "no sources")


# -- Core: copper features -----------------------------------------------------------

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
    import polars as pl

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
    import polars as pl

    if fast >= slow:
        raise ValueError("fast window must be shorter than slow")
    gap = sma(col, fast) - sma(col, slow)
    # INFO: rolling sums drift by a few ulps; a gap below 1e-9 of the price counts as equal
    flat = gap.abs() <= 1e-9 * sma(col, slow).abs()
    return pl.when(flat).then(0).otherwise(gap.sign()).fill_null(0).cast(pl.Int8).alias("copper_trend_signal")


def rsi(col: str | pl.Expr, n: int = 14) -> pl.Expr:
    """Wilder's RSI: averages seeded with the simple mean of the first `n` changes, then Wilder-smoothed.

    The first `n` rows are null. 100 when there were no losses, 50 when nothing moved.
    """
    import polars as pl

    _check_window(n)
    change = _expr(col).diff()
    row = pl.int_range(pl.len())

    def wilder(moves: pl.Expr) -> pl.Expr:
        # INFO: seed row n with the simple mean, then y_t = y_{t-1} + (x_t - y_{t-1}) / n (alpha = 1/n, no adjust)
        seeded = pl.when(row == n).then(moves.rolling_mean(n, min_samples=n)).when(row > n).then(moves)
        return seeded.ewm_mean(alpha=1 / n, adjust=False, ignore_nulls=True)

    gain = wilder(change.clip(lower_bound=0))
    loss = wilder((-change).clip(lower_bound=0))
    value = (
        pl.when((gain == 0) & (loss == 0)).then(50.0).when(loss == 0).then(100.0).otherwise(100 - 100 / (1 + gain / loss))
    )
    return pl.when(row >= n).then(value).alias(f"copper_rsi_{n}")


def zscore(col: str | pl.Expr, n: int = 252) -> pl.Expr:
    """Z-score of the price against its own trailing `n`-row mean and std (0 when the std is 0); first `n-1` rows null."""
    import polars as pl

    _check_window(n)
    x = _expr(col)
    mean, std = x.rolling_mean(n, min_samples=n), x.rolling_std(n, min_samples=n)
    return pl.when(std == 0).then(0.0).otherwise((x - mean) / std).alias("copper_price_normalized")


def rolling_correlation(a: str | pl.Expr, b: str | pl.Expr, n: int = 90) -> pl.Expr:
    """Correlation of the daily log returns of two prices over the last `n` returns; the first `n` rows are null."""
    import polars as pl

    _check_window(n)
    ra, rb = (_expr(a) / _expr(a).shift(1)).log(), (_expr(b) / _expr(b).shift(1)).log()
    return pl.rolling_corr(ra, rb, window_size=n, min_samples=n).alias("copper_usdclp_correlation_90d")


def feature_exprs(price: str, usdclp: str | None) -> Iterator[pl.Expr]:
    """The 11 copper features as expressions over one frame with a copper price column (and USD/CLP)."""
    import polars as pl

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


def align_copper(usdclp: pl.DataFrame, copper: pl.DataFrame, *, max_gap: timedelta | None = None) -> pl.DataFrame:
    """Put on each USD/CLP date the last copper close from a strictly earlier New York date.

    A CLP=X bar dated D (London) is the quote at London midnight starting D, about 19:00 New
    York on D-1, after COMEX settled D-1 but before it trades D; so copper of NY date D-1 is the
    latest known, and copper dated D would be the future. With `max_gap`, a copper close older
    than that is null rather than carried. Returns `date`, `usdclp`, `copper`.
    """
    import polars as pl

    left = usdclp.select(pl.col(DATE), pl.col(CLOSE).alias("usdclp")).sort(DATE)
    right = copper.select(pl.col(DATE).alias("copper_date"), pl.col(CLOSE).alias("copper")).sort("copper_date")
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
    import polars as pl

    monthly = copper_frequency(copper) == "monthly"
    own = copper.select(DATE, CLOSE).sort(DATE)
    if monthly:
        own = own.select(DATE, *(pl.lit(None, pl.Int8 if f == "copper_trend_signal" else pl.Float64).alias(f) for f in FEATURES))
    else:
        own = own.with_columns(feature_exprs(CLOSE, None)).drop(CLOSE)
    if usdclp is None:
        return own.select(DATE, *FEATURES)
    aligned = align_copper(usdclp, copper, max_gap=COPPER_MAX_GAP)
    corr = aligned.select(DATE, rolling_correlation("copper", "usdclp", 90))
    if monthly:
        corr = corr.with_columns(pl.lit(None, pl.Float64).alias(FEATURES[-1]))
    right = own.drop(FEATURES[-1]).rename({DATE: "copper_date"})
    joined = usdclp.select(DATE).sort(DATE).join_asof(
        right, left_on=DATE, right_on="copper_date", strategy="backward", allow_exact_matches=False, tolerance=COPPER_MAX_GAP
    )
    return joined.drop("copper_date").join(corr, on=DATE, how="left").select(DATE, *FEATURES)


@dataclass(frozen=True, slots=True)
class Bundle:
    """What a run forecasts from (the original guide's DataBundle): prices, copper features, sources, notes."""

    usdclp: pl.DataFrame
    copper: pl.DataFrame | None
    copper_features: pl.DataFrame | None
    sources: dict[str, str]
    notes: tuple[str, ...] = ()

    @property
    def copper_frequency(self) -> Literal["daily", "monthly"] | None:
        """'daily' or 'monthly' (FRED), read off the copper dates; None without copper."""
        return None if self.copper is None else copper_frequency(self.copper)

    @property
    def degraded(self) -> tuple[str, ...]:
        """Reasons this run is weaker than a full one (no, monthly or stale copper, cached data, removed prints)."""
        reasons = []
        if self.copper is None:
            reasons.append("no copper")
        elif self.copper_frequency == "monthly":
            reasons.append("monthly copper")
        elif copper_is_stale(self.usdclp, self.copper):
            reasons.append("stale copper")
        if "cache" in self.sources.values():
            reasons.append("cached data")
        if any("bad prints" in n for n in self.notes):
            reasons.append("removed bad prints")
        return tuple(reasons)


def build_bundle(usdclp: Series, copper: Series) -> Bundle:
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
    )


def feature_problems(features: pl.DataFrame, usdclp: pl.DataFrame, copper: pl.DataFrame | None, *, now: datetime, max_age: timedelta) -> list[str]:
    """Check every feature against its range and the prices against their units; empty means all good."""
    import polars as pl

    found = []
    checks = {
        "copper_rsi_14": pl.col("copper_rsi_14").is_between(0, 100),
        "copper_volatility_20d": pl.col("copper_volatility_20d") >= 0,
        "copper_volatility_60d": pl.col("copper_volatility_60d") >= 0,
        "copper_usdclp_correlation_90d": pl.col("copper_usdclp_correlation_90d").is_between(-1 - 1e-9, 1 + 1e-9),
        "copper_trend_signal": pl.col("copper_trend_signal").is_in([-1, 0, 1]),
        "copper_sma_20": pl.col("copper_sma_20").is_between(0.3, 20),
        "copper_sma_50": pl.col("copper_sma_50").is_between(0.3, 20),
    }
    for name, ok in checks.items():
        bad = features.filter(~ok.fill_null(True)).height
        if bad:
            found.append(f"{name}: {bad} values out of range")
    # INFO: plausibility by unit: USD/CLP has traded 370-1060 since 1990; COMEX copper 0.6-6 USD/lb since 2000.
    if not usdclp[CLOSE].is_between(300, 2000).all():
        found.append("usdclp: closes outside 300..2000 CLP per USD")
    if copper is not None and not copper[CLOSE].is_between(0.3, 20).all():
        found.append("copper: closes outside 0.3..20 USD/lb")
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


def model_frames(usdclp: pl.DataFrame, copper: pl.DataFrame | None, steps: int, history: int = HISTORY) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame]:
    """Build statsforecast inputs on log prices with an integer trading-day index `ds`.

    Returns the univariate frame (the last `history` trading days), the frame with `copper_lag`
    (log copper as known `steps` trading days earlier, so every value in a forecast window up to
    `steps` is known at its origin), or None without daily copper, and the index-to-date map.
    `ds` counts USD/CLP rows, so both frames share it and end on the same row.
    """
    import polars as pl

    base = usdclp.select(DATE, CLOSE).sort(DATE).with_row_index("ds").with_columns(pl.col("ds").cast(pl.Int64))
    tail = base.tail(history)
    uni = tail.select(pl.lit("usdclp").alias("unique_id"), "ds", pl.col(CLOSE).log().alias("y"))
    exog = None
    if copper is not None and copper_frequency(copper) == "daily":
        aligned = align_copper(base.select(DATE, CLOSE), copper)
        lagged = base.with_columns(aligned["copper"].log().shift(steps).alias("copper_lag")).tail(history)
        exog = lagged.drop_nulls("copper_lag").select(pl.lit("usdclp").alias("unique_id"), "ds", pl.col(CLOSE).log().alias("y"), "copper_lag")
    return uni, exog, tail.select("ds", DATE)


def _models(season_length: int = 1) -> list:
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, Naive

    return [Naive(), AutoETS(season_length=season_length), AutoARIMA(season_length=season_length), AutoTheta(season_length=season_length)]


def _copper_models() -> list:
    from statsforecast.models import ARIMA

    return [ARIMA(order=(0, 1, 0), season_length=1, alias=COPPER_MODEL)]


def _quiet_statsforecast() -> contextlib.AbstractContextManager:
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")  # INFO: statsforecast warns on every polars input about pandas conversions
    return stack


def cross_validate(frame: pl.DataFrame, models: list, steps: int, windows: int, step_size: int, *, refit: bool | int = False) -> pl.DataFrame:
    """statsforecast rolling-origin predictions (log scale) for every step of every window.

    With `refit=False` the models are fitted once on the data before the first origin and then
    only `forward`ed over each later origin's history: no origin sees data after it.
    """
    from statsforecast import StatsForecast

    with _quiet_statsforecast():
        sf = StatsForecast(models=models, freq=1, n_jobs=1)
        return sf.cross_validation(df=frame, h=steps, n_windows=windows, step_size=step_size, refit=refit, level=list(LEVELS))


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


def score(pred: np.ndarray, actual: np.ndarray, last: np.ndarray, bounds: Mapping[str, np.ndarray], naive_rmse: float | None) -> Score:
    """Accuracy of point forecasts and intervals against outcomes (all in price units)."""
    import numpy as np

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


def online_weights(sq_errors: np.ndarray, cutoffs: np.ndarray, steps: int, rule: str) -> np.ndarray:
    """Ensemble weights per origin (rows) and model (columns) using only errors realised before each origin.

    `inverse_mse`: weights proportional to 1/MSE over origins whose horizon date (cutoff + steps)
    is not after this origin; equal weights until one exists. `equal`: 1/k. `naive`: all on
    column 0 (Naive).
    """
    import numpy as np

    n, k = sq_errors.shape
    if rule == "naive":
        return np.tile(np.eye(k)[0], (n, 1))
    if rule == "equal":
        return np.full((n, k), 1 / k)
    if rule != "inverse_mse":
        raise ValueError(f"unknown ensemble rule {rule!r}")
    weights = np.full((n, k), 1 / k)
    for i in range(n):
        known = cutoffs + steps <= cutoffs[i]
        if known.any():
            inv = 1 / np.maximum(sq_errors[known].mean(axis=0), 1e-18)
            weights[i] = inv / inv.sum()
    return weights


def final_weights(sq_errors: np.ndarray, rule: str) -> np.ndarray:
    """Weights for a live forecast: the rule applied to every backtest error."""
    import numpy as np

    k = sq_errors.shape[1]
    if rule == "naive":
        return np.eye(k)[0]
    if rule == "equal":
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
    import numpy as np

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


def choose_ensemble(logs: np.ndarray, actual: np.ndarray, cutoffs: np.ndarray, steps: int) -> EnsembleChoice:
    """Combine the models (column 0 is Naive) with no look-ahead, and serve Naive if combining lost out of sample.

    At each origin the rule (RULES) and its weights come only from outcomes realised before it
    (`online_rule`, `online_weights`): that is the combination's honest score. If it is not
    better than Naive, fxcu serves Naive and says so. Live: the rule with the lowest MSE over
    every backtest origin, which is what the combination would choose next.
    """
    import numpy as np

    sq = (np.exp(logs) - actual[:, None]) ** 2
    per_rule = {rule: _combine(logs, online_weights(sq, cutoffs, steps, rule)) for rule in RULES}
    rule_sq = {rule: (np.exp(pred) - actual) ** 2 for rule, pred in per_rule.items()}
    picks = online_rule(rule_sq, cutoffs, steps)
    combination = np.array([per_rule[rule][i] for i, rule in enumerate(picks)])
    rmse = lambda pred: float(np.sqrt(np.mean((np.exp(pred) - actual) ** 2)))  # noqa: E731
    rule_rmse = {rule: rmse(pred) for rule, pred in per_rule.items()}
    if rmse(combination) < rmse(logs[:, 0]):
        live = min(RULES[::-1], key=rule_rmse.__getitem__)
        return EnsembleChoice(combination, combination, live, final_weights(sq, live), rule_rmse, ())
    ratio = rmse(combination) / rmse(logs[:, 0])
    note = f"combining models lost to Naive out of sample ({ratio:.4f}x its RMSE): serving Naive"
    return EnsembleChoice(logs[:, 0], combination, "naive", final_weights(sq, "naive"), rule_rmse, (note,))


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
    are cross-validated once and read at each horizon's step, and `run all` costs little more
    than `run 90d`. The copper model is cross-validated per horizon (its lag is the horizon).
    """
    import polars as pl

    steps_of = {h: horizon_steps(parse_horizon(h)) for h in horizons}
    span = horizon_steps(max(HORIZONS.values()))
    uni, _, dates = model_frames(usdclp, None, span, history)
    needed = span + (windows - 1) * step_size + 100
    if uni.height < needed:
        raise ValueError(f"{uni.height} trading days are too few for {windows} backtest origins (need {needed})")
    cv = cross_validate(uni, _models(), span, windows, step_size)
    last_origin = uni["ds"].max() - span
    results = {}
    for horizon, steps in steps_of.items():
        at_h = cv.filter(pl.col("ds") == pl.col("cutoff") + steps)
        names, notes = list(MODELS), []
        _, exog, _ = model_frames(usdclp, copper, steps, history)
        if exog is not None and copper_is_stale(usdclp, copper):
            notes.append(f"copper stale (last {copper[DATE].max()}): no copper model")
            exog = None
        if exog is not None:
            # INFO: cut the frame so this run's origins are the shared ones (last origin = last_origin)
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
    """Backtest Naive, AutoETS, AutoARIMA, AutoTheta (and Naive_copper, with lagged copper) and the ensemble at one horizon.

    Rolling origin (see `backtest_all` for the origins), expanding window, errors measured at the
    horizon date. The ensemble rule is the one of RULES with the lowest RMSE, so it is never
    worse than Naive on this backtest; its weights at each origin come only from outcomes known
    by then. The copper ablation repeats the ensemble without the copper model on the same origins.
    """
    return backtest_all(usdclp, copper, [horizon], windows, step_size=step_size, history=history)[horizon]


def _score_backtest(horizon: str, steps: int, at_h: pl.DataFrame, names: list[str], uni: pl.DataFrame, dates: pl.DataFrame, notes: list[str]) -> Backtest:
    import numpy as np
    import polars as pl

    cutoffs = at_h["cutoff"].to_numpy()
    last_log = uni.join(at_h.select(pl.col("cutoff").alias("ds")), on="ds", how="semi").sort("ds")["y"].to_numpy()
    actual, last = np.exp(at_h["y"].to_numpy()), np.exp(last_log)

    naive_rmse = float(np.sqrt(np.mean((np.exp(at_h["Naive"].to_numpy()) - actual) ** 2)))
    scores = {}
    for name in names:
        bounds = {f"{side}-{lv}": np.exp(at_h[f"{name}-{side}-{lv}"].to_numpy()) for lv in LEVELS for side in ("lo", "hi")}
        scores[name] = score(np.exp(at_h[name].to_numpy()), actual, last, bounds, naive_rmse)

    logs = np.column_stack([at_h[n].to_numpy() for n in names])
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
        without = choose_ensemble(logs[:, :-1], actual, cutoffs, steps)
        ablation = (scores[ENSEMBLE].rmse / float(np.sqrt(np.mean((np.exp(without.served) - actual) ** 2))) - 1) * 100
    if scores[ENSEMBLE].ratio > 1:
        notes.append(f"ensemble RMSE is {scores[ENSEMBLE].ratio:.4f}x Naive's on the backtest")
    date_of = dict(zip(dates["ds"].to_list(), dates[DATE].to_list(), strict=True))
    predictions = at_h.select("cutoff", "ds", "y", *names).with_columns(
        pl.col("cutoff").replace_strict(date_of, return_dtype=pl.Date).alias("origin"),
        pl.col("ds").replace_strict(date_of, return_dtype=pl.Date).alias("target"),
        pl.Series(COMBINATION, choice.combination),
        pl.Series(ENSEMBLE, choice.served),
    )
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


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast path for every model and the ensemble, with its backtest."""

    horizon: str
    origin: date
    last_close: float
    path: pl.DataFrame  # step, date, model, forecast, lo_80, hi_80, lo_95, hi_95 (CLP per USD)
    backtest: Backtest

    @property
    def ensemble(self) -> pl.DataFrame:
        import polars as pl

        return self.path.filter(pl.col("model") == ENSEMBLE).drop("model")

    @property
    def final(self) -> dict[str, Any]:
        """The ensemble's row at the horizon date."""
        return self.ensemble.tail(1).row(0, named=True)


def forecast_all(
    usdclp: pl.DataFrame,
    copper: pl.DataFrame | None = None,
    horizons: Sequence[str] = tuple(HORIZONS),
    *,
    backtests: Mapping[str, Backtest] | None = None,
    windows: int = WINDOWS,
    history: int = HISTORY,
) -> dict[str, Forecast]:
    """Forecast every horizon: the univariate models are fitted once (at the longest horizon), the copper model per horizon.

    Runs the backtests first unless given. Pure: no I/O, no clock.
    """
    import numpy as np
    import polars as pl
    from statsforecast import StatsForecast

    backtests = backtests or backtest_all(usdclp, copper, horizons, windows, history=history)
    days_of = {h: parse_horizon(h) for h in horizons}
    longest = max(horizon_steps(d) for d in days_of.values())
    uni, _, _ = model_frames(usdclp, None, longest, history)
    last_ds, last_day = uni["ds"].max(), usdclp[DATE].max()
    with _quiet_statsforecast():
        shared = StatsForecast(models=_models(), freq=1, n_jobs=1).forecast(df=uni, h=longest, level=list(LEVELS))
    known_copper = align_copper(usdclp.select(DATE, CLOSE).sort(DATE), copper)["copper"].log() if copper is not None else None
    results = {}
    for horizon, days in days_of.items():
        steps, bt = horizon_steps(days), backtests[horizon]
        fc = shared.filter(pl.col("ds") <= last_ds + steps)
        if bt.copper_used:
            _, exog, _ = model_frames(usdclp, copper, steps, history)
            # The regressor's future is known: copper lagged by `steps` days, all on or before today.
            future = known_copper.tail(steps).to_numpy()
            x_df = pl.DataFrame({"unique_id": ["usdclp"] * steps, "ds": np.arange(last_ds + 1, last_ds + 1 + steps), "copper_lag": future})
            with _quiet_statsforecast():
                fcx = StatsForecast(models=_copper_models(), freq=1, n_jobs=1).forecast(df=exog, h=steps, X_df=x_df, level=list(LEVELS))
            fc = fc.join(fcx, on=["unique_id", "ds"])
        path = _forecast_path(fc, bt.weights, trading_dates(last_day, days))
        results[horizon] = Forecast(horizon=horizon, origin=last_day, last_close=float(usdclp.sort(DATE)[CLOSE][-1]), path=path, backtest=bt)
    return results


def forecast(
    usdclp: pl.DataFrame,
    copper: pl.DataFrame | None = None,
    horizon: str = "7d",
    *,
    backtest_result: Backtest | None = None,
    windows: int = WINDOWS,
    history: int = HISTORY,
) -> Forecast:
    """Forecast USD/CLP `horizon` calendar days ahead: every model, and the ensemble its backtest chose.

    Runs the backtest first unless one is given. Pure: no I/O, no clock.
    """
    given = {horizon: backtest_result} if backtest_result else None
    return forecast_all(usdclp, copper, [horizon], backtests=given, windows=windows, history=history)[horizon]


def _forecast_path(fc: pl.DataFrame, weights: Mapping[str, float], dates: Sequence[date]) -> pl.DataFrame:
    import polars as pl

    cols = {"": "forecast", "-lo-80": "lo_80", "-hi-80": "hi_80", "-lo-95": "lo_95", "-hi-95": "hi_95"}
    fc = fc.sort("ds").head(len(dates))
    frames = [fc.select(pl.lit(name).alias("model"), *(pl.col(f"{name}{s}").exp().alias(c) for s, c in cols.items())) for name in weights]
    point = pl.sum_horizontal([pl.col(n) * w for n, w in weights.items()])
    # Naive's interval width around the ensemble's point, as in the backtest (`_score_backtest`).
    frames.append(
        fc.select(
            pl.lit(ENSEMBLE).alias("model"),
            *((point + pl.col(f"Naive{s}") - pl.col("Naive")).exp().alias(c) for s, c in cols.items()),
        )
    )
    steps = pl.DataFrame({"step": list(range(1, len(dates) + 1)), DATE: list(dates)})
    return pl.concat([pl.concat([steps, frame], how="horizontal") for frame in frames])


# -- Core: formatting -----------------------------------------------------------------


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
        "sources": dict(bundle.sources),
        "degraded": list(bundle.degraded),
    }


def format_summary(s: Mapping[str, Any]) -> str:
    """The few lines `run` prints per horizon."""
    lo80, hi80 = s["interval_80"]
    lo95, hi95 = s["interval_95"]
    copper = "off" if not s["copper_available"] else f"{s['sources']['copper']} ({s['copper_frequency']})"
    lines = [
        f"USD/CLP {s['horizon']}: last {s['last_close']:.2f} on {s['last_date']} -> {s['forecast']:.2f} on {s['target_date']}",
        f"  80% [{lo80:.2f}, {hi80:.2f}]  95% [{lo95:.2f}, {hi95:.2f}]",
        f"  backtest: RMSE {s['ensemble_rmse']:.2f} CLP, {s['ratio_to_naive']:.4f}x Naive ({s['ensemble_rule']}; "
        f"combining without look-ahead: {s['combination_ratio_to_naive']:.4f}x), "
        f"coverage {s['coverage_80']:.0%}/{s['coverage_95']:.0%}, {s['backtest_origins']} origins",
        f"  sources: usdclp {s['sources']['usdclp']}, copper {copper}",
    ]
    if s["degraded"]:
        lines.append(f"  degraded: {', '.join(s['degraded'])}")
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in cells)]


def format_report(fc: Forecast, bundle: Bundle, *, now: datetime, chart: str | None) -> str:
    """The Markdown report of one run: headline, chart, path, backtest against Naive, copper, degraded reasons."""
    s, bt = summary(fc, bundle), fc.backtest
    lines = [f"# USD/CLP forecast, {fc.horizon} ({now:%Y-%m-%d %H:%M} UTC)", "", "```", format_summary(s), "```", ""]
    if chart:
        lines += [f"![USD/CLP and forecast]({chart})", ""]
    lines += ["## Forecast path (ensemble, CLP per USD)", ""]
    lines += _table(
        ["step", "date", "forecast", "80% low", "80% high", "95% low", "95% high"],
        [[str(r["step"]), str(r[DATE]), f"{r['forecast']:.2f}", f"{r['lo_80']:.2f}", f"{r['hi_80']:.2f}", f"{r['lo_95']:.2f}", f"{r['hi_95']:.2f}"] for r in fc.ensemble.iter_rows(named=True)],
    )
    lines += ["", f"## Backtest at the horizon date ({len(bt.origins)} origins, {bt.origins[0]} .. {bt.origins[-1]}, {bt.steps} trading days ahead)", ""]
    lines += _table(
        ["model", "RMSE", "MAE", "MAPE %", "ratio to Naive", "direction hit", "80% cover", "95% cover", "weight"],
        [
            [name, f"{m.rmse:.2f}", f"{m.mae:.2f}", f"{m.mape:.2f}", f"{m.ratio:.4f}", "n/a" if m.direction is None else f"{m.direction:.0%}", f"{m.coverage_80:.0%}", f"{m.coverage_95:.0%}", "-" if name in (ENSEMBLE, COMBINATION) else f"{bt.weights.get(name, 0):.2f}"]
            for name, m in bt.models.items()
        ],
    )
    lines += [
        "",
        f"Ensemble: rule `{bt.rule}`, weights " + ", ".join(f"{k} {v:.2f}" for k, v in bt.weights.items()) + ". "
        f"`{COMBINATION}` is the rule chosen at each origin from outcomes known by then (no look-ahead); the ensemble "
        f"serves it only if it beat Naive. RMSE of each rule with its online weights: " + ", ".join(f"{k} {v:.2f}" for k, v in bt.rule_rmse.items()) + ".",
    ]
    if bt.copper_ablation_pct is not None:
        lines.append(f"Copper ablation: ensemble RMSE {bt.copper_ablation_pct:+.2f}% with copper; the random walk with lagged copper {bt.copper_model_pct:+.2f}% against the random walk alone.")
    lines += [f"Note: {n}" for n in bt.notes]
    lines += ["", "## Copper", ""]
    if bundle.copper_features is None:
        lines.append("Copper unavailable: this forecast runs without copper.")
    else:
        latest = bundle.copper_features.tail(1).row(0, named=True)
        lines.append(f"Source {bundle.sources['copper']} ({bundle.copper_frequency}), last {bundle.copper[DATE].max()} at {bundle.copper[CLOSE][-1]:.4f} USD/lb. Features on {latest[DATE]}:")
        lines += ["", *_table(["feature", "value"], [[f, _fmt(latest[f])] for f in FEATURES])]
    lines += ["", "## Data and degraded reasons", ""]
    lines += [f"- {n}" for n in bundle.notes] or ["- none"]
    lines += [f"- degraded: {r}" for r in bundle.degraded]
    return "\n".join(lines) + "\n"


# -- Core: requests and redaction ----------------------------------------------------


def yahoo_params(since: date | None, now: datetime) -> dict[str, str]:
    """Query for a daily chart: full history when nothing is cached, else from `since` minus the overlap."""
    if since is None:
        return {"interval": "1d", "range": "max"}
    start = datetime.combine(since - timedelta(days=OVERLAP_DAYS), datetime.min.time(), UTC)
    return {"interval": "1d", "period1": str(int(start.timestamp())), "period2": str(int(now.timestamp()))}


def mindicador_years(since: date | None, now: datetime, *, empty_years: int = 2) -> list[int]:
    """Years to ask mindicador for: from the cached year (less the overlap) to now, or the last `empty_years`."""
    first = (since - timedelta(days=OVERLAP_DAYS)).year if since else now.year - empty_years + 1
    return list(range(min(first, now.year), now.year + 1))


def redact(text: str, secret: str | None) -> str:
    """Remove a secret and any `api_key=` query value from text meant for logs or errors."""
    text = re.sub(r"(api_key=)[^&\s'\"]+", r"\1***", text)
    text = re.sub(r"(//)[^/@\s'\"]*:[^/@\s'\"]*@", r"\1***@", text)  # user:password in a base or proxy URL
    if secret:
        text = text.replace(secret, "***")
    return text


# -- Shell: HTTP -------------------------------------------------------------------


def _is_transient(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def _retry_after(exc: BaseException | None, cap: float) -> float | None:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        raw = exc.response.headers.get("Retry-After", "")
        if raw.strip().isdigit():
            return min(float(raw), cap)
    return None


def make_fetch_json(config: Config, *, wait: Any = None, deadline: float | None = None) -> Any:
    """Build the one retried call: GET a URL, raise for non-2xx, return the parsed JSON body.

    Retries transport errors, 429 and 5xx with jittered exponential backoff (honouring a
    Retry-After capped at `config.max_retry_after`), at most `config.attempts` tries and
    `config.retry_budget` seconds, and never past `deadline` (a `time.monotonic()` value: the
    run's network budget), which also shortens the last request's timeout. Tests pass
    `wait=tenacity.wait_none()`.
    """
    import httpx
    import tenacity

    backoff = wait or tenacity.wait_exponential_jitter(initial=1, max=20, jitter=2)

    def left() -> float:
        return math.inf if deadline is None else deadline - time.monotonic()

    def wait_for(state: tenacity.RetryCallState) -> float:
        outcome = state.outcome.exception() if state.outcome else None
        hinted = _retry_after(outcome, config.max_retry_after)
        seconds = backoff(state) if hinted is None or wait is not None else hinted
        return max(0.0, min(seconds, left(), config.retry_budget - state.seconds_since_start))

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(config.attempts)
        | tenacity.stop_after_delay(config.retry_budget)
        | (lambda state: left() <= 1.0),  # INFO: a retry with under a second left would only time out
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
        # INFO: httpx's timeout is per read, so a trickling server is cut by this wall-clock end instead
        ends = time.monotonic() + min(left(), config.network_budget)
        with client.stream("GET", url, params=params, timeout=min(config.timeout, left())) as response:
            cap = MAX_BODY_BYTES if response.is_success else MAX_ERROR_BODY_BYTES
            body = _read_capped(response, cap=cap, ends=ends)
        if not response.is_success:
            # the body is kept (whole or cut) so that describe_error can quote it
            framing = {"content-encoding", "content-length", "transfer-encoding"}  # the body is already decoded
            headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in framing]
            reason = {"reason_phrase": response.extensions.get("reason_phrase", b"")}
            kept = httpx.Response(
                response.status_code, headers=headers, content=body, request=response.request, extensions=reason
            )
            kept.raise_for_status()
        try:
            return json.loads(body)
        except RecursionError:  # INFO: 100k nested brackets overflow json's C parser; outside input, not a crash
            raise PayloadError("malformed JSON (nested too deeply)") from None

    return fetch_json


MAX_BODY_BYTES = 32 * 2**20  # decompressed; the largest real answer (HG=F, range=max) is about 1 MB
MAX_ERROR_BODY_BYTES = 2**16  # an error body is only quoted (200 characters)


def _read_capped(response: httpx.Response, *, cap: int, ends: float) -> bytes:
    """Read a streamed body, inflating gzip/deflate at most `cap` bytes; raise past `cap` or the wall-clock `ends`."""
    import zlib

    import httpx

    encoding = response.headers.get("content-encoding", "").strip().lower()
    # INFO: httpx inflates each 64 KB read whole (a gzip bomb gives ~64 MB a read); zlib's max_length bounds it
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding in {"gzip", "x-gzip", "deflate"} else None
    chunks: list[bytes] = []
    size = 0
    for raw in response.iter_raw() if inflater else response.iter_bytes():
        pending = raw
        while pending:
            try:
                data = inflater.decompress(pending, cap - size + 1) if inflater else pending
            except zlib.error as exc:
                raise httpx.DecodingError(f"bad {encoding} body ({exc})", request=response.request) from None
            pending = inflater.unconsumed_tail if inflater else b""
            size += len(data)
            if size > cap:
                if cap < MAX_BODY_BYTES:  # an error body: the start is enough to quote
                    return b"".join(chunks)
                raise PayloadError(f"response body over {cap / 2**20:g} MB (decompressed): not read further")
            chunks.append(data)
        if time.monotonic() > ends:
            raise httpx.ReadTimeout("network time budget spent while reading the body", request=response.request)
    if inflater:
        chunks.append(inflater.flush())
    return b"".join(chunks)


def _where(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(str(url))
    host = parts.netloc.rpartition("@")[2]  # INFO: never the user:password before `@`
    return f"{host}{parts.path}"  # INFO: never the query: it may hold the FRED key


def describe_error(exc: BaseException | None, secret: str | None) -> str:
    """One redacted line for an HTTP or parsing failure."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        body = exc.response.text.strip().replace("\n", " ")
        with contextlib.suppress(ValueError, RecursionError):
            parsed = json.loads(body)
            chart = parsed.get("chart") if isinstance(parsed, Mapping) else None
            inner = (parsed.get("error_message") if isinstance(parsed, Mapping) else None) or (chart.get("error") if isinstance(chart, Mapping) else None)
            body = json.dumps(inner) if isinstance(inner, Mapping) else str(inner or body)
        text = f"HTTP {status} {exc.response.reason_phrase}: {body[:200]}"
    elif isinstance(exc, httpx.TimeoutException):
        text = f"timeout ({'network time budget spent' if 'budget' in str(exc) else type(exc).__name__})"
    elif isinstance(exc, httpx.TransportError):
        text = f"connection error ({type(exc).__name__}: {exc})"
    elif isinstance(exc, json.JSONDecodeError):
        text = f"malformed JSON ({exc.msg} at char {exc.pos})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(text, secret)


def make_client(config: Config) -> httpx.Client:
    """The one HTTP client of a run: timeouts, a browser User-Agent, redirects followed."""
    import httpx

    return httpx.Client(
        timeout=httpx.Timeout(config.timeout),
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        follow_redirects=True,
    )


def _fetch(source: str, fetch_json: Any, client: httpx.Client, secret: str | None, calls: Sequence[tuple[str, Mapping[str, str]]], parse: Any) -> Result:
    import polars as pl

    import httpx

    frames = []
    for url, params in calls:
        try:
            payload = fetch_json(client, url, params)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:  # ValueError: a body that is not JSON
            return Result(source, error=describe_error(exc, secret))
        try:
            frames.append(parse(payload))
        except Exception as exc:  # noqa: BLE001 -- a body of any shape is outside input: a failed source, never a crash
            detail = describe_error(exc, secret) if isinstance(exc, PayloadError) else f"malformed payload ({type(exc).__name__}: {exc})"
            return Result(source, error=redact(detail.splitlines()[0][:300], secret))
    frame = pl.concat(frames) if frames else None
    return Result(source, frame=frame)


def fetch_yahoo(config: Config, client: httpx.Client, fetch_json: Any, symbol: str, *, since: date | None, now: datetime) -> Result:
    """Fetch a daily Yahoo chart as a raw (uncleaned) frame."""
    url = f"{config.yahoo_url}/v8/finance/chart/{symbol}"
    return _fetch("yahoo", fetch_json, client, None, [(url, yahoo_params(since, now))], parse_yahoo_chart)


def fetch_mindicador(config: Config, client: httpx.Client, fetch_json: Any, *, since: date | None, now: datetime) -> Result:
    """Fetch the official dólar observado, one request per year."""
    calls = [(f"{config.mindicador_url}/api/dolar/{year}", {}) for year in mindicador_years(since, now)]
    return _fetch("mindicador", fetch_json, client, None, calls, parse_mindicador)


def fetch_fred_copper(config: Config, client: httpx.Client, fetch_json: Any) -> Result:
    """Fetch monthly FRED PCOPPUSDM, converted to USD/lb; needs FRED_API_KEY."""
    if not config.fred_api_key:
        return Result("fred", error="FRED_API_KEY is not set", frequency="monthly")
    params = {"series_id": FRED_COPPER_SERIES, "api_key": config.fred_api_key, "file_type": "json"}
    url = f"{config.fred_url}/fred/series/observations"
    result = _fetch("fred", fetch_json, client, config.fred_api_key, [(url, params)], parse_fred_observations)
    return dataclasses.replace(result, frequency="monthly")


# -- Shell: the parquet warehouse ---------------------------------------------------


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
        handle = open(path)  # noqa: SIM115 -- INFO: flock works on a read-only handle too
    with handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{what} {path} is held by another process after {timeout:g} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def temp_owner() -> str:
    """`PID@HOST` for temp names, so `clean_leftovers` can tell a dead run's files from a live one's."""
    import socket

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


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write a parquet file atomically (`atomic_path`); a full disk or a denied write is an OSError."""
    import io

    buffer = io.BytesIO()
    frame.write_parquet(buffer)  # INFO: in memory first: polars reports ENOSPC as a ComputeError, Python as OSError
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def cache_schema() -> dict[str, pl.DataType]:
    """The column types of a warehouse file."""
    import polars as pl

    return {DATE: pl.Date(), CLOSE: pl.Float64(), SOURCE: pl.String(), FETCHED_AT: pl.Datetime("us", "UTC")}


def _convert(name: str, have: pl.DataType, want: pl.DataType) -> pl.Expr:
    import polars as pl

    if have == pl.String and want == pl.Date:  # INFO: polars 2 removed the string-to-date cast
        return pl.col(name).str.to_date("%Y-%m-%d", strict=True)
    if have == pl.String and isinstance(want, pl.Datetime):
        return pl.col(name).str.to_datetime(time_unit="us", time_zone="UTC", strict=True)
    return pl.col(name).cast(want, strict=True)


def read_cache(path: Path, *, now: datetime) -> Result:
    """Read a warehouse file; a corrupt one is renamed aside (never overwritten) and reported.

    A file that cannot be read (permissions, I/O) is not corrupt: it stays where it is. Columns of
    the wrong type are converted when every value converts, else the file is corrupt.
    """
    import io

    import polars as pl

    if not path.exists():
        return Result("cache", error=f"no cache at {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        log.error("Cache %s unreadable (%s): left in place, not replaced", path.name, why)
        return Result("cache", error=f"cache {path.name} unreadable ({why})")
    try:
        frame = pl.read_parquet(io.BytesIO(data))
        missing = {DATE, CLOSE, SOURCE} - set(frame.columns)
        if missing:
            raise ValueError(f"missing columns {sorted(missing)}")
        schema = {k: v for k, v in cache_schema().items() if k in frame.columns}
        wrong = {k: frame.schema[k] for k, v in schema.items() if frame.schema[k] != v}
        if wrong:  # each conversion is strict: a value that does not convert makes the file corrupt
            frame = frame.with_columns(_convert(name, frame.schema[name], schema[name]) for name in wrong)
            found = ", ".join(f"{k} {v}" for k, v in wrong.items())
            log.warning("Cache %s had columns of the wrong type (%s): converted", path.name, found)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is set aside, not fatal
        aside = path.with_name(f"{path.name}.corrupt-{now:%Y%m%dT%H%M%S}")
        try:
            os.replace(path, aside)
            where = f"moved to {aside.name}"
        except OSError as move_error:
            where = f"could not be moved aside ({move_error.strerror})"
        log.error("Corrupt cache %s (%s): %s", path.name, type(exc).__name__, where)
        return Result("cache", error=f"corrupt cache {path.name} ({type(exc).__name__}), {where}")
    return Result("cache", frame=frame)


@dataclass(frozen=True, slots=True)
class Series:
    """A chosen, clean series: the full history after merging, where it came from, and what happened."""

    name: str
    frame: pl.DataFrame | None
    source: str
    frequency: Literal["daily", "monthly"] = "daily"
    notes: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.frame is not None and not self.frame.is_empty()


def _clean_result(result: Result, fetched_at: datetime) -> Result:
    if not result.ok:
        return result
    cleaned = clean_prices(result.frame, frequency=result.frequency)
    frame = with_provenance(cleaned.frame, result.source, fetched_at)
    return dataclasses.replace(result, frame=frame, notes=result.notes + tuple(f"{result.source}: {n}" for n in cleaned.notes))


def fetch_series(
    name: Literal["usdclp", "copper"],
    config: Config,
    client: httpx.Client | None,
    *,
    now: datetime,
    fetch_json: Any = None,
    timings: dict[str, float] | None = None,
    deadline: float | None = None,
) -> Series:
    """Walk one series' fallback chain, merge a live answer into the warehouse, return the history.

    USD/CLP: Yahoo CLP=X, mindicador, cache. Copper: Yahoo HG=F, FRED monthly, cache.
    The warehouse is locked for the whole read-merge-write, so two runs never interleave.
    """
    path = config.warehouse / (USDCLP_CACHE if name == "usdclp" else COPPER_CACHE)
    label = "USD/CLP" if name == "usdclp" else "copper"
    with file_lock(config.warehouse / ".lock", timeout=config.lock_timeout, what="warehouse lock"):
        cache = read_cache(path, now=now)
        since = cache.frame[DATE].max() if cache.ok and not cache.frame.is_empty() else None
        results: list[Result] = []
        if not config.offline and client is not None:
            fetch_json = fetch_json or make_fetch_json(config, deadline=deadline)
            if name == "usdclp":
                chain = [
                    lambda: fetch_yahoo(config, client, fetch_json, USDCLP_SYMBOL, since=since, now=now),
                    lambda: fetch_mindicador(config, client, fetch_json, since=since, now=now),
                ]
            else:
                chain = [
                    lambda: fetch_yahoo(config, client, fetch_json, COPPER_SYMBOL, since=since, now=now),
                    lambda: fetch_fred_copper(config, client, fetch_json),
                ]
            for step in chain:  # INFO: lazily, so a good primary costs one request
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("Network time budget (%.0f s) spent: no further %s sources tried", config.network_budget, label)
                    results.append(Result("network", error=f"network time budget ({config.network_budget:.0f} s) spent"))
                    break
                raw = step()
                started = time.perf_counter()
                result = _clean_result(raw, now)
                if timings is not None:
                    timings["clean"] = timings.get("clean", 0.0) + time.perf_counter() - started
                results.append(result)
                verdict = first_good([result], now=now, max_age=timedelta(days=config.max_age_days))
                if verdict.ok:
                    break
                why = verdict.error.removeprefix(f"{result.source}: ")
                log.warning("%s %s fetch failed (%s)", _source_title(result.source), label, why)
        results.append(cache)
        live_age = timedelta(days=config.max_age_days)
        chosen = first_good(results, now=now, max_age={"yahoo": live_age, "mindicador": live_age, "fred": live_age})
        return _settle(name, label, config, path, cache, chosen, results, now)


def _source_title(source: str) -> str:
    return {"yahoo": "Yahoo Finance", "mindicador": "mindicador.cl", "fred": "FRED", "cache": "Cache"}.get(source, source)


def _settle(name: str, label: str, config: Config, path: Path, cache: Result, chosen: Result, results: list[Result], now: datetime) -> Series:
    notes = tuple(n for r in results for n in r.notes)
    failures = tuple(f"{r.source} failed: {r.error}" for r in results if r.error and r.source != "cache")
    if not chosen.ok:
        if name == "copper":
            log.error("All copper sources failed: continuing without copper (forecasts degraded)")
        else:
            log.error("All USD/CLP sources failed: %s", chosen.error)
        return Series(name, None, "none", notes=failures + notes, error=chosen.error)
    if chosen.source == "cache":
        age = (now.date() - chosen.frame[DATE].max()).days
        if config.offline:
            log.info("Offline: using %d cached %s data points (last %s)", chosen.frame.height, label, chosen.frame[DATE].max())
        else:
            tried = sum(r.source not in {"cache", "network"} for r in results)
            log.warning("%s failed, using %d cached %s data points", {1: "The source", 2: "Both sources"}.get(tried, f"All {tried} sources"), chosen.frame.height, label)
        cached_note = (f"cached data ({age} days old)",)
        return Series(name, chosen.frame.select(DATE, CLOSE, SOURCE, FETCHED_AT), "cache", notes=failures + notes + cached_note)
    if chosen.frequency == "monthly":
        log.warning("Using FRED backup for %s prices (monthly, degraded)", label)
        return Series(name, chosen.frame, chosen.source, "monthly", failures + notes + ("monthly copper (FRED PCOPPUSDM)",))
    merged = merge_prices(cache.frame if cache.ok else None, chosen.frame)
    if chosen.source != "yahoo":
        log.warning("Using %s backup for %s prices", _source_title(chosen.source), label)
    try:
        if not cache.ok and path.exists():
            path.open("rb").close()  # INFO: an unreadable (not corrupt) cache raises here: never replaced by less
        write_parquet_atomic(merged, path)
    except OSError as exc:  # a full disk or a read-only warehouse: serve the fetched data, keep the old file
        log.error(
            "Warehouse %s not updated (%s): using the fetched data for this run only", path.name, exc.strerror or exc
        )
        notes += (f"warehouse not updated ({exc.strerror or exc})",)
    log.info("Successfully fetched %d %s price points from %s", chosen.frame.height, label, chosen.source)
    return Series(name, merged, chosen.source, notes=failures + notes)


def fetch_both(config: Config, client: httpx.Client | None, *, now: datetime, timings: dict[str, float] | None = None) -> tuple[Series, Series]:
    """Fetch USD/CLP and (unless FXCU_COPPER=off) copper through their chains, within one network time budget.

    Past `config.network_budget` seconds no new source is asked (the cache still answers); one
    request already under way can add its own bound (`retry_budget` plus a timeout).
    """
    deadline = time.monotonic() + config.network_budget
    usdclp = fetch_series("usdclp", config, client, now=now, timings=timings, deadline=deadline)
    if not config.copper:
        log.warning("Copper disabled (FXCU_COPPER=off): forecasting without copper")
        return usdclp, Series("copper", None, "off", error="disabled by FXCU_COPPER=off")
    return usdclp, fetch_series("copper", config, client, now=now, timings=timings, deadline=deadline)


def fetch_usdclp(config: Config | None = None, client: httpx.Client | None = None, *, now: datetime | None = None) -> Series:
    """Fetch USD/CLP through Yahoo CLP=X, mindicador and the cache; the history, its source and notes."""
    return _fetch_alone("usdclp", config, client, now)


def fetch_copper(config: Config | None = None, client: httpx.Client | None = None, *, now: datetime | None = None) -> Series:
    """Fetch copper (USD/lb) through Yahoo HG=F, FRED monthly and the cache; `.ok` is False when all failed."""
    return _fetch_alone("copper", config, client, now)


def _fetch_alone(name: Literal["usdclp", "copper"], config: Config | None, client: httpx.Client | None, now: datetime | None) -> Series:
    config = config or Config.from_env(os.environ)
    with _client_scope(config, client) as client:
        return fetch_series(name, config, client, now=now or datetime.now(UTC))


@contextlib.contextmanager
def _client_scope(config: Config, client: httpx.Client | None) -> Iterator[httpx.Client | None]:
    """The caller's client, or one made (and closed) here; none offline."""
    if client is not None or config.offline:
        yield client
        return
    with make_client(config) as made:
        yield made


def load(config: Config | None = None, client: httpx.Client | None = None, *, now: datetime | None = None) -> Bundle:
    """Fetch (or read offline) both series and build the bundle; raises ValueError without USD/CLP.

    With no arguments it reads the environment like the CLI does, for `import fxcu; fxcu.load()`.
    """
    config = config or Config.from_env(os.environ)
    with _client_scope(config, client) as client:
        usdclp, copper = fetch_both(config, client, now=now or datetime.now(UTC))
    return build_bundle(usdclp, copper)


# -- Shell: reports, charts, status ---------------------------------------------------


def write_text_atomic(text: str | bytes, path: Path) -> None:
    """Write a text or bytes file atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode() if isinstance(text, str) else text)


def write_chart(fc: Forecast, bundle: Bundle, path: Path, *, months: int = 6) -> None:
    """Plot the last months of USD/CLP, the ensemble forecast with its 80/95% fan, and copper on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    start = fc.origin - timedelta(days=31 * months)
    hist = bundle.usdclp.filter(pl.col(DATE) >= start)
    ens = fc.ensemble
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    try:
        ax.plot(hist[DATE].to_list(), hist[CLOSE].to_list(), color="black", lw=1.2, label="USD/CLP")
        x = [fc.origin, *ens[DATE].to_list()]
        edge = lambda col: [fc.last_close, *ens[col].to_list()]  # noqa: E731
        ax.fill_between(x, edge("lo_95"), edge("hi_95"), color="tab:blue", alpha=0.15, label="95% interval")
        ax.fill_between(x, edge("lo_80"), edge("hi_80"), color="tab:blue", alpha=0.3, label="80% interval")
        ax.plot(x, edge("forecast"), color="tab:blue", lw=1.5, label=f"forecast ({fc.backtest.rule})")
        ax.set_ylabel("CLP per USD")
        ax.set_title(f"USD/CLP {fc.horizon} forecast from {fc.origin}")
        if bundle.copper is not None:
            cu = bundle.copper.filter(pl.col(DATE).is_between(start, ens[DATE].max()))
            ax2 = ax.twinx()
            ax2.plot(cu[DATE].to_list(), cu[CLOSE].to_list(), color="tab:orange", lw=1, alpha=0.8, label="copper (USD/lb)")
            ax2.set_ylabel("copper, USD/lb", color="tab:orange")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


@dataclass(frozen=True, slots=True)
class Report:
    """Where one run's report files went."""

    markdown: Path
    chart: Path | None
    table: Path


def write_report(fc: Forecast, bundle: Bundle, reports: Path, *, now: datetime) -> Report:
    """Write the chart (PNG), the forecast table (CSV) and the Markdown report under `reports`."""
    stem = f"forecast_{fc.horizon}_{now:%Y-%m-%d}"
    chart = reports / f"{stem}.png"
    try:
        write_chart(fc, bundle, chart)
    except Exception as exc:  # noqa: BLE001 -- a chart is never worth a failed run
        log.error("Chart failed (%s: %s); the report goes without it", type(exc).__name__, exc)
        chart = None
    table = reports / f"{stem}.csv"
    write_text_atomic(fc.path.write_csv(), table)
    markdown = reports / f"{stem}.md"
    write_text_atomic(format_report(fc, bundle, now=now, chart=chart.name if chart else None), markdown)
    return Report(markdown, chart, table)


def status_path(config: Config) -> Path:
    return config.data_dir / "status.json"


def read_status(config: Config) -> dict[str, Any]:
    """The last run per horizon, as `run` recorded it ({} when none or unreadable)."""
    try:
        status = json.loads(status_path(config).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return status if isinstance(status, dict) else {}  # INFO: `[]` or a bare string is no status: "never run"


def write_status(config: Config, horizon: str, entry: Mapping[str, Any]) -> None:
    """Record a horizon's last run for `check` (atomic, under the status lock)."""
    with file_lock(config.data_dir / ".status.lock", timeout=30, what="status lock"):
        status = read_status(config)
        status[horizon] = dict(entry)
        write_text_atomic(json.dumps(status, indent=2, sort_keys=True), status_path(config))

# -- Shell: MLflow tracking -------------------------------------------------------------

EXPERIMENT_PREFIX = "forecaster_"


def tracking_uri(config: Config, environ: Mapping[str, str]) -> str:
    """MLFLOW_TRACKING_URI when set (a team server), else the absolute SQLite file under the data dir (created)."""
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"]
    folder = config.data_dir / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return sqlite_uri(folder / "mlflow.db")


def sqlite_uri(db: Path) -> str:
    """The SQLAlchemy URI of a SQLite file, with `%`, `?` and `#` escaped (else the database lands elsewhere)."""
    # INFO: SQLAlchemy percent-decodes the path and cuts it at `?`; escaping only these keeps other paths verbatim
    return "sqlite:///" + str(db).replace("%", "%25").replace("?", "%3F").replace("#", "%23")


def sqlite_file(uri: str) -> Path | None:
    """The file of a `sqlite:///` URI (inverse of `sqlite_uri`), or None for any other store."""
    from urllib.parse import unquote

    if not uri.startswith("sqlite:///") or "?" in uri:
        return None
    return Path(unquote(uri.removeprefix("sqlite:///")))


def artifact_root(config: Config, uri: str) -> str | None:
    """Absolute artifact folder for a SQLite store (else MLflow writes ./mlruns of the working directory); a server chooses its own."""
    return (config.data_dir / "mlflow" / "mlruns").as_uri() if uri.startswith("sqlite:") else None


def _bounded(seconds: float, what: str, fn: Any, *args: Any, cancel: Any = None, **kwargs: Any) -> Any:
    """Run `fn` in a daemon thread and give up after `seconds` (MLflow retries a bad SQLite path for ~100 s).

    On giving up, `cancel` (a threading.Event) is set, so the thread can stop before its next write.
    """
    import threading

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
        raise TimeoutError(f"{what} did not finish within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class OneLineRecords(logging.Filter):
    """Cut other libraries' records to one redacted line with no traceback (MLflow logs SQLAlchemy errors whole)."""

    def filter(self, record: logging.LogRecord) -> bool:
        raw = str(record.msg)
        extra = record.exc_info or record.exc_text or record.stack_info or record.args or "\n" in raw or "@" in raw
        if record.name.split(".")[0] != "fxcu" and extra:
            text = record.getMessage().strip()
            record.msg, record.args = redact(text.splitlines()[0][:300] if text else "", None), None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def one_line_logs() -> None:
    """Put `OneLineRecords` on every handler that reaches stderr: the root's and those MLflow and alembic install."""
    for name in (None, "mlflow", "alembic"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, OneLineRecords) for f in handler.filters):
                handler.addFilter(OneLineRecords())


def mlflow_client(uri: str) -> Any:
    """An MlflowClient on `uri`; a new SQLite database is first created whole (`create_database`)."""
    from mlflow.tracking import MlflowClient

    one_line_logs()  # INFO: after the import, which installs MLflow's own stderr handler
    db = sqlite_file(uri)
    if db is not None:
        _share_engine(uri)
        if not db.exists():
            create_database(db)
    if uri.startswith(("http:", "https:")):
        for name, value in MLFLOW_HTTP_BOUNDS.items():  # INFO: read by MLflow at each request; the user's values win
            os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


# A down tracking server cost 65 s (MLflow retries 7 times with backoff 2); these bound one call to ~2 x 5 s.
MLFLOW_HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def relocate_artifacts(db: Path, root: str) -> int:
    """Point experiments and runs whose artifacts lived under another data dir's `mlflow/mlruns` at `root`.

    Returns how many experiments moved.

    A data dir that was moved or restored from `fxcu backup` elsewhere keeps working: new artifacts go
    under it, old ones are found there, and nothing is recreated at the old path.
    """
    import sqlite3

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


def _share_engine(uri: str) -> None:
    # INFO: MLflow's engine factory mkdirs the *escaped* path's parent (a stray `a%23b/` beside `a#b/`);
    # an engine made here without that step is the one its store then reuses.
    from mlflow.store.db.utils import create_sqlalchemy_engine
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engines = getattr(SqlAlchemyStore, "_engine_map", None)
    if isinstance(engines, dict) and uri not in engines:
        engines.setdefault(uri, create_sqlalchemy_engine(uri))


def create_database(db: Path) -> None:
    """Migrate a new SQLite database beside `db`, then rename it in: a failure (a full disk) leaves none half-made."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db.parent / ".create.lock", timeout=60, what="MLflow database creation lock"):
        if db.exists():  # another process made it while this one waited
            return
        with atomic_path(db) as tmp:
            uri = sqlite_uri(tmp)
            try:
                _share_engine(uri)
                SqlAlchemyStore(uri, (db.parent / "mlruns").as_uri())
            finally:
                engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
                if engine is not None:
                    engine.dispose()
                tmp.with_name(tmp.name + "-journal").unlink(missing_ok=True)
        log.info("Created the MLflow database %s", db)


def ensure_experiment(client: Any, name: str, artifact_location: str | None) -> tuple[str, bool]:
    """Return the experiment id, creating it (with an absolute artifact location) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id, False
    return client.create_experiment(name, artifact_location=artifact_location), True


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Everything one forecast logs to MLflow."""

    horizon: str
    run_name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: tuple[Path, ...]


def run_record(fc: Forecast, bundle: Bundle, *, now: datetime, seconds: Mapping[str, float], artifacts: Sequence[Path], input_hash: str) -> RunRecord:
    """Turn a forecast into MLflow params, batch metrics and tags (pure)."""
    import importlib.metadata as md

    bt, h = fc.backtest, fc.horizon
    versions = {}
    for pkg in ("polars", "statsforecast", "mlflow", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[f"version_{pkg}"] = md.version(pkg)
    params = {
        "horizon": h,
        "horizon_trading_days": str(bt.steps),
        "models": ",".join(bt.weights),
        "ensemble_rule": bt.rule,
        "ensemble_weights": json.dumps({k: round(v, 4) for k, v in bt.weights.items()}),
        "num_sources": str(sum(1 for v in bundle.sources.values() if v not in {"none", "off"})),
        "copper_available": str(bundle.copper is not None),
        "usdclp_source": bundle.sources["usdclp"],
        "copper_source": bundle.sources["copper"],
        "copper_frequency": bundle.copper_frequency or "none",
        "data_first_date": str(bundle.usdclp[DATE].min()),
        "data_last_date": str(bundle.usdclp[DATE].max()),
        "observations": str(bundle.usdclp.height),
        "backtest_origins": str(len(bt.origins)),
        "backtest_first_origin": str(bt.origins[0]),
        "backtest_last_origin": str(bt.origins[-1]),
        "input_sha256": input_hash,
        "version_fxcu": __version__,
        **versions,
    }
    metrics: dict[str, float] = {}
    for name, m in bt.models.items():
        key = h if name == ENSEMBLE else name
        metrics |= {f"{key}_rmse": m.rmse, f"{key}_mae": m.mae, f"{key}_mape": m.mape, f"{key}_ratio_to_naive": m.ratio}
        metrics |= {f"{key}_coverage_80": m.coverage_80, f"{key}_coverage_95": m.coverage_95}
        if m.direction is not None:
            metrics[f"{key}_direction_hit"] = m.direction
    if bt.copper_ablation_pct is not None:
        metrics["copper_ablation_pct"] = bt.copper_ablation_pct
        metrics["copper_model_pct"] = bt.copper_model_pct
    final = fc.final
    metrics |= {"forecast": final["forecast"], "forecast_lo_80": final["lo_80"], "forecast_hi_80": final["hi_80"]}
    metrics |= {"forecast_lo_95": final["lo_95"], "forecast_hi_95": final["hi_95"], "last_close": fc.last_close}
    metrics |= {f"seconds_{stage}": round(v, 4) for stage, v in seconds.items()}
    tags = {"fxcu.status": "degraded" if bundle.degraded else "ok", "fxcu.degraded": ",".join(bundle.degraded) or "none"}
    tags |= {f"fxcu.degraded.{r.replace(' ', '_')}": "true" for r in bundle.degraded}
    if bt.notes:
        tags["fxcu.backtest_notes"] = "; ".join(bt.notes)
    return RunRecord(h, f"forecast_{now:%Y-%m-%d}", params, metrics, tags, tuple(artifacts))


def log_run(config: Config, record: RunRecord, *, environ: Mapping[str, str]) -> str:
    """Log one run to MLflow under the tracking lock, bounded in time; return its run id."""

    def work() -> str:
        started = time.perf_counter()
        from mlflow.entities import Metric, Param, RunTag

        uri = tracking_uri(config, environ)
        if uri in _UNREACHABLE:
            why = _UNREACHABLE[uri]
            raise ConnectionError(f"MLflow tracking server {redact_uri(uri)} failed earlier in this run: {why}")
        client = mlflow_client(uri)
        _follow_data_dir(config, uri)
        experiment_id, _ = ensure_experiment(client, EXPERIMENT_PREFIX + record.horizon, artifact_root(config, uri))
        run = client.create_run(experiment_id, run_name=record.run_name, tags={"mlflow.runName": record.run_name})
        run_id = run.info.run_id
        try:
            stamp = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), stamp, 0) for k, v in record.metrics.items() if math.isfinite(v)],
                params=[Param(k, v[:6000]) for k, v in record.params.items()],
                tags=[RunTag(k, v) for k, v in record.tags.items()],
            )
            for path in record.artifacts:
                client.log_artifact(run_id, str(path), artifact_path="inputs/warehouse" if path.suffix == ".parquet" else None)
            client.log_metric(run_id, "seconds_tracking", round(time.perf_counter() - started, 4))
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        return run_id

    import threading

    cancel = threading.Event()

    def locked() -> str:
        # INFO: the lock is taken inside the bounded thread, so if the run gives up waiting, the
        # lock stays held until that thread's last write: no second writer can start meanwhile.
        # It waits half the budget for the lock, and starts no run once the caller has given up.
        with file_lock(config.data_dir / "mlflow" / ".lock", timeout=config.tracking_timeout / 2, what="MLflow lock"):
            if cancel.is_set():
                raise TimeoutError("MLflow tracking gave up before writing")
            return work()

    uri = tracking_uri(config, environ)
    try:
        return _bounded(config.tracking_timeout, "MLflow tracking", locked, cancel=cancel)
    except Exception as exc:
        # the other horizons do not wait for it again
        if uri.startswith(("http:", "https:")) and uri not in _UNREACHABLE:
            _UNREACHABLE[uri] = type(exc).__name__
        raise


_UNREACHABLE: dict[str, str] = {}  # tracking servers that failed in this process, and how


def _follow_data_dir(config: Config, uri: str) -> None:
    """Relocate the artifacts of the data dir's own SQLite store when the data dir was moved or restored elsewhere."""
    db = sqlite_file(uri)
    if db is not None and db == config.data_dir / "mlflow" / "mlflow.db" and db.exists():
        relocate_artifacts(db, artifact_root(config, uri))


def write_inputs(bundle: Bundle, folder: Path) -> tuple[list[Path], str]:
    """Save the exact inputs as a warehouse a replay can read (`FXCU_DATA_DIR=<inputs> ... --offline`); return files and sha256."""
    import hashlib

    paths = [folder / "warehouse" / USDCLP_CACHE]
    write_parquet_atomic(bundle.usdclp, paths[0])
    if bundle.copper is not None:
        paths.append(folder / "warehouse" / COPPER_CACHE)
        write_parquet_atomic(bundle.copper, paths[1])
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return paths, digest.hexdigest()

# -- Commands ------------------------------------------------------------------------


def format_series_line(series: Series) -> str:
    """One line per series for `fetch`: source, rows, first and last date."""
    if not series.ok:
        return f"{series.name}: unavailable ({series.error})"
    frame = series.frame
    freq = "" if series.frequency == "daily" else f", {series.frequency}"
    return f"{series.name}: {series.source}{freq}, {frame.height} rows, {frame[DATE].min()} .. {frame[DATE].max()}"


def cmd_fetch(config: Config, client: httpx.Client | None, *, now: datetime) -> int:
    """Refresh both series through their chains into the warehouse; print what was used."""
    usdclp, copper = fetch_both(config, client, now=now)
    for series in (usdclp, copper):
        print(format_series_line(series))
        # INFO: an unavailable series' line already lists every source's failure
        for line in series.notes if series.ok else [n for n in series.notes if " failed: " not in n]:
            print(f"  {line}")
    return 0 if usdclp.ok else 1


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


def _fmt(value: object) -> str:
    return "null" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def cmd_validate(config: Config, client: httpx.Client | None, *, now: datetime) -> int:
    """Load, compute features, check ranges and freshness; 0 when every check passes, 1 otherwise."""
    try:
        bundle = load(config, client, now=now)
    except ValueError as exc:
        print(f"fxcu: {exc}", file=sys.stderr)
        return 1
    features = bundle.copper_features if bundle.copper_features is not None else _empty_features()
    found = feature_problems(features, bundle.usdclp, bundle.copper, now=now, max_age=timedelta(days=config.max_age_days))
    if bundle.copper is None:
        found.append("copper unavailable: forecasts would run without copper")
    print(format_validation(bundle, found))
    return 1 if found else 0


def _empty_features() -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(schema={DATE: pl.Date, **{f: pl.Int8 if f == "copper_trend_signal" else pl.Float64 for f in FEATURES}})


def cmd_run(
    config: Config,
    client: httpx.Client | None,
    horizons: Sequence[str],
    *,
    now: datetime,
    environ: Mapping[str, str],
    skip_email: bool = False,
    as_json: bool = False,
) -> int:
    """Fetch once, then per horizon: backtest, forecast, report, track, record status; print the summaries.

    0 done (degraded or not, tracked or not); 1 no usable USD/CLP, too little history for the
    backtest, or no report could be written.
    """
    _UNREACHABLE.clear()  # a tracking server that failed in an earlier run (same process) is asked again
    with file_lock(config.data_dir / ".run.lock", timeout=config.lock_timeout, what="run lock"):
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        usdclp, copper = fetch_both(config, client, now=now, timings=seconds)
        seconds.setdefault("clean", 0.0)  # INFO: offline, the warehouse holds already-clean prices
        seconds["fetch"] = time.perf_counter() - started - seconds["clean"]
        if not usdclp.ok:
            return _fail_run(config, horizons, now, f"no usable USD/CLP data: {usdclp.error}")
        started = time.perf_counter()
        bundle = build_bundle(usdclp, copper)
        seconds["features"] = time.perf_counter() - started
        for reason in bundle.degraded:
            log.warning("Degraded run: %s", reason)
        log.info("Backtesting %s (%d origins per horizon)", ", ".join(horizons), WINDOWS)
        started = time.perf_counter()
        try:
            backtests = backtest_all(bundle.usdclp, bundle.copper, horizons)
        except ValueError as exc:  # too little history for an honest backtest: no forecast without one
            return _fail_run(config, horizons, now, f"cannot forecast: {exc}")
        seconds["backtest"] = time.perf_counter() - started
        log.info("Forecasting %s", ", ".join(horizons))
        started = time.perf_counter()
        forecasts = forecast_all(bundle.usdclp, bundle.copper, horizons, backtests=backtests)
        seconds["forecast"] = time.perf_counter() - started
        code, summaries, skip_tracking = 0, [], None
        for index, horizon in enumerate(horizons, 1):
            log.info("[%d/%d] %s: report and tracking", index, len(horizons), horizon)
            outcome = _run_horizon(
                config, bundle, forecasts[horizon], now=now, environ=environ, seconds=dict(seconds), skip_email=skip_email, skip_tracking=skip_tracking
            )
            if (outcome["tracking_error"] or "").startswith("TimeoutError"):
                # a timed-out write may still be going on: the other horizons do not queue behind it
                skip_tracking = f"skipped: MLflow tracking timed out for {horizon}"
            summaries.append(outcome)
            code = max(code, 0 if outcome.get("report") else 1)
        if as_json:
            # one JSON object: the summary itself, or for several horizons an object keyed by horizon
            document = summaries[0] if len(summaries) == 1 else {s["horizon"]: s for s in summaries}
            print(json.dumps(document, indent=2, default=str))
        else:
            for outcome in summaries:
                print(format_summary(outcome))
                print(f"  report: {outcome.get('report') or 'NOT WRITTEN'}; tracked: {'yes, run ' + outcome['run_id'] if outcome.get('run_id') else 'no'}")
        return code


def _fail_run(config: Config, horizons: Sequence[str], now: datetime, reason: str) -> int:
    """Say why no forecast was made, record it for `check` under every horizon, and return exit code 1."""
    print(f"fxcu: {reason}", file=sys.stderr)
    for horizon in horizons:
        write_status(config, horizon, {"time": now.isoformat(), "ok": False, "tracked": False, "error": reason})
    return 1


def _run_horizon(
    config: Config, bundle: Bundle, fc: Forecast, *, now: datetime, environ: Mapping[str, str], seconds: dict[str, float], skip_email: bool, skip_tracking: str | None
) -> dict[str, Any]:
    horizon, bt = fc.horizon, fc.backtest
    for note in bt.notes:
        log.warning("%s: %s", horizon, note)
    outcome: dict[str, Any] = summary(fc, bundle)
    started = time.perf_counter()
    report = None
    try:
        report = write_report(fc, bundle, config.data_dir / "reports", now=now)
        outcome["report"] = str(report.markdown)
    except OSError as exc:
        log.error("Report for %s could not be written (%s): forecast printed, not saved", horizon, exc.strerror or exc)
    seconds["report"] = time.perf_counter() - started
    started = time.perf_counter()
    run_id, tracking_error = None, skip_tracking
    try:
        if skip_tracking:
            raise RuntimeError(skip_tracking)
        with tempfile_dir(config.data_dir) as tmp:
            inputs, digest = write_inputs(bundle, tmp / "inputs")
            files = [p for p in (report.markdown, report.chart, report.table) if p] if report else []
            record = run_record(fc, bundle, now=now, seconds=seconds, artifacts=[*files, *inputs], input_hash=digest)
            run_id = log_run(config, record, environ=environ)
        log.info("Tracked %s in MLflow as run %s", horizon, run_id)
    except Exception as exc:  # noqa: BLE001 -- tracking never stops a forecast
        tracking_error = skip_tracking or redact(redact_uri(f"{type(exc).__name__}: {exc}".splitlines()[0][:300]), config.fred_api_key)
        log.error("MLflow tracking failed (%s): the forecast and its report are kept", tracking_error)
    outcome |= {"run_id": run_id, "tracked": run_id is not None, "tracking_error": tracking_error}
    if report and not skip_email:
        send_report_email(config, environ, fc, report)
    try:
        write_status(config, horizon, {"time": now.isoformat(), "ok": report is not None, "tracked": run_id is not None, "run_id": run_id, "tracking_error": tracking_error, "forecast": outcome["forecast"], "target_date": outcome["target_date"], "degraded": outcome["degraded"]})
    except (OSError, TimeoutError) as exc:
        log.error("Status file could not be written (%s): `check` will not see this run", exc)
    return outcome


@contextlib.contextmanager
def tempfile_dir(data_dir: Path) -> Iterator[Path]:
    """A scratch folder under the data dir (same filesystem), removed afterwards."""
    import shutil
    import tempfile

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
    import shutil

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


def send_report_email(config: Config, environ: Mapping[str, str], fc: Forecast, report: Report) -> bool:
    """Email the report with its chart when FXCU_SMTP_HOST and FXCU_SMTP_TO are set; a failure is logged, never raised.

    Port 465 speaks TLS from the start; other ports use STARTTLS unless FXCU_SMTP_STARTTLS=0.
    Certificates are verified (FXCU_SMTP_CAFILE adds a private CA), and credentials are never
    sent without TLS.
    """
    import smtplib
    import ssl
    from email.message import EmailMessage

    host, to = environ.get("FXCU_SMTP_HOST"), environ.get("FXCU_SMTP_TO")
    if not host or not to:
        return False
    user = environ.get("FXCU_SMTP_USER")
    try:
        message = EmailMessage()
        message["Subject"] = f"fxcu: USD/CLP {fc.horizon} forecast {fc.final['forecast']:.2f} for {fc.final[DATE]}"
        message["From"] = environ.get("FXCU_SMTP_FROM") or user or "fxcu@localhost"
        message["To"] = ", ".join(a.strip() for a in to.split(",") if a.strip())
        message.set_content(report.markdown.read_text())
        if report.chart:
            message.add_attachment(report.chart.read_bytes(), maintype="image", subtype="png", filename=report.chart.name)
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
        # INFO: a UnicodeError's text quotes the offending characters, which may be the password's
        detail = "" if isinstance(exc, UnicodeError) else str(exc).splitlines()[0] if str(exc) else ""
        log.error("Email failed (%s: %s); the run is not affected", type(exc).__name__, detail)
        return False
    log.info("Report emailed to %s", message["To"])
    return True


def cmd_init(config: Config, environ: Mapping[str, str]) -> int:
    """Create the MLflow database and the four experiments; running it again changes nothing."""
    uri = tracking_uri(config, environ)
    client = mlflow_client(uri)
    _follow_data_dir(config, uri)
    print(f"tracking URI: {redact_uri(uri)}")
    for horizon in HORIZONS:
        experiment_id, created = ensure_experiment(client, EXPERIMENT_PREFIX + horizon, artifact_root(config, uri))
        location = client.get_experiment(experiment_id).artifact_location
        print(f"{'created' if created else 'exists '} {EXPERIMENT_PREFIX + horizon} (id {experiment_id}, artifacts {location})")
    for folder in ("warehouse", "reports", "mlflow/mlruns"):
        (config.data_dir / folder).mkdir(parents=True, exist_ok=True)
    print(f"data dir: {config.data_dir}")
    return 0


def redact_uri(uri: str) -> str:
    """Hide a password in a tracking URI (`postgresql://user:pw@host`)."""
    return re.sub(r"(//[^:/@]+:)[^@]+@", r"\1***@", uri)


SHORT_METRICS = ("rmse", "mae", "mape", "ratio_to_naive", "coverage_80", "coverage_95", "direction_hit")


def metric_rank(name: str) -> Any:
    """Sort key for "best" on a metric: closest to nominal for coverage, highest for hit rate, else lowest (pure)."""
    nominal = re.search(r"coverage_(\d+)$", name)
    if nominal:
        return lambda value: abs(value - int(nominal.group(1)) / 100)
    if name.endswith("direction_hit"):
        return lambda value: -value
    return lambda value: value


def best_run(horizon: str, metric: str = "rmse", *, config: Config | None = None, environ: Mapping[str, str] | None = None) -> Any:
    """The finished run of a horizon that is best on `metric` (the original guide's get_best_run), or None.

    `metric` is a short name (`rmse`, `mae`, `mape`, `ratio_to_naive`, `coverage_80`, ...) meaning
    the ensemble's `{horizon}_{metric}`, or a full metric name (`7d_rmse`, `AutoETS_mae`). Best is
    lowest, except coverage (closest to its nominal level) and direction hit rate (highest).
    """
    parse_horizon(horizon)
    environ = os.environ if environ is None else environ
    config = config or Config.from_env(environ)
    client = mlflow_client(tracking_uri(config, environ))
    experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + horizon)
    if experiment is None:
        return None
    name = f"{horizon}_{metric}" if metric in SHORT_METRICS else metric
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=5000)
    scored = [r for r in runs if name in r.data.metrics]
    rank = metric_rank(name)
    return min(scored, key=lambda r: rank(r.data.metrics[name]), default=None)


def _recent_runs(client: Any, horizons: Sequence[str], last: int) -> list[tuple[str, Any]]:
    rows = []
    for horizon in horizons:
        experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + horizon)
        if experiment is not None:
            rows += [(horizon, r) for r in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=last)]
    return rows


def run_row(horizon: str, run: Any) -> dict[str, Any]:
    """One run as a flat dict for `runs` (pure over the run's data)."""
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    return {
        "horizon": horizon,
        "date": datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
        "run_id": run.info.run_id,
        "usdclp": p.get("usdclp_source", "?"),
        "copper": f"{p.get('copper_source', '?')}/{p.get('copper_frequency', '?')}",
        "rmse": m.get(f"{horizon}_rmse"),
        "ratio": m.get(f"{horizon}_ratio_to_naive"),
        "cov80": m.get(f"{horizon}_coverage_80"),
        "cov95": m.get(f"{horizon}_coverage_95"),
        "status": run.info.status + ("" if t.get("fxcu.status", "ok") == "ok" else f" ({t.get('fxcu.degraded')})"),
    }


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """An aligned text table of dict rows."""
    if not rows:
        return "no runs"
    cols = list(rows[0])
    text = [[c for c in cols]] + [["-" if r[c] is None else f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(cols))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in text)


def cmd_runs(config: Config, environ: Mapping[str, str], horizons: Sequence[str], last: int, as_json: bool) -> int:
    """Print the recent runs of the horizons, newest first."""
    client = mlflow_client(tracking_uri(config, environ))
    rows = [run_row(h, r) for h, r in _recent_runs(client, horizons, last)]
    rows.sort(key=lambda r: r["date"], reverse=True)
    print(json.dumps(rows, indent=2) if as_json else format_rows(rows))
    return 0


def cmd_compare(config: Config, environ: Mapping[str, str], metric: str, as_json: bool) -> int:
    """Print each horizon's models side by side on `metric`: the latest run and the best run."""
    client = mlflow_client(tracking_uri(config, environ))
    rows = []
    for horizon in HORIZONS:
        latest = _recent_runs(client, [horizon], 1)
        best = best_run(horizon, metric, config=config, environ=environ)
        if not latest:
            continue
        run = latest[0][1]
        models = [m for m in run.data.params.get("models", "").split(",") if m]
        row: dict[str, Any] = {"horizon": horizon}
        for name in [*models, horizon]:
            row["Ensemble" if name == horizon else name] = run.data.metrics.get(f"{name}_{metric}")
        row["best_ensemble"] = best.data.metrics.get(f"{horizon}_{metric}") if best else None
        row["best_run"] = best.info.run_id[:8] if best else "-"
        rows.append(row)
    print(json.dumps(rows, indent=2) if as_json else format_rows(rows) if rows else "no runs")
    return 0


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def cmd_stats(config: Config, environ: Mapping[str, str], *, now: datetime, as_json: bool) -> int:
    """Runs per experiment, success rate, last run age, database and artifact sizes."""
    client = mlflow_client(tracking_uri(config, environ))
    rows = []
    for horizon in HORIZONS:
        experiment = client.get_experiment_by_name(EXPERIMENT_PREFIX + horizon)
        runs = client.search_runs([experiment.experiment_id], max_results=10000) if experiment else []
        finished = sum(r.info.status == "FINISHED" for r in runs)
        newest = max((r.info.start_time for r in runs), default=None)
        age = None if newest is None else round((now.timestamp() * 1000 - newest) / 3_600_000, 1)
        rows.append({"experiment": EXPERIMENT_PREFIX + horizon, "runs": len(runs), "success_rate": finished / len(runs) if runs else None, "last_run_age_h": age})
    db = config.data_dir / "mlflow" / "mlflow.db"
    sizes = {"database_bytes": db.stat().st_size if db.exists() else 0, "artifacts_bytes": dir_size(config.data_dir / "mlflow" / "mlruns")}
    if as_json:
        print(json.dumps({"experiments": rows, **sizes}, indent=2))
    else:
        print(format_rows(rows))
        print(f"database {sizes['database_bytes'] / 1e6:.2f} MB, artifacts {sizes['artifacts_bytes'] / 1e6:.2f} MB")
    return 0


def cmd_backup(config: Config, dest: Path, *, now: datetime) -> int:
    """Write one dated archive with a consistent copy of the MLflow database (SQLite online backup) and the artifacts."""
    import sqlite3
    import tarfile

    db = config.data_dir / "mlflow" / "mlflow.db"
    if not db.exists():
        print(f"fxcu: no MLflow database at {db}", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"fxcu_mlflow_{now:%Y%m%d_%H%M%S}.tar.gz"
    with tempfile_dir(config.data_dir) as tmp:
        copy = tmp / "mlflow.db"
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as source, contextlib.closing(sqlite3.connect(copy)) as target:
            source.backup(target)  # INFO: SQLite's online backup is consistent while a run writes
            tables = {row[0] for row in target.execute("select name from sqlite_master where type = 'table'")}
        if not {"alembic_version", "experiments", "runs"} <= tables:  # an empty copy is no backup
            why = "no experiments or runs table"
            print(f"fxcu: {db} is not an MLflow database ({why}): no backup written", file=sys.stderr)
            return 1
        with atomic_path(archive) as partial, tarfile.open(partial, "w:gz") as tar:
            tar.add(copy, arcname="mlflow/mlflow.db")
            mlruns = config.data_dir / "mlflow" / "mlruns"
            if mlruns.exists():
                tar.add(mlruns, arcname="mlflow/mlruns")
    print(f"backup written: {archive} ({archive.stat().st_size / 1e6:.2f} MB)")
    return 0

Level = Literal["OK", "WARNING", "CRITICAL"]
LEVEL_CODE: dict[str, int] = {"OK": 0, "WARNING": 1, "CRITICAL": 2}


def check_age(name: str, last: date | None, *, today: date, warn_days: int, critical_days: int | None, missing: Level) -> tuple[str, Level, str]:
    """Grade a series by the age of its last date (pure)."""
    if last is None:
        return name, missing, "no data"
    age = (today - last).days
    level: Level = "CRITICAL" if critical_days is not None and age > critical_days else "WARNING" if age > warn_days else "OK"
    return name, level, f"last {last} ({age} days old{', stale' if level != 'OK' else ''})"


def check_runs(status: Mapping[str, Any], *, now: datetime, max_age_hours: float = 80) -> Iterator[tuple[str, Level, str]]:
    """Grade the last run of each horizon from the status file (pure).

    80 hours: a weekday cron's Friday run is still fresh on Monday evening.
    """
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
            yield name, "OK", f"{age:.1f} h ago, tracked, forecast {entry.get('forecast')} for {entry.get('target_date')}{degraded}"


def _entry_time(entry: Any) -> datetime | None:
    """The time of a status entry, or None when the entry is not a mapping with an ISO time (with zone)."""
    try:
        stamp = datetime.fromisoformat(entry["time"])
    except (TypeError, KeyError, ValueError):
        return None
    return stamp if stamp.tzinfo is not None else None


def overall(checks: Sequence[tuple[str, Level, str]]) -> Level:
    """The worst level of all checks."""
    return max((level for _, level, _ in checks), key=LEVEL_CODE.__getitem__, default="OK")


def read_series_stats(path: Path) -> tuple[date | None, int]:
    """Last date and row count of a warehouse file; raises on an unreadable one."""
    import polars as pl

    if not path.exists():
        return None, 0
    last, rows = pl.scan_parquet(path).select(pl.col(DATE).max(), pl.len()).collect().row(0)
    return last, rows


def cmd_check(config: Config, environ: Mapping[str, str], *, now: datetime, network: bool, as_json: bool) -> int:
    """Health probe: one line per check, then the overall status; exit 0 OK, 1 WARNING, 2 CRITICAL.

    Imports neither mlflow nor statsforecast, so monitoring can call it often.
    """
    import shutil
    import sqlite3

    checks: list[tuple[str, Level, str]] = []
    today = now.date()
    for name, file, missing, critical in (("usdclp data", USDCLP_CACHE, "CRITICAL", 30), ("copper data", COPPER_CACHE, "WARNING", None)):
        try:
            last, rows = read_series_stats(config.warehouse / file)
        except Exception as exc:  # noqa: BLE001 -- any unreadable file is a finding, not a crash
            checks.append((name, "CRITICAL", f"{file} unreadable ({type(exc).__name__})"))
            continue
        item = check_age(name, last, today=today, warn_days=5, critical_days=critical, missing=missing)  # type: ignore[arg-type]
        checks.append((item[0], item[1], f"{item[2]}, {rows} rows" if rows else item[2]))
    status = read_status(config)
    timed = [(stamp, e) for e in status.values() if (stamp := _entry_time(e)) is not None]
    latest = max(timed, key=lambda pair: pair[0])[1] if timed else None
    listed = latest.get("degraded") if latest is not None else None
    degraded = [str(d) for d in listed] if isinstance(listed, list) else []
    if latest is not None and {"no copper", "stale copper"} & set(degraded):
        which = "no" if "no copper" in degraded else "stale"
        checks.append(("copper available", "WARNING", f"last run had {which} copper"))
    elif latest is not None:
        checks.append(("copper available", "OK", "monthly (degraded)" if "monthly copper" in degraded else "yes"))
    checks += check_runs(status, now=now)
    if environ.get("MLFLOW_TRACKING_URI"):
        checks.append(("mlflow database", "OK", f"remote tracking at {redact_uri(environ['MLFLOW_TRACKING_URI'])} (not probed)"))
    else:
        db = config.data_dir / "mlflow" / "mlflow.db"
        if not db.exists():
            checks.append(("mlflow database", "WARNING", f"missing ({db}); run `fxcu init`"))
        else:
            try:
                with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
                    count = conn.execute("select count(*) from runs").fetchone()[0]
                    versioned = conn.execute("select 1 from sqlite_master where name = 'alembic_version'").fetchone()
                    # no schema version: half-made by a crash
                    if not versioned or not conn.execute("select version_num from alembic_version").fetchone():
                        raise sqlite3.DatabaseError("no schema version: half-made; move it aside and run `fxcu init`")
                size = db.stat().st_size / 1e6
                checks.append(("mlflow database", "WARNING" if size > 100 else "OK", f"{count} runs, {size:.1f} MB{' (over 100 MB)' if size > 100 else ''}"))
            except sqlite3.Error as exc:
                checks.append(("mlflow database", "CRITICAL", f"unreadable ({exc})"))
    existing = next(p for p in (config.data_dir, *config.data_dir.parents) if p.exists())  # INFO: a data dir not made yet
    free = shutil.disk_usage(existing).free
    checks.append(("disk", "CRITICAL" if free < 100e6 else "WARNING" if free < 1e9 else "OK", f"{free / 1e9:.1f} GB free"))
    if network:
        checks += probe_sources(config)
    level = overall(checks)
    if as_json:
        print(json.dumps({"status": level, "checks": [{"name": n, "level": lv, "message": m} for n, lv, m in checks]}, indent=2))
    else:
        for name, lv, message in checks:
            print(f"{lv:<8} {name}: {message}")
        print(f"{level}: {sum(lv != 'OK' for _, lv, _ in checks)} of {len(checks)} checks need attention" if level != "OK" else f"OK: {len(checks)} checks passed")
    return LEVEL_CODE[level]


def probe_sources(config: Config, timeout: float = 5.0) -> list[tuple[str, Level, str]]:
    """Ask each source for a few days with a short timeout, no retries."""
    import httpx

    probes = [
        ("yahoo CLP=X", f"{config.yahoo_url}/v8/finance/chart/{USDCLP_SYMBOL}", {"interval": "1d", "range": "5d"}, parse_yahoo_chart),
        ("yahoo HG=F", f"{config.yahoo_url}/v8/finance/chart/{COPPER_SYMBOL}", {"interval": "1d", "range": "5d"}, parse_yahoo_chart),
        ("mindicador", f"{config.mindicador_url}/api/dolar", {}, parse_mindicador),
    ]
    if config.fred_api_key:
        params = {"series_id": FRED_COPPER_SERIES, "api_key": config.fred_api_key, "file_type": "json", "sort_order": "desc", "limit": "3"}
        probes.append(("fred", f"{config.fred_url}/fred/series/observations", params, parse_fred_observations))
    found: list[tuple[str, Level, str]] = []
    # the run's own bounded reader (size cap, wall-clock end), one try: a hostile body costs a probe no more than a run
    fetch_json = make_fetch_json(dataclasses.replace(config, attempts=1, timeout=timeout, network_budget=2 * timeout))
    with httpx.Client(timeout=timeout, headers={"User-Agent": USER_AGENT}) as client:
        for name, url, params, parse in probes:
            try:
                rows = parse(fetch_json(client, url, params)).height
                found.append((f"source {name}", "OK", f"{rows} rows"))
            except Exception as exc:  # noqa: BLE001 -- every failure is a finding
                found.append((f"source {name}", "WARNING", describe_error(exc, config.fred_api_key)))
    return found

# -- CLI -----------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (monitoring and cron mail read the first line)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    run.add_argument("horizon", type=run_horizons, metavar="{7d,15d,30d,90d,all}", help="calendar days ahead, or all four")
    run.add_argument("--skip-email", action="store_true", help="do not email the report even if SMTP is configured")
    check = as_json(sub.add_parser("check", help="health probe: 0 OK, 1 WARNING, 2 CRITICAL"))
    check.add_argument("--network", action="store_true", help="also probe each source with a short timeout")
    sub.add_parser("init", help="create the MLflow database and experiments (idempotent)")
    runs = as_json(sub.add_parser("runs", help="recent MLflow runs as a table"))
    runs.add_argument("horizon", nargs="?", type=run_horizons, metavar="{7d,15d,30d,90d,all}")
    runs.add_argument("--last", type=positive_int, default=10, help="runs per horizon (default 10)")
    compare = as_json(sub.add_parser("compare", help="horizons and models side by side on one metric"))
    compare.add_argument("--metric", default="rmse", choices=SHORT_METRICS)
    as_json(sub.add_parser("stats", help="runs per experiment, success rate, sizes"))
    backup = sub.add_parser("backup", help="consistent archive of the MLflow database and artifacts")
    backup.add_argument("dest", nargs="?", type=Path, default=None, help="folder for the archive (default DATA/backups)")
    return parser


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def run_horizons(text: str) -> list[str]:
    """argparse type: '7d' -> ['7d'], 'all' -> all four horizons."""
    if text.strip().lower() == "all":
        return list(HORIZONS)
    try:
        parse_horizon(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return [text.strip().lower()]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Parse arguments, build the config and client, dispatch, and return the exit code."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = Config.from_env(environ)
    except ConfigError as exc:
        print(f"fxcu: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "offline", False):
        config = dataclasses.replace(config, offline=True)
    try:
        not_a_dir = config.data_dir.exists() and not config.data_dir.is_dir()
    except OSError as exc:  # a component over 255 bytes (ENAMETOOLONG), a loop below the resolved path
        print(f"fxcu: FXCU_DATA_DIR {config.data_dir} is unusable ({exc.strerror or exc})", file=sys.stderr)
        return 2
    if not_a_dir:
        print(f"fxcu: FXCU_DATA_DIR {config.data_dir} is not a directory", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    if args.command != "check":  # INFO: the monitoring probe only reads
        clean_leftovers(config.data_dir)
    try:
        with _sigterm_as_exception():
            return dispatch(args, config, environ, now)
    except KeyboardInterrupt:
        print("fxcu: interrupted (Ctrl-C): stopped, temp files removed, nothing half-written kept", file=sys.stderr)
        return 130
    except Terminated:
        print("fxcu: terminated (SIGTERM): stopped, temp files removed, nothing half-written kept", file=sys.stderr)
        return 143
    except (TimeoutError, ValueError) as exc:
        print(f"fxcu: {redact(str(exc), config.fred_api_key)}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"fxcu: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


class Terminated(BaseException):  # like KeyboardInterrupt: not an Exception, so no `except Exception` swallows it
    """SIGTERM, raised in the main thread so that every `finally` (temp files, locks) runs."""


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread only
        yield
        return

    def handler(signum: int, frame: Any) -> NoReturn:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def dispatch(args: argparse.Namespace, config: Config, environ: Mapping[str, str], now: datetime) -> int:
    """Call the command function for the parsed arguments."""
    if args.command == "check":
        return cmd_check(config, environ, now=now, network=args.network, as_json=args.json)
    if args.command in {"fetch", "validate", "run"}:
        with make_client(config) as client:
            if args.command == "fetch":
                return cmd_fetch(config, client, now=now)
            if args.command == "validate":
                return cmd_validate(config, client, now=now)
            return cmd_run(config, client, args.horizon, now=now, environ=environ, skip_email=args.skip_email, as_json=args.json)
    commands = {
        "init": lambda: cmd_init(config, environ),
        "runs": lambda: cmd_runs(config, environ, args.horizon or list(HORIZONS), args.last, args.json),
        "compare": lambda: cmd_compare(config, environ, args.metric, args.json),
        "stats": lambda: cmd_stats(config, environ, now=now, as_json=args.json),
        "backup": lambda: cmd_backup(config, args.dest or config.data_dir / "backups", now=now),
    }
    try:
        # INFO: bounded like tracking: MLflow retries an unreachable server or a locked database for minutes
        return _bounded(max(config.tracking_timeout, 60.0), f"fxcu {args.command}", commands[args.command])
    except (TimeoutError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 -- MlflowException, sqlite3 and SQLAlchemy errors: one line, not a traceback
        text = redact(redact_uri(str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""), config.fred_api_key)
        print(f"fxcu: {args.command} failed ({type(exc).__name__}: {text})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
