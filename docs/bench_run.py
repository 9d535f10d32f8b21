#!/usr/bin/env python3
"""Issue 13: `python fxcu.py run 7d --offline` next to the import floor, before and after; prints Markdown.

Usage (from anywhere):
    python docs/bench_run.py [ROUNDS] [BEFORE_FXCU_PY]

ROUNDS (default 7) interleaved rounds of three commands, the order rotating every round, after one
uncounted round: the floor `python -c "import polars, statsforecast, mlflow"`, this tree's
`fxcu.py run 7d --offline`, and, when BEFORE_FXCU_PY is given (e.g. `git show cc534ea:fxcu.py >
/tmp/before/fxcu.py`), that older module's. Each `fxcu.py` gets its own temporary data dir with
a migrated MLflow database (`fxcu.py init`) and no warehouse: the uncounted round builds the
warehouse from the shipped seed (data/seed: real USD/CLP to 2024-07-15 and HG=F copper), so
the counted runs read it offline. FXCU_TRACKING_TIMEOUT=60, no MLFLOW_TRACKING_URI; commands run
from another working directory.

Stage shares: this tree's run logs `Stage times: ...` (INFO) at its end; an older run's stage
seconds are read from its MLflow run's `seconds_*` metrics. A share is the stage's median
seconds over the median wall time; "rest" is the wall time no stage covers (interpreter start,
the imports made before the first stage, exit).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
FLOOR = "import polars, statsforecast, mlflow"


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str, str]:
    """Wall seconds, stdout and stderr of one command, which must exit 0."""
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{cmd} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, done.stdout, done.stderr


def stages_from_log(stderr: str) -> dict[str, float]:
    """The `Stage times: fetch 0.12 s, ...` line of a run, as {stage: seconds}."""
    line = [x for x in stderr.splitlines() if "Stage times:" in x][-1]
    return {m[1]: float(m[2]) for m in re.finditer(r"(\w+) ([\d.]+) s", line.split("Stage times:")[1])}


def stages_from_mlflow(data_dir: Path, stdout: str) -> dict[str, float]:
    """The `seconds_*` metrics of the run whose id the summary printed."""
    (run_id,) = re.findall(r"tracked: yes, run (\w+)", stdout)
    with sqlite3.connect(data_dir / "mlflow" / "mlflow.db") as conn:
        rows = conn.execute("select key, value from metrics where run_uuid = ? and key like 'seconds_%'", (run_id,))
        return {key.removeprefix("seconds_"): value for key, value in rows}


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 7
    versions = {"after": ROOT / "fxcu.py"}
    if len(argv) > 1:
        versions["before"] = Path(argv[1]).resolve()
        if not (versions["before"].parent / "data" / "seed").exists():  # the older module finds its seed beside it
            shutil.copytree(ROOT / "data" / "seed", versions["before"].parent / "data" / "seed")
    root = Path(tempfile.mkdtemp(prefix="fxcu-bench-run-"))
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FXCU_", "MLFLOW_"))}
        envs = {name: base | {"FXCU_DATA_DIR": str(root / name), "FXCU_TRACKING_TIMEOUT": "60"} for name in versions}
        for name, module in versions.items():
            timed([PY, str(module), "init"], envs[name], root)
        commands = {"floor": lambda: timed([PY, "-c", FLOOR], base, root)}
        for name, module in versions.items():
            commands[name] = lambda n=name, m=module: timed([PY, str(m), "run", "7d", "--offline"], envs[n], root)
        walls: dict[str, list[float]] = {name: [] for name in commands}
        stages: dict[str, list[dict[str, float]]] = {name: [] for name in versions}
        order = list(commands)
        for index in range(rounds + 1):
            for name in order[index % len(order) :] + order[: index % len(order)]:
                seconds, out, err = commands[name]()
                if index == 0:
                    continue  # uncounted: builds the warehouse from the seed, warms the disk cache
                walls[name].append(seconds)
                if name == "after":
                    stages[name].append(stages_from_log(err))
                elif name == "before":
                    stages[name].append(stages_from_mlflow(root / name, out))
        report(walls, stages, rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(walls: dict[str, list[float]], stages: dict[str, list[dict[str, float]]], rounds: int) -> None:
    """Print the ratio table and the stage-share table."""
    floor = statistics.median(walls["floor"])
    print(f"{rounds} interleaved rounds after 1 uncounted; medians in seconds.\n")
    print("| command | median s | min–max s | ratio to floor |\n|---|---:|---|---:|")
    labels = {"floor": f'`python -c "{FLOOR}"`', "before": "`run 7d --offline`, before", "after": "`run 7d --offline`"}
    for name, values in walls.items():
        median = statistics.median(values)
        print(f"| {labels[name]} | {median:.2f} | {min(values):.2f}–{max(values):.2f} | {median / floor:.2f} |")
    for name, runs in stages.items():
        wall = statistics.median(walls[name])
        names = list(dict.fromkeys(k for run in runs for k in run))
        medians = {k: statistics.median(run.get(k, 0.0) for run in runs) for k in names}
        medians["rest"] = max(0.0, wall - sum(medians.values()))
        print(f"\nStages of `run 7d --offline` ({name}), median s and share of the median wall {wall:.2f} s:\n")
        print("| stage | median s | share |\n|---|---:|---:|")
        for k, v in medians.items():
            print(f"| {k} | {v:.2f} | {v / wall:.0%} |")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
