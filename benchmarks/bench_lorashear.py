"""LoRAShear on the real SmolLM2-135M: prune (stages 1-3) + surgery + dynamic recovery (stage 4), timed, with
pydocs_eval perplexity after surgery (before recovery) and after recovery; ``--domains``: also the cross-domain
protocol (held-out domain texts and their geometric mean) of the dense and the final model, side by side.

    .venv/bin/python benchmarks/bench_lorashear.py --sparsity 0.2 --layout per-layer --json /tmp/lorashear.jsonl
    .venv/bin/python benchmarks/bench_lorashear.py --domains --windows 16

Extra method settings: --option KEY=VALUE (as `shear-hub prune --option`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from shear_hub.commands.prune import parse_options
from shear_hub.evaluation import perplexity
from shear_hub.methods import METHODS
from shear_hub.methods.lorashear import LoRAShearMethod
from shear_hub.pruning import prune

EVAL = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "pydocs_eval.txt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--layout", default="per-layer")
    ap.add_argument("--structures", default="heads,mlp")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--windows", type=int, default=48, help="pydocs_eval windows of 512 tokens (48 = full protocol)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--option", action="append", default=[])
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    ap.add_argument("--domains", action="store_true", help="also measure the dense and the final model on the "
                    "cross-domain protocol (--windows windows of 512 tokens per text)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    measured: dict[str, float] = {}

    class Measured(LoRAShearMethod):
        """Same method; also measures perplexity between surgery and recovery (benchmark only)."""

        def after_surgery(self, pruned, ctx):
            t = time.perf_counter()
            measured["ppl_after_surgery"] = perplexity(pruned, ctx.tokenizer, EVAL, windows=args.windows)
            measured["eval_s"] = time.perf_counter() - t
            super().after_surgery(pruned, ctx)

    METHODS["lorashear"] = Measured
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = prune(args.model, Path(tmp) / "out", method="lorashear", sparsity=args.sparsity, layout=args.layout,
                       structures=args.structures, calib_samples=args.calib_samples, seq_len=args.seq_len,
                       batch_size=args.batch_size, device=args.device, method_options=parse_options(args.option),
                       return_model=True, progress=True)
        wall = time.perf_counter() - t - measured.get("eval_s", 0.0)
        tok = _tokenizer(Path(tmp) / "out")
        ppl = perplexity(result.model, tok, EVAL, windows=args.windows)
        protocol = _protocol(args, result.model, tok) if args.domains else None
    rep = result.report.method_report
    row = {
        "method": "lorashear", "layout": args.layout, "structures": args.structures, "options": args.option,
        "target": args.sparsity, "achieved": round(result.achieved_sparsity, 4),
        "params_after": result.params_after, "ppl_after_surgery": round(measured.get("ppl_after_surgery", float("nan")), 2),
        "ppl_after_recovery": round(ppl, 2), "prune_wall_s": round(wall, 1),
        "timings_s": {k: round(v, 1) for k, v in result.report.timings_s.items()},
        "protected_units": rep["stage2_knowledge"]["protected_units"],
        "periods": [{k: p[k] for k in ("period", "sparsity", "mean_loss", "new_groups")} for p in rep["stage3_lhspg"]["periods"]],
        "recovery": [{k: r.get(k) for k in ("round", "mix", "loss_gap")} for r in rep.get("stage4_recovery", {}).get("rounds", [])],
        "threads": args.threads, "device": args.device, "windows": args.windows, "protocol": protocol,
    }
    print("| method | layout | removed | ppl after surgery | ppl after recovery | prune wall (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| lorashear | {args.layout} | {row['achieved']:.4f} | {row['ppl_after_surgery']} | {row['ppl_after_recovery']} | {row['prune_wall_s']} |")
    if protocol:
        names = [k for k in protocol["dense"] if k not in ("geomean", "pydocs_eval")]
        print("\n| model | " + " | ".join(names) + " | geo-mean | x dense | pydocs_eval | x dense |")
        print("|" + "---|" * (len(names) + 5))
        for label, r in protocol.items():
            print(f"| {label} | " + " | ".join(f"{r[n]:.2f}" for n in names) + f" | {r['geomean']:.2f} | "
                  f"{r['geomean'] / protocol['dense']['geomean']:.3f} | {r['pydocs_eval']:.2f} | "
                  f"{r['pydocs_eval'] / protocol['dense']['pydocs_eval']:.3f} |")
    print(json.dumps(row, indent=1), file=sys.stderr)
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def _protocol(args, model, tok) -> dict:
    """The protocol's rows for the dense model and ``model`` (same windows, same evaluator)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_layouts import measure

    from shear_hub.loading import load_model

    dense = load_model(args.model)[0]
    return {"dense": measure(dense, tok, args.windows, EVAL),
            f"lorashear {args.sparsity:.0%}": measure(model, tok, args.windows, EVAL)}


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


if __name__ == "__main__":
    main()
