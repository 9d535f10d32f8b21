"""Cut the shipped seed history from the real public data in ../real (see README.md beside this file).

    python data/seed/build_seed.py [DATA_DIR]  # default: data/real

Reproducible: the same input files give byte-identical CSVs.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
import fxcu  # noqa: E402

START = date(2013, 7, 1)  # about eleven years of USD/CLP: HISTORY (2520 trading days) plus a margin


def usdclp(shared: Path) -> pl.DataFrame:
    """CLP=X closes on London dates (the file's UTC stamps are London midnight), cleaned as fxcu cleans a fetch."""
    raw = pl.read_csv(shared / "usdclp_clpx_daily_2006_2024.csv")
    days = raw["Date"].str.to_datetime("%Y-%m-%d %H:%M:%S%z").dt.convert_time_zone("Europe/London").dt.date()
    return fxcu.clean_prices(pl.DataFrame({fxcu.DATE: days, fxcu.CLOSE: raw["Close"].cast(pl.Float64)})).frame


def copper(shared: Path) -> pl.DataFrame:
    """HG=F closes (USD/lb) on New York dates, cleaned as fxcu cleans a fetch."""
    raw = pl.read_csv(shared / "copper_hgf_daily_2000_2026.csv")
    return fxcu.clean_prices(
        raw.select(pl.col("Date").str.to_date().alias(fxcu.DATE), pl.col("Close").cast(pl.Float64).alias(fxcu.CLOSE))
    ).frame


def main(shared: Path) -> None:
    for name, frame in (("usdclp", usdclp(shared)), ("copper", copper(shared))):
        # INFO: Yahoo's closes are float32 (497.239990234375): four decimals keep every digit they hold
        seed = frame.filter(pl.col(fxcu.DATE) >= START).select(fxcu.DATE, pl.col(fxcu.CLOSE).round(4))
        seed.write_csv(HERE / fxcu.SEED_FILES[name])
        print(f"{fxcu.SEED_FILES[name]}: {seed.height} rows, {seed[fxcu.DATE].min()} .. {seed[fxcu.DATE].max()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "real")
