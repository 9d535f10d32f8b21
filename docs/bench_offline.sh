#!/usr/bin/env bash
# Issue 22's figure: `run 7d` with no network (every source at a name that does not resolve) against
# `run 7d --offline`, alternating, 5 rounds, in a fresh temporary data dir; prints one line per run.
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export FXCU_DATA_DIR=$WORK/data FXCU_YAHOO_URL=http://fxcu-offline.invalid \
       FXCU_MINDICADOR_URL=http://fxcu-offline.invalid FXCU_FRED_URL=http://fxcu-offline.invalid
"$PY" "$HERE/fxcu.py" run 7d --skip-email --offline >/dev/null 2>&1  # day one: the seed stored, the database made
for round in 1 2 3 4 5; do
  for mode in no-network offline; do
    flag=; [ "$mode" = offline ] && flag=--offline
    start=$(date +%s.%N)
    "$PY" "$HERE/fxcu.py" run 7d --skip-email $flag >/dev/null 2>"$WORK/err"
    end=$(date +%s.%N)
    echo "round $round $mode $(awk "BEGIN {print $end - $start}") s," \
         "Retrying lines $(grep -c Retrying "$WORK/err" || true), No network lines $(grep -c 'No network' "$WORK/err" || true)"
  done
done
