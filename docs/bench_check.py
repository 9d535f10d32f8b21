"""`fxcu check` next to `import mlflow`: 9 interleaved rounds after 1 uncounted, medians (issue 12). Usage: FXCU_DATA_DIR=... python docs/bench_check.py"""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

py, fx = sys.executable, str(Path(__file__).resolve().parent.parent / "fxcu.py")
env = dict(os.environ)
times = {"mlflow": [], "check": []}
cmds = {"mlflow": [py, "-c", "import mlflow"], "check": [py, fx, "check"]}
for r in range(10):
    for name, cmd in cmds.items():
        t = time.perf_counter()
        out = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True)
        dt = time.perf_counter() - t
        if r:
            times[name].append(dt)
m = {k: statistics.median(v) for k, v in times.items()}
print(
    f"rounds {len(times['check'])}; median import mlflow {m['mlflow']:.2f} s; median check {m['check']:.2f} s; ratio {m['check'] / m['mlflow']:.2f}"
)
print("check first line:", out.stdout.splitlines()[0][:100])
