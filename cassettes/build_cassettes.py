"""Build the vcrpy cassettes in this directory from the real public data in data/real.

Run from the repository root:

    python cassettes/build_cassettes.py

The data directory is ``<repo>/data/real`` (copied from the public sources its
PROVENANCE.md names). The output is deterministic: running the script
twice gives byte-identical files. Each cassette is in vcrpy's format version 1, serialized
the way vcrpy itself serializes (``yaml.dump`` with the libyaml dumper when available,
sorted keys), preceded by ``#`` comment lines and with an extra top-level ``provenance``
key that vcrpy ignores.

Only the standard library and PyYAML are used.
"""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

try:  # the same choice vcrpy makes in vcr/serializers/yamlserializer.py
    from yaml import CDumper as _Dumper
except ImportError:  # pragma: no cover
    from yaml import Dumper as _Dumper

OUT_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "real"

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
SANTIAGO = ZoneInfo("America/Santiago")

YAHOO_CT = "application/json;charset=utf-8"
FRED_CT = "application/json; charset=UTF-8"
MINDICADOR_CT = "application/json; charset=utf-8"

CLPX_URI = "https://query1.finance.yahoo.com/v8/finance/chart/CLP=X?interval=1d&range=max"
HGF_URI = "https://query1.finance.yahoo.com/v8/finance/chart/HG=F?interval=1d&range=max"
COOKIE_URI, CRUMB_URI = "https://fc.yahoo.com", "https://query1.finance.yahoo.com/v1/test/getcrumb"
COOKIE_SET = "A3=d=placeholder-not-a-real-cookie; Max-Age=31557600; Domain=.yahoo.com; Path=/; SameSite=None; Secure"
# vcrpy rewrites the query (sorted) when filter_query_parameters removes api_key, so this
# is exactly what vcr records for ?series_id=PCOPPUSDM&api_key=...&file_type=json.
# Matching is on the sorted parsed query, so parameter order does not matter.
FRED_URI = "https://api.stlouisfed.org/fred/series/observations?file_type=json&series_id=PCOPPUSDM"
# Date at which the synthetic FRED body claims to have been fetched (unknown for the CSV
# snapshot; chosen after the last observation, 2026-07, would have been published).
FRED_REALTIME = "2026-08-14"

CLP_BAD_PRINTS = {date(2014, 4, 10), date(2016, 12, 22)}

PROVENANCE_COMMITS = {
    "clpx": "danny-1k/Currencies-16-07-2024 data/USDCLP.csv @ 03c1dc4f",
    "hgf": "alitalbi/storage_data_fy HG=F.csv @ 7b4873f0 (written by yfinance)",
    "pcopp": "hassan09070/DS_project data/raw/PCOPPUSDM.csv @ 7567f43e",
    "yf2": "gadicc/node-yahoo-finance2 test fixtures (real HTTP captures)",
    "pyfredapi": "gw-moore/pyfredapi @ 027d766f18b32f30c80d1e09dc973eb1585ead7f tests/cassettes",
    "mindicador": "tobarcid-spec/indicadores-cl data/dolar.json @ 2eb9529f",
}


# ----------------------------------------------------------------------------- helpers


def compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def num(x: float):
    """A number as a JavaScript/Jackson serializer writes it: integral floats without '.0'.

    Real Yahoo (``"low":[1518]`` in the GC=F capture) and mindicador (``"valor":952``) bodies
    do this, so a client must accept ints mixed with floats.
    """
    if x == int(x) and abs(x) < 2**53:
        return int(x)
    return x


def interaction(uri: str, code: int, message: str, headers: dict, body: str) -> dict:
    hdrs = {k: [v] for k, v in headers.items()}
    hdrs["content-length" if "content-type" in headers else "Content-Length"] = [str(len(body.encode("utf-8")))]
    return {
        "request": {"body": "", "headers": {}, "method": "GET", "uri": uri},
        "response": {
            "body": {"string": body},
            "headers": dict(sorted(hdrs.items())),
            "status": {"code": code, "message": message},
        },
    }


def write_cassette(name: str, comment: str, provenance: str, interactions: list) -> None:
    data = {"interactions": interactions, "provenance": provenance, "version": 1}
    text = yaml.dump(data, Dumper=_Dumper)
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.strip("\n").splitlines())
    (OUT_DIR / name).write_text(head + text, encoding="utf-8", newline="\n")


