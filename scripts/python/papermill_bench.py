"""The anchor of jobs-bench's notebook runs: papermill executes a notebook with parameters N times
in this one Python process (so its import is paid once), each run starting its own kernel as
papermill does. Prints one JSON list of wall times in milliseconds.

    python papermill_bench.py NOTEBOOK RUNS PARAMETERS_JSON
"""

import json
import os
import sys
import tempfile
import time

import papermill


def main() -> None:
    notebook, runs, parameters = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    times = []
    with tempfile.TemporaryDirectory() as out:
        for i in range(runs):
            start = time.perf_counter()
            papermill.execute_notebook(
                notebook,
                os.path.join(out, f"out-{i}.ipynb"),
                parameters=parameters,
                kernel_name="python3",
                progress_bar=False,
            )
            times.append((time.perf_counter() - start) * 1000.0)
    print(json.dumps(times))


if __name__ == "__main__":
    main()
