#!/usr/bin/env python3
"""Issue 12 benchmark: wall time of `fxcu runs`, `compare` and `stats` next to `import mlflow`, in one run; prints Markdown.

Usage (from anywhere; the repository root is put on sys.path):
    python docs/bench_dashboard.py            # 7 interleaved rounds
    FXCU_BENCH_ROUNDS=3 python docs/bench_dashboard.py

The store: one real `fxcu.py run all --offline` on the real warehouse (CLP=X 2006-05-16 .. 2024-07-15,
HG=F to 2024-07-15, built by `benchkit.write_real_warehouse`), then its four runs logged again
(same params, 70 metrics, tags) until each experiment holds 25 runs, 100 in all: a few months of a
weekday cron. Each command runs as a fresh subprocess from another working directory with
FXCU_DATA_DIR set and no MLFLOW_TRACKING_URI, interleaved with `python -c "import mlflow"` and
`python -c "pass"`, so the ratios compare like with like on a noisy machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchkit  # noqa: E402  (the shared builders of the benches)

import fxcu  # noqa: E402

RUNS_PER_HORIZON = 25


def build_store(data: Path) -> None:
    """A real `run all`, then its runs re-logged up to RUNS_PER_HORIZON per experiment."""
    from mlflow.tracking import MlflowClient

    benchkit.write_real_warehouse(data)
    env = {**os.environ, "FXCU_DATA_DIR": str(data), "FXCU_TRACKING_TIMEOUT": "120"}
    subprocess.run(
        [sys.executable, str(ROOT / "fxcu.py"), "-q", "run", "all", "--offline", "--skip-email"],
        env=env,
        check=True,
        capture_output=True,
    )
    client = MlflowClient(tracking_uri=fxcu.tracking_store(fxcu.Config(data_dir=data), {}).uri)
    config = fxcu.Config.from_env({"FXCU_DATA_DIR": str(data), "FXCU_TRACKING_TIMEOUT": "120"})
    for horizon in fxcu.HORIZONS:
        experiment = client.get_experiment_by_name(fxcu.EXPERIMENT_PREFIX + horizon)
        (run,) = client.search_runs([experiment.experiment_id])
        record = fxcu.RunRecord(
            horizon,
            run.info.run_name,
            dict(run.data.params),
            dict(run.data.metrics),
            {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            (),
        )
        for _ in range(RUNS_PER_HORIZON - 1):
            fxcu.log_run(config, record, environ={})


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    rounds = int(os.environ.get("FXCU_BENCH_ROUNDS", "7"))
    with tempfile.TemporaryDirectory() as tmp:
        data, cwd = Path(tmp) / "data", Path(tmp) / "elsewhere"
        cwd.mkdir()
        build_store(data)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"FXCU_DATA_DIR": str(data)}
        fx = [sys.executable, str(ROOT / "fxcu.py")]
        commands = {
            '`python -c "pass"`': [sys.executable, "-c", "pass"],
            '`python -c "import mlflow"`': [sys.executable, "-c", "import mlflow"],
            "`fxcu.py runs`": [*fx, "runs"],
            "`fxcu.py compare`": [*fx, "compare"],
            "`fxcu.py stats`": [*fx, "stats"],
            "`fxcu.py runs --json`": [*fx, "runs", "--json"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, cmd in commands.items():
                times[name].append(timed(cmd, env, cwd))
        base = statistics.median(times['`python -c "import mlflow"`'])
        print(
            f"{rounds} interleaved rounds, {RUNS_PER_HORIZON * len(fxcu.HORIZONS)} runs in the store, Python {sys.version.split()[0]}\n"
        )
        print("| command | median s | min–max s | ratio to `import mlflow` |\n|---|---:|---|---:|")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"| {name} | {median:.3f} | {min(values):.3f}–{max(values):.3f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