def read_fixture(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- sources


def load_clpx() -> list[dict]:
    rows = []
    with open(DATA_DIR / "usdclp_clpx_daily_2006_2024.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            ts = datetime.fromisoformat(r["Date"])
            assert ts.utcoffset() == timedelta(0), r["Date"]
            rows.append(
                {
                    "ts": int(ts.timestamp()),
                    "london_date": ts.astimezone(LONDON).date(),
                    "open": float(r["Open"]),
                    "high": float(r["High"]),
                    "low": float(r["Low"]),
                    "close": float(r["Close"]),
                }
            )
    assert len(rows) == 4666, len(rows)
    return rows


def load_hgf() -> list[dict]:
    rows = []
    with open(DATA_DIR / "copper_hgf_daily_2000_2026.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            d = date.fromisoformat(r["Date"])
            ts = int(datetime.combine(d, time(0), tzinfo=NEW_YORK).timestamp())
            assert datetime.fromtimestamp(ts, NEW_YORK).date() == d
            rows.append(
                {
                    "ts": ts,
                    "date": d,
                    "open": float(r["Open"]),
                    "high": float(r["High"]),
                    "low": float(r["Low"]),
                    "close": float(r["Close"]),
                    "volume": int(r["Volume"]),
                }
            )
    assert len(rows) == 6400, len(rows)
    return rows


def trading_period(start: int, tzname: str, offset: int) -> dict:
    end = start + 86340  # 23:59 local, as in the recorded currentTradingPeriod
    p = lambda s, e: {"timezone": tzname, "start": s, "end": e, "gmtoffset": offset}  # noqa: E731
    return {"pre": p(start, start), "regular": p(start, end), "post": p(end, end)}


def chart_body(template_meta: dict, overrides: dict, rows: list[dict], volume: bool) -> str:
    meta = dict(template_meta)
    meta.update(overrides)
    quote = {
        "open": [num(r["open"]) for r in rows],
        "volume": [r["volume"] if volume else 0 for r in rows],
        "close": [num(r["close"]) for r in rows],
        "low": [num(r["low"]) for r in rows],
        "high": [num(r["high"]) for r in rows],
    }
    body = {
        "chart": {
            "result": [
                {
                    "meta": meta,
                    "timestamp": [r["ts"] for r in rows],
                    "indicators": {
                        "quote": [quote],
                        "adjclose": [{"adjclose": [num(r["close"]) for r in rows]}],
                    },
                }
            ],
            "error": None,
        }
    }
    return compact(body)


def last_year(rows: list[dict], key) -> list[dict]:
    cutoff = key(rows[-1]) - timedelta(days=365)
    return [r for r in rows if key(r) > cutoff]


# ----------------------------------------------------------------------------- cassettes


def build_yahoo_clpx(rows: list[dict]) -> None:
    fx = read_fixture(DATA_DIR / "yahoo" / "chart_200_EURUSD=X_fx.json")
    tmpl = fx["response"]["bodyJson"]["chart"]["result"][0]["meta"]
    last = rows[-1]
    offset = int(datetime.fromtimestamp(last["ts"], LONDON).utcoffset().total_seconds())
    tzname = datetime.fromtimestamp(last["ts"], LONDON).tzname()  # GMT or BST
    yr = last_year(rows, lambda r: r["london_date"])
    overrides = {
        "currency": "CLP",
        "symbol": "CLP=X",
        "firstTradeDate": rows[0]["ts"],
        "regularMarketTime": last["ts"],
        "gmtoffset": offset,
        "timezone": tzname,
        "exchangeTimezoneName": "Europe/London",
        "regularMarketPrice": num(last["close"]),
        "fiftyTwoWeekHigh": num(max(r["high"] for r in yr)),
        "fiftyTwoWeekLow": num(min(r["low"] for r in yr)),
        "regularMarketDayHigh": num(last["high"]),
        "regularMarketDayLow": num(last["low"]),
        "regularMarketVolume": 0,
        "longName": "USD/CLP",
        "shortName": "USD/CLP",
        "chartPreviousClose": num(rows[0]["close"]),
        "currentTradingPeriod": trading_period(last["ts"], tzname, offset),
        "dataGranularity": "1d",
        "range": "max",
    }
    body = chart_body(tmpl, overrides, rows, volume=False)
    comment = f"""\
vcrpy cassette (format version 1) built by cassettes/build_cassettes.py -- do not edit by hand.
Request: GET {CLPX_URI} -> 200.
Bars: data/real/usdclp_clpx_daily_2006_2024.csv ({PROVENANCE_COMMITS["clpx"]}),
  all {len(rows)} rows unchanged: timestamp = unix seconds of the CSV Date column (UTC time of
  London midnight, e.g. 2006-05-15 23:00Z = London 2006-05-16); open/high/low/close from the CSV,
  volume 0, adjclose = close. Bad prints (5.46 on 2014-04-10, 5.0 on 2016-12-22) kept: they are real.
Body shape and meta: data/real/yahoo/chart_200_EURUSD=X_fx.json ({PROVENANCE_COMMITS["yf2"]}),
  meta copied and changed to symbol CLP=X, currency CLP, USD/CLP names, range max; fields that
  describe the moment of recording (regularMarket*, fiftyTwoWeek*, currentTradingPeriod, timezone)
  are derived from the last CSV bar ({last["london_date"]}); firstTradeDate = first bar.
Integral values are written without '.0' as real Yahoo bodies do. Response headers minimal."""
    write_cassette(
        "yahoo_clpx_max.yaml",
        comment,
        "Yahoo v8 chart CLP=X daily range=max: bars from danny-1k/Currencies-16-07-2024 "
        "data/USDCLP.csv @ 03c1dc4f (4666 real rows, timestamps kept), body shape/meta from the "
        "real EURUSD=X capture in gadicc/node-yahoo-finance2 fixtures; built by build_cassettes.py.",
        [interaction(CLPX_URI, 200, "OK", {"content-type": YAHOO_CT}, body)],
    )


def build_yahoo_hgf(rows: list[dict]) -> None:
    fx = read_fixture(DATA_DIR / "yahoo" / "chart_200_GC=F_future.json")
    tmpl = fx["response"]["bodyJson"]["chart"]["result"][0]["meta"]
    # The recorded GC=F bar for 2020-01-02 is stamped 1577941200 = 05:00Z = 00:00 New York.
    ts0 = fx["response"]["bodyJson"]["chart"]["result"][0]["timestamp"][0]
    assert datetime.fromtimestamp(ts0, NEW_YORK).time() == time(0), ts0
    last = rows[-1]
    local = datetime.fromtimestamp(last["ts"], NEW_YORK)
    offset = int(local.utcoffset().total_seconds())
    tzname = local.tzname()  # EST or EDT
    yr = last_year(rows, lambda r: r["date"])
    overrides = {
        "currency": "USD",
        "symbol": "HG=F",
        "exchangeName": "CMX",
        "fullExchangeName": "COMEX",
        "instrumentType": "FUTURE",
        "firstTradeDate": rows[0]["ts"],
        "regularMarketTime": last["ts"],
        "gmtoffset": offset,
        "timezone": tzname,
        "exchangeTimezoneName": "America/New_York",
        "regularMarketPrice": num(last["close"]),
        "fiftyTwoWeekHigh": num(max(r["high"] for r in yr)),
        "fiftyTwoWeekLow": num(min(r["low"] for r in yr)),
        "regularMarketDayHigh": num(last["high"]),
        "regularMarketDayLow": num(last["low"]),
        "regularMarketVolume": last["volume"],
        "shortName": "Copper Mar 26",
        "chartPreviousClose": num(rows[0]["close"]),
        "priceHint": 4,
        "currentTradingPeriod": trading_period(last["ts"], tzname, offset),
        "dataGranularity": "1d",
        "range": "max",
    }
    body = chart_body(tmpl, overrides, rows, volume=True)
    comment = f"""\
vcrpy cassette (format version 1) built by cassettes/build_cassettes.py -- do not edit by hand.
Request: GET {HGF_URI} -> 200.
Bars: data/real/copper_hgf_daily_2000_2026.csv ({PROVENANCE_COMMITS["hgf"]}),
  all {len(rows)} rows (CSV column order Date,Close,High,Low,Open,Volume) incl. the spurious
  Sunday row 2025-07-13 and zero-volume rows (real). timestamp = 00:00 America/New_York of the
  CSV date (zoneinfo), as Yahoo stamps COMEX daily bars (GC=F capture: 2020-01-02 -> 05:00Z).
  adjclose = close; volume from the CSV.
Body shape and meta: data/real/yahoo/chart_200_GC=F_future.json ({PROVENANCE_COMMITS["yf2"]}),
  meta copied and changed to symbol HG=F, shortName "Copper Mar 26", priceHint 4, range max;
  regularMarket*, fiftyTwoWeek*, currentTradingPeriod, timezone derived from the last CSV bar
  ({last["date"]}); firstTradeDate = first bar. Integral values written without '.0' as Yahoo does."""
    write_cassette(
        "yahoo_hgf_max.yaml",
        comment,
        "Yahoo v8 chart HG=F daily range=max: bars from alitalbi/storage_data_fy HG=F.csv @ 7b4873f0 "
        "(6400 real rows, stamped 00:00 America/New_York), body shape/meta from the real GC=F "
        "capture in gadicc/node-yahoo-finance2 fixtures; built by build_cassettes.py.",
        [interaction(HGF_URI, 200, "OK", {"content-type": YAHOO_CT}, body)],
    )


def build_fred_pcopp() -> None:
    tmpl = json.loads((DATA_DIR / "fred" / "observations_200_GDP_body.json").read_text("utf-8"))
    with open(DATA_DIR / "fred_pcoppusdm_monthly_1998_2026.csv", newline="", encoding="utf-8") as f:
        obs = [
            {
                "realtime_start": FRED_REALTIME,
                "realtime_end": FRED_REALTIME,
                "date": r["date"],
                "value": r["value"] if r["value"] != "" else ".",
            }
            for r in csv.DictReader(f)
        ]
    assert len(obs) == 343, len(obs)
    body = {k: v for k, v in tmpl.items()}
    body.update(
        {
            "realtime_start": FRED_REALTIME,
            "realtime_end": FRED_REALTIME,
            "count": len(obs),
            "offset": 0,
            "observations": obs,
        }
    )
    assert list(body) == list(tmpl)
    comment = f"""\
vcrpy cassette (format version 1) built by cassettes/build_cassettes.py -- do not edit by hand.
Request: GET {FRED_URI} -> 200 (api_key removed, as vcr
  filter_query_parameters=["api_key"] records it; vcr matches on the sorted query).
Observations: data/real/fred_pcoppusdm_monthly_1998_2026.csv ({PROVENANCE_COMMITS["pcopp"]}),
  all {len(obs)} rows, value strings copied character for character.
Body shape: data/real/fred/observations_200_GDP_body.json ({PROVENANCE_COMMITS["pyfredapi"]}),
  same keys and order; count={len(obs)}; realtime_start/realtime_end = {FRED_REALTIME} is NOT
  known (no recorded PCOPPUSDM response exists publicly) and was chosen for this cassette."""
    write_cassette(
        "fred_pcoppusdm.yaml",
        comment,
        "FRED series/observations PCOPPUSDM: values from hassan09070/DS_project "
        "data/raw/PCOPPUSDM.csv @ 7567f43e, body shape from the real GDP body in gw-moore/pyfredapi "
        f"cassettes @ 027d766f; realtime dates {FRED_REALTIME} invented; built by build_cassettes.py.",
        [interaction(FRED_URI, 200, "OK", {"Content-Type": FRED_CT}, compact(body))],
    )


def build_fred_bad_key() -> None:
    text = (DATA_DIR / "fred" / "ERRORS.md").read_text("utf-8")
    m = re.search(r"unregistered 32-char key: `([^`]+)`", text)
    assert m, "unregistered-key body not found in fred/ERRORS.md"
    body = m.group(1)
    json.loads(body)
    assert "Bad Request.  The value" in body and "https:\\/\\/" in body
    comment = f"""\
vcrpy cassette (format version 1) built by cassettes/build_cassettes.py -- do not edit by hand.
Request: GET {FRED_URI} -> 400 Bad Request (api_key removed as vcr records it).
Body: the real raw JSON text for an unregistered 32-character api_key, copied verbatim from
  data/real/fred/ERRORS.md (two spaces after each sentence, '\\/' escapes kept);
  Content-Type as in the real 400 in {PROVENANCE_COMMITS["pyfredapi"]}."""
    write_cassette(
        "fred_bad_key.yaml",
        comment,
        "FRED HTTP 400 for an unregistered api_key: body verbatim from data/real/fred/ERRORS.md "
        "(public captures cited there); built by build_cassettes.py.",
        [interaction(FRED_URI, 400, "Bad Request", {"Content-Type": FRED_CT}, body)],
    )


def build_mindicador_2026() -> None:
    body = (DATA_DIR / "mindicador" / "dolar_200_last31.json").read_text("utf-8")
    json.loads(body)
    uri = "https://mindicador.cl/api/dolar/2026"
    comment = f"""\
vcrpy cassette (format version 1) built by cassettes/build_cassettes.py -- do not edit by hand.
Request: GET {uri} -> 200.
Body: data/real/mindicador/dolar_200_last31.json unchanged ({PROVENANCE_COMMITS["mindicador"]}).
  It is a real response of /api/dolar (last 31 values, 2026-08-26 .. 2026-10-08), reused here
  for the year URL; a real /api/dolar/2026 response would hold every 2026 value."""
    write_cassette(
        "mindicador_dolar_2026.yaml",
        comment,
        "mindicador.cl dolar: real /api/dolar body from tobarcid-spec/indicadores-cl data/dolar.json "
        "@ 2eb9529f, unchanged, reused for /api/dolar/2026; built by build_cassettes.py.",
        [interaction(uri, 200, "OK", {"content-type": MINDICADOR_CT}, body)],
    )


def mindicador_year_body(template: dict, rows: list[dict], year: int) -> tuple[str, int, str]:
    picked = [r for r in rows if r["london_date"].year == year and r["london_date"] not in CLP_BAD_PRINTS]
    serie = []
    for r in sorted(picked, key=lambda r: r["london_date"], reverse=True):
        utc = datetime.combine(r["london_date"], time(0), tzinfo=SANTIAGO).astimezone(UTC)
        serie.append({"fecha": utc.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "valor": num(round(r["close"], 2))})
    body = {k: template[k] for k in ("version", "autor", "codigo", "nombre", "unidad_medida")}
    body["serie"] = serie
    return compact(body), len(serie), f"{picked[0]['london_date']} .. {picked[-1]['london_date']}"


def build_mindicador_2023_2024(rows: list[dict]) -> None:
    template = json.loads((DATA_DIR / "mindicador" / "dolar_200_last31.json").read_text("utf-8"))
    inter, spans = [], []
    for year in (2023, 2024):
        uri = f"https://mindicador.cl/api/dolar/{year}"
        body, n, span = mindicador_year_body(template, rows, year)
        spans.append(f"{year}: {n} values, {span}")
        inter.append(interaction(uri, 200, "OK", {"content-type": MINDICADOR_CT}, body))
    comment = f"""\
vcrpy cassette (format version 1) built by cassettes/build_cassettes.py -- do not edit by hand.
Requests: GET https://mindicador.cl/api/dolar/2023 and /api/dolar/2024 -> 200.
WARNING: the values are NOT the official dolar observado. They are Yahoo CLP=X daily closes from
  data/real/usdclp_clpx_daily_2006_2024.csv ({PROVENANCE_COMMITS["clpx"]}) for the rows whose
  London date falls in the year (bad prints 2014-04-10 / 2016-12-22 would be skipped), rounded
  to 2 decimals (integral values written without '.0', as mindicador does), put in mindicador's shape.
  {spans[0]}; {spans[1]} (the CSV ends there).
Shape: data/real/mindicador/dolar_200_last31.json ({PROVENANCE_COMMITS["mindicador"]}):
  version/autor/codigo/nombre/unidad_medida copied; serie newest first; fecha = 00:00
  America/Santiago of the date expressed in UTC with .000Z (03:00Z or 04:00Z, zoneinfo)."""
    write_cassette(
        "mindicador_dolar_2023_2024.yaml",
        comment,
        "mindicador.cl /api/dolar/2023 and /2024 in the real body shape, but the values are Yahoo "
        "CLP=X closes (danny-1k/Currencies-16-07-2024 @ 03c1dc4f) rounded to 2 decimals, NOT the "
        "official dolar observado; built by build_cassettes.py.",
        inter,
    )


def build_yahoo_404() -> None:
    fx = read_fixture(DATA_DIR / "yahoo" / "chart_404_not_found.json")
    body = fx["response"]["body"]
    ct = fx["response"]["headers"]["content-type"][0]
    assert ct == YAHOO_CT
    comment = f"""\
vcrpy cassette (format version 1) built by cassettes/build_cassettes.py -- do not edit by hand.
Request: GET {HGF_URI} -> 404 Not Found.
Body: the real raw body of data/real/yahoo/chart_404_not_found.json (recorded for symbol SI,
  16 Sep 2024, {PROVENANCE_COMMITS["yf2"]}), unchanged; content-type as recorded. Reused for HG=F."""
    write_cassette(
        "yahoo_404_not_found.yaml",
        comment,
        "Yahoo v8 chart 404: real body from gadicc/node-yahoo-finance2 fixture (symbol SI, 2024-09-16), "
        "reused for HG=F; built by build_cassettes.py.",
        [interaction(HGF_URI, 404, "Not Found", {"content-type": ct}, body)],
    )


def build_yahoo_429() -> None:
    text = (DATA_DIR / "yahoo" / "ERRORS_AND_429.md").read_text("utf-8")
    assert "429 19` -> a 19-byte body (= `Too Many Requests\\r\\n`)" in text
    body = "Too Many Requests\r\n"
    assert len(body.encode()) == 19
    comment = f"""\
vcrpy cassette (format version 1) built by cassettes/build_cassettes.py -- do not edit by hand.
Request: GET {CLPX_URI} -> 429 Too Many Requests, 3 identical
  interactions (a client retries; each is played once).
Body: plain text 'Too Many Requests\\r\\n' (19 bytes), not JSON, as documented in
  data/real/yahoo/ERRORS_AND_429.md (no recorded 429 file exists publicly; the text and
  length come from public logs cited there: moneymanagerex PR #7497, cmallwitz/Financials-
  Extension #160). content-type text/plain."""
    comment += f"""
Cookie and crumb (fxcu asks for them once when Yahoo's 429 says 'Too Many Requests', as yfinance
  does): GET {COOKIE_URI} -> 404 with an A3 cookie (fc.yahoo.com sets its cookie on a 404 page:
  karlwancl/YahooFinanceApi #61; the cookie value here is a placeholder, not a real cookie), then
  GET {CRUMB_URI} -> the same 429 text (cmallwitz/Financials-Extension #160:
  "GET /v1/test/getcrumb" 429 19), then the chart once more: 4 chart interactions in all."""

    def chart() -> dict:  # a fresh dict each time: yaml would write repeats as anchors
        return interaction(CLPX_URI, 429, "Too Many Requests", {"content-type": "text/plain"}, body)

    cookie = interaction(
        COOKIE_URI,
        404,
        "Not Found",
        {"content-type": "text/html; charset=utf-8", "set-cookie": COOKIE_SET},
        "<html>404</html>",
    )
    crumb = interaction(CRUMB_URI, 429, "Too Many Requests", {"content-type": "text/plain"}, body)
    write_cassette(
        "yahoo_429.yaml",
        comment,
        "Yahoo 429: plain-text body 'Too Many Requests\\r\\n' per public logs cited in "
        "data/real/yahoo/ERRORS_AND_429.md, 4 chart interactions around one cookie (placeholder) and "
        "one refused getcrumb; built by build_cassettes.py.",
        [chart(), cookie, crumb, chart(), chart(), chart()],
    )


def main() -> None:
    if not DATA_DIR.is_dir():
        raise SystemExit(f"data directory not found: {DATA_DIR}")
    clpx = load_clpx()
    hgf = load_hgf()
    build_yahoo_clpx(clpx)
    build_yahoo_hgf(hgf)
    build_fred_pcopp()
    build_fred_bad_key()
    build_mindicador_2026()
    build_mindicador_2023_2024(clpx)
    build_yahoo_404()
    build_yahoo_429()
    for p in sorted(OUT_DIR.glob("*.yaml")):
        print(f"{p.name}\t{p.stat().st_size}")


if __name__ == "__main__":
    main()
