"""What the notebook's live figure costs: the default study run from a real Jupyter kernel
with the live figure and without it (`live=False`), alternating, each on a new store.

`python -m hpsearch.bench.live_cost --repeats 2` prints, as JSON, each run's wall seconds
and best value, the medians and the figure's share of the run (1 - without / with), and the
figure's own count of updates and seconds spent drawing (live.LiveFigure). Needs the dev
extra (ipykernel, jupyter_client).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

CELL = """
import time, hpsearch, hpsearch.live as live
spent = []
_in_cell = live.in_cell
def watched(session):
    figure = _in_cell(session)
    spent.append(figure)
    return figure
live.in_cell = watched
start = time.perf_counter()
study = hpsearch.run(trials={trials}, storage={store!r}, live={live})
seconds = time.perf_counter() - start
figure = spent[0] if spent else None
print("RESULT", {{"seconds": seconds, "best": study.best.val_accuracy,
                 "updates": figure.updates if figure else 0,
                 "drawing": figure.spent if figure else 0.0}})
"""


def run_in_kernel(kc, code: str, timeout: float = 900) -> str:
    """The text `code` printed in the kernel."""
    msg_id, text = kc.execute(code), []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise RuntimeError("\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(text)


def bench_live(trials: int = 50, repeats: int = 2) -> dict:
    """Alternating runs with and without the live figure, each in a fresh kernel."""
    import ast

    from jupyter_client.manager import start_new_kernel

    runs: dict = {"with": [], "without": []}
    with tempfile.TemporaryDirectory(prefix="hpsearch-live-") as tmp:
        for i in range(repeats):
            for side in ("with", "without"):
                store = f"sqlite:///{Path(tmp) / f'{side}-{i}.db'}"
                km, kc = start_new_kernel(kernel_name="python3", cwd=tmp)
                try:
                    run_in_kernel(kc, "import hpsearch, optuna, torch")  # imports not timed
                    out = run_in_kernel(kc, CELL.format(trials=trials, store=store,
                                                        live=side == "with"))
                finally:
                    kc.stop_channels()
                    km.shutdown_kernel(now=True)
                line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
                runs[side].append(ast.literal_eval(line[len("RESULT "):]))
                time.sleep(1)
    median = {side: statistics.median(r["seconds"] for r in rs) for side, rs in runs.items()}
    return {"trials": trials, "repeats": repeats, "runs": runs, "median_seconds": median,
            "share": 1 - median["without"] / median["with"],
            "drawing_share": statistics.median(r["drawing"] / r["seconds"]
                                               for r in runs["with"])}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(bench_live(args.trials, args.repeats), indent=2))


if __name__ == "__main__":
    main()
