"""Uniform vs per-layer layout, LLM Surgeon defaults, at several sizes, on the cross-domain protocol.

Prints one table: sparsity, layout, parameters removed, perplexity on each held-out domain text
(shear_hub/resources/eval), their geometric mean and its ratio to the dense model's, and pydocs_eval (the calibration
domain) as a separate column. Every row is measured in the same run with the same windows.

    python benchmarks/bench_layouts.py --sparsities 0.2,0.3,0.4 --windows 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from shear_hub.evaluation import perplexity
from shear_hub.evaluation.domains import domain_perplexity
from shear_hub.loading import load_model
from shear_hub.pruning import prune

EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "pydocs_eval.txt"


def measure(model, tok, windows: int, eval_data: str) -> dict:
    domains = domain_perplexity(model, tok, windows=windows)
    row = {name: entry["value"] for name, entry in domains["texts"].items()}
    row["geomean"] = domains["geometric_mean"]
    row["pydocs_eval"] = round(perplexity(model, tok, eval_data, windows=windows), 4)
    return row


def record(rows: list[dict], row: dict, json_path: str | None) -> None:
    """Keep ``row`` for the table, print it as a JSON line and append it to ``json_path`` (when given), so that a run
    stopped part-way still leaves its finished rows."""
    rows.append(row)
    print(json.dumps(row), flush=True)
    if json_path:
        with open(json_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsities", default="0.2,0.3,0.4")
    ap.add_argument("--layouts", default="uniform,per-layer")
    ap.add_argument("--windows", type=int, default=16, help="512-token windows per text")
    ap.add_argument("--eval-data", default=str(EVAL))
    ap.add_argument("--json", default=None, help="append one JSON line per row")
    args = ap.parse_args()

    dense, tok, _ = load_model(args.model)
    rows = [{"sparsity": 0.0, "layout": "dense", "removed": 0.0, "prune_s": 0.0, **measure(dense, tok, args.windows,
                                                                                          args.eval_data)}]
    del dense
    print(json.dumps(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as work:
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            for layout in args.layouts.split(","):
                t = time.perf_counter()
                result = prune(args.model, Path(work) / f"{layout}-{sparsity}", sparsity=sparsity, layout=layout,
                               progress=False, evaluate=False, return_model=True)
                took = time.perf_counter() - t
                row = {"sparsity": sparsity, "layout": layout, "removed": round(result.achieved_sparsity, 4),
                       "prune_s": round(took, 1), **measure(result.model, tok, args.windows, args.eval_data)}
                record(rows, row, args.json)
    names = [k for k in rows[0] if k not in ("sparsity", "layout", "removed", "prune_s", "geomean", "pydocs_eval")]
    dense_gm, dense_py = rows[0]["geomean"], rows[0]["pydocs_eval"]
    print(f"\n{args.model}, surgeon defaults, {args.windows} x 512 tokens per text")
    print("| sparsity | layout | removed | " + " | ".join(names) + " | geo-mean | x dense | pydocs_eval (calib domain) "
          "| x dense | prune s |")
    print("|" + "---|" * (len(names) + 9))
    for r in rows:
        cells = " | ".join(f"{r[n]:.2f}" for n in names)
        print(f"| {r['sparsity']:.0%} | {r['layout']} | {r['removed']:.1%} | {cells} | {r['geomean']:.2f} | "
              f"{r['geomean'] / dense_gm:.3f} | {r['pydocs_eval']:.2f} | {r['pydocs_eval'] / dense_py:.3f} | "
              f"{r['prune_s']:.0f} |")


if __name__ == "__main__":
    main()
