"""Times marimo's own dependency graph on the notebook graph-bench generates: one edited
cell is recompiled and re-registered (what marimo does when a cell's code changes).

Usage: python marimo_graph_bench.py cells.json edits.json iterations
Prints the per-edit times in seconds as JSON.
"""

import json
import sys
import time

from marimo._ast.compiler import compile_cell
from marimo._runtime.dataflow import DirectedGraph


def main():
    cells = json.load(open(sys.argv[1]))
    edit_index, versions = json.load(open(sys.argv[2]))
    iterations = int(sys.argv[3])
    graph = DirectedGraph()
    for i, code in enumerate(cells):
        graph.register_cell(f"c{i}", compile_cell(code, cell_id=f"c{i}"))
    cid = f"c{edit_index}"
    samples = []
    for n in range(iterations):
        code = versions[n % 2]
        t = time.perf_counter()
        graph.delete_cell(cid)
        graph.register_cell(cid, compile_cell(code, cell_id=cid))
        samples.append(time.perf_counter() - t)
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
