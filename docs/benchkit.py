"""Shared builders of the bench scripts in docs/: the real histories, a real warehouse, local fake sources.

Built only from fxcu's public functions and the real data in ../shared/data (or FXCU_SHARED_DATA), the
same inputs as the test suite's builders in fxcu_test.py, so a bench and a test see the same numbers.
Importing it puts the repository root on sys.path (the benches run as scripts from anywhere).
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import socket
import sys
import threading
import urllib.parse
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402  (after the sys.path change, like fxcu)

import fxcu  # noqa: E402

SHARED = Path(os.environ.get("FXCU_SHARED_DATA") or ROOT.parent / "shared" / "data")
CLP_CSV, HGF_CSV = "usdclp_clpx_daily_2006_2024.csv", "copper_hgf_daily_2000_2026.csv"
FRED_KEY = "abcdefghijklmnopqrstuvwxyz012345"  # fake, 32 lower-case alphanumerics like a real key
CACHE_END = date(2024, 7, 4)  # a warehouse one fetch behind the real CLP=X file (which has no 2024-07-05)
YAHOO_CLP, YAHOO_HG = "/v8/finance/chart/CLP=X", "/v8/finance/chart/HG=F"
MINDICADOR, FRED = "/api/dolar", "/fred/series/observations"


# -- The real histories ------------------------------------------------------------------------


def load_json(*parts: str) -> dict:
    return json.loads(SHARED.joinpath(*parts).read_text())


def real_usdclp_payload() -> dict:
    """The real CLP=X history (2006-2024) in the shape of a Yahoo chart body."""
    raw = pl.read_csv(SHARED / CLP_CSV)
    stamps = raw["Date"].str.to_datetime("%Y-%m-%d %H:%M:%S%z").dt.epoch("s").to_list()
    quote = {"close": raw["Close"].to_list(), "open": raw["Open"].to_list()}
    meta = {"symbol": "CLP=X", "currency": "CLP", "exchangeTimezoneName": "Europe/London"}
    return {"chart": {"result": [{"meta": meta, "timestamp": stamps, "indicators": {"quote": [quote]}}], "error": None}}


def real_usdclp() -> pl.DataFrame:
    """The real CLP=X history, parsed and cleaned as `fetch` does."""
    return fxcu.clean_prices(fxcu.parse_yahoo_chart(real_usdclp_payload())).frame


def real_copper() -> pl.DataFrame:
    """The real HG=F history (USD/lb), cleaned."""
    raw = pl.read_csv(SHARED / HGF_CSV)
    frame = raw.select(pl.col("Date").str.to_date().alias(fxcu.DATE), pl.col("Close").alias(fxcu.CLOSE))
    return fxcu.clean_prices(frame).frame


def cached_usdclp() -> pl.DataFrame:
    """The real CLP=X history up to CACHE_END: what a warehouse one fetch behind holds."""
    return real_usdclp().filter(pl.col(fxcu.DATE) <= CACHE_END)


def clpx_tail_payload(bars: int = 14) -> dict:
    """The last `bars` real CLP=X bars (14: 2024-06-26 .. 2024-07-15) as a Yahoo chart body: an incremental answer."""
    body = real_usdclp_payload()
    result = body["chart"]["result"][0]
    result["timestamp"] = result["timestamp"][-bars:]
    result["indicators"]["quote"][0] = {k: v[-bars:] for k, v in result["indicators"]["quote"][0].items()}
    return body


def chart_payload(frame: pl.DataFrame, tz: str = "America/New_York", symbol: str = "HG=F") -> dict:
    """A Yahoo chart body (HG=F unless told) for a frame of local dates, each stamped at local midnight."""
    stamps = frame[fxcu.DATE].cast(pl.Datetime("us")).dt.replace_time_zone(tz).dt.convert_time_zone("UTC")
    meta = {"symbol": symbol, "currency": "USD", "exchangeTimezoneName": tz}
    quote = {"close": frame[fxcu.CLOSE].to_list()}
    result = {"meta": meta, "timestamp": stamps.dt.epoch("s").to_list(), "indicators": {"quote": [quote]}}
    return {"chart": {"result": [result], "error": None}}


def write_real_warehouse(data_dir: Path) -> None:
    """A warehouse as a fetch on 2024-07-16 leaves it: real CLP=X to 2024-07-15 and HG=F copper to 2024-07-15."""
    fetched = datetime(2024, 7, 16, tzinfo=UTC)
    usdclp = fxcu.with_provenance(real_usdclp(), "yahoo", datetime(2024, 1, 1, tzinfo=UTC))
    fxcu.write_parquet_atomic(
        usdclp.with_columns(pl.lit(fetched).alias(fxcu.FETCHED_AT)), data_dir / "warehouse" / fxcu.USDCLP_CACHE
    )
    copper = real_copper().filter(pl.col(fxcu.DATE) <= date(2024, 7, 15))
    fxcu.write_parquet_atomic(
        fxcu.with_provenance(copper, "yahoo", datetime(2024, 1, 1, tzinfo=UTC)),
        data_dir / "warehouse" / fxcu.COPPER_CACHE,
    )


def run_record(horizon: str, rmse: float) -> fxcu.RunRecord:
    """A small finished run of `horizon` (Naive only, forecast 900 CLP) as `log_run` takes it."""
    metrics = {f"{horizon}_rmse": rmse, f"{horizon}_ratio_to_naive": rmse / 20, "Naive_rmse": 20.0}
    metrics |= {f"{horizon}_coverage_80": 0.8, f"{horizon}_coverage_95": 0.95}
    metrics |= {"forecast": 900.0, "forecast_lo_80": 887.5, "forecast_hi_80": 912.5}
    params = {"horizon": horizon, "models": "Naive", "usdclp_source": "yahoo", "copper_source": "yahoo"}
    params |= {"copper_frequency": "daily", "data_last_date": "2026-01-19", "target_date": "2026-01-26"}
    tags = {"fxcu.status": "ok", "fxcu.degraded": "none", "fxcu.served_models": "Naive"}
    return fxcu.RunRecord(horizon, f"{horizon} · data 2026-01-19", params, metrics, tags, ())


def univariate_models() -> list:
    """Naive, AutoETS, AutoARIMA and AutoTheta as fxcu backtests them (fxcu.MODELS), for statsforecast baselines."""
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, Naive

    models = [Naive(), AutoETS(season_length=1), AutoARIMA(season_length=1), AutoTheta(season_length=1)]
    assert [str(m) for m in models] == list(fxcu.MODELS), "fxcu's models changed: update benchkit"
    return models


def copper_models() -> list:
    """fxcu's copper model: a random walk plus lagged log copper, ARIMA(0,1,0) with the exogenous column."""
    from statsforecast.models import ARIMA

    return [ARIMA(order=(0, 1, 0), season_length=1, alias=fxcu.COPPER_MODEL)]


