"""Calibration text vs cross-domain quality: the LLM Surgeon's defaults at one size and layout, calibrated on each
built-in text, measured on the cross-domain protocol.

Prints one table: calibration text, parameters removed, perplexity on each held-out domain text
(shear_hub/resources/eval), their geometric mean and its ratio to the dense model's, pydocs_eval (the domain of the
Python-documentation calibration text) and the prune time. Every row is measured in the same run with the same windows.

    python benchmarks/bench_calibration.py --calibs builtin:pydocs,builtin:mixed --windows 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench_layouts import EVAL, measure, record

from shear_hub.loading import load_model
from shear_hub.pruning import prune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--calibs", default="builtin:pydocs,builtin:mixed",
                    help="comma-separated calibration specs (builtin:NAME or a .txt file)")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--layout", default="uniform")
    ap.add_argument("--windows", type=int, default=16, help="512-token windows per text")
    ap.add_argument("--eval-data", default=str(EVAL))
    ap.add_argument("--json", default=None, help="append one JSON line per row")
    args = ap.parse_args()

    dense, tok, _ = load_model(args.model)
    rows = [{"calib": "dense", "removed": 0.0, "prune_s": 0.0, **measure(dense, tok, args.windows, args.eval_data)}]
    del dense
    print(json.dumps(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as work:
        for i, calib in enumerate(args.calibs.split(",")):
            t = time.perf_counter()
            result = prune(args.model, Path(work) / f"calib-{i}", sparsity=args.sparsity, layout=args.layout,
                           calib=calib, progress=False, evaluate=False, return_model=True)
            took = time.perf_counter() - t
            row = {"calib": calib, "removed": round(result.achieved_sparsity, 4), "prune_s": round(took, 1),
                   **measure(result.model, tok, args.windows, args.eval_data)}
            del result
            record(rows, row, args.json)
    names = [k for k in rows[0] if k not in ("calib", "removed", "prune_s", "geomean", "pydocs_eval")]
    dense_gm, dense_py = rows[0]["geomean"], rows[0]["pydocs_eval"]
    print(f"\n{args.model}, surgeon defaults, {args.sparsity:.0%} {args.layout}, {args.windows} x 512 tokens per text")
    print("| calibration | removed | " + " | ".join(names) + " | geo-mean | x dense | pydocs_eval | x dense | prune s |")
    print("|" + "---|" * (len(names) + 7))
    for r in rows:
        cells = " | ".join(f"{r[n]:.2f}" for n in names)
        print(f"| {r['calib']} | {r['removed']:.1%} | {cells} | {r['geomean']:.2f} | {r['geomean'] / dense_gm:.3f} | "
              f"{r['pydocs_eval']:.2f} | {r['pydocs_eval'] / dense_py:.3f} | {r['prune_s']:.0f} |")


if __name__ == "__main__":
    main()
