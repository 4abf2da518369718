"""Baseline methods (magnitude, wanda, taylor) on the real SmolLM2-135M-Instruct at one sparsity, both layouts.

Prints one table: method, layout, parameters removed, pydocs_eval perplexity (48 x 512 windows), prune time.

    python benchmarks/bench_baselines.py --sparsity 0.2 [--methods magnitude,wanda,taylor] [--structures heads,mlp]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from shear_hub.evaluation import perplexity
from shear_hub.loading import load_model
from shear_hub.pruning import prune

EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "pydocs_eval.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--methods", default="magnitude,wanda,taylor")
    ap.add_argument("--layouts", default="uniform,per-layer")
    ap.add_argument("--structures", default="heads,mlp")
    ap.add_argument("--eval-data", default=str(EVAL))
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--dense", action="store_true", help="also evaluate the dense model")
    args = ap.parse_args()
    rows = []
    if args.dense:
        model, tok, _ = load_model(args.model)
        rows.append(("dense", "-", 0.0, perplexity(model, tok, args.eval_data, windows=args.windows), 0.0))
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as work:
        for method in args.methods.split(","):
            for layout in args.layouts.split(","):
                out = Path(work) / f"{method}-{layout}"
                t = time.perf_counter()
                result = prune(args.model, out, method=method, sparsity=args.sparsity, layout=layout,
                               structures=args.structures, progress=False, return_model=True)
                elapsed = time.perf_counter() - t
                model, tok, _ = load_model(str(out))
                ppl = perplexity(model, tok, args.eval_data, windows=args.windows)
                rows.append((method, layout, result.achieved_sparsity, ppl, elapsed))
                print(rows[-1], flush=True)
    print(f"\nSmolLM2-135M-Instruct, structures={args.structures}, target sparsity {args.sparsity}, "
          f"pydocs_eval {args.windows}x512, torch threads {torch.get_num_threads()}")
    print(f"| method | layout | removed | ppl | prune s |\n|---|---|---|---|---|")
    for method, layout, removed, ppl, elapsed in rows:
        print(f"| {method} | {layout} | {removed:.2%} | {ppl:.2f} | {elapsed:.0f} |")


if __name__ == "__main__":
    main()