def vm_rss_kib() -> int:
    """This process's resident set size now (VmRSS, KiB); 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as handle:
            return next((int(line.split()[1]) for line in handle if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


# -- Local fake sources ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    """One scripted answer: status, body (text, bytes or JSON), content type, delay, a slow trickle, an encoding."""

    status: int = 200
    body: str | bytes | dict = b""
    content_type: str = "application/json;charset=utf-8"
    delay: float = 0.0
    encoding: str = ""  # sent as Content-Encoding; the body is sent as given (already compressed)
    trickle: float = 0.0  # seconds between chunks of 16 bytes: a server that never stops for a whole read timeout

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return self.body.encode() if isinstance(self.body, str) else json.dumps(self.body).encode()


class FakeSources:
    """Yahoo, FRED and mindicador on one 127.0.0.1 port (HTTPS with a `tls` server context): a Reply per path prefix."""

    def __init__(self, routes: dict[str, Reply], tls=None):
        self.routes, self.requests, self.stop = dict(routes), [], threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                fake.requests.append(self.path)
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                reply = next((r for p, r in fake.routes.items() if path.startswith(p)), Reply(404, "no route"))
                if reply.delay:
                    fake.stop.wait(reply.delay)
                body = reply.payload()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    if reply.encoding:
                        self.send_header("Content-Encoding", reply.encoding)
                    self.end_headers()
                    chunks = [body[i : i + 16] for i in range(0, len(body), 16)] if reply.trickle else [body]
                    for chunk in chunks:
                        if reply.trickle and fake.stop.wait(reply.trickle):
                            break
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except OSError:  # the client gave up (a timeout)
                    self.close_connection = True

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def get_request(self):
                sock, address = self.socket.accept()
                return (sock if tls is None else tls.wrap_socket(sock, server_side=True)), address

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
    mindicador = load_json("mindicador", "dolar_200_last31.json")
    return {
        YAHOO_CLP: Reply(body=json.dumps(real_usdclp_payload())),
        YAHOO_HG: Reply(body=json.dumps(chart_payload(real_copper()))),
        MINDICADOR + "/2026": Reply(body=json.dumps(mindicador)),
        MINDICADOR: Reply(body=json.dumps({**mindicador, "serie": []})),  # other years: none recorded
        FRED: Reply(body=json.dumps(fred_pcoppusdm_body())),
    }


def routes(**changes: Reply) -> dict[str, Reply]:
    """good_routes with some sources (clp, hg, mindicador, fred) answering otherwise."""
    named = {"clp": [YAHOO_CLP], "hg": [YAHOO_HG], "mindicador": [MINDICADOR + "/2026", MINDICADOR], "fred": [FRED]}
    return {**good_routes(), **{path: reply for k, reply in changes.items() for path in named[k]}}


def fault_env(data_dir: Path, url: str, **extra: str) -> dict[str, str]:
    """All three sources at `url`, the (fake) FRED key set, any data age accepted (the data ends in 2024), no seed."""
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
        **extra,
    }


def clean_environ() -> dict[str, str]:
    """This process's environment without fxcu's, MLflow's, FRED's or proxy settings."""
    skip = ("FXCU_", "MLFLOW_", "FRED_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(skip)}


def closed_url() -> str:
    """A 127.0.0.1 URL nothing listens on: connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@functools.cache
def gzip_bomb() -> bytes:
    """About 1 MB of gzip that inflates to 1 GiB: `[` then spaces then `]`, valid JSON if read whole."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)  # 16: a gzip header
    block = b" " * 2**24
    parts = [packer.compress(b"[")] + [packer.compress(block) for _ in range(64)]
    return b"".join([*parts, packer.compress(b"]"), packer.flush()])


def make_tls_pair(folder: Path):
    """Write a self-signed certificate for 127.0.0.1 into `folder`; return its path and a server context using it."""
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fxcu bench")])
    now = datetime.now(UTC)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(san, critical=False)
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
