"""LoRAShear on the real SmolLM2-135M: prune (stages 1-3) + surgery + dynamic recovery (stage 4), timed, with
pydocs_eval perplexity after surgery (before recovery) and after recovery; ``--domains``: also the cross-domain
protocol (held-out domain texts and their geometric mean) of the dense and the final model, side by side.

    .venv/bin/python benchmarks/bench_lorashear.py --sparsity 0.2 --layout per-layer --json /tmp/lorashear.jsonl
    .venv/bin/python benchmarks/bench_lorashear.py --domains --windows 16

Extra method settings: --option KEY=VALUE (as `shear-hub prune --option`). Several variants, one row each (same
arguments, their settings added to --option; "default" = none):

    .venv/bin/python benchmarks/bench_lorashear.py --variants "default;zeroing=half-space,w_alignment=1"
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
    ap.add_argument("--variants", help='";"-separated variants, each "default" or comma-separated KEY=VALUE '
                    'settings added to --option, e.g. "default;zeroing=half-space,w_alignment=1"; one row each')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.variants:  # the single-run output, unchanged
        row = _run(args, args.option)
        _print_rows(args, [row], labelled=False)
        _write(args, row)
        return
    rows = []
    for label, extra in parse_variants(args.variants):
        row = {"variant": label, **_run(args, args.option + extra)}
        _write(args, row)  # each finished variant is kept even if a later one fails
        rows.append(row)
    _print_rows(args, rows, labelled=True)


def parse_variants(text: str) -> list[tuple[str, list[str]]]:
    """``"default;k=v,k2=v2"`` -> [("default", []), ("k=v,k2=v2", ["k=v", "k2=v2"])]."""
    out = []
    for part in (p.strip() for p in text.split(";")):
        if part:
            out.append((part, [] if part == "default" else [kv.strip() for kv in part.split(",") if kv.strip()]))
    return out


def _run(args, options: list[str]) -> dict:
    """One prune + surgery + recovery with ``options``; returns the result row."""
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
                       batch_size=args.batch_size, device=args.device, method_options=parse_options(options),
                       return_model=True, progress=True)
        wall = time.perf_counter() - t - measured.get("eval_s", 0.0)
        tok = _tokenizer(Path(tmp) / "out")
        ppl = perplexity(result.model, tok, EVAL, windows=args.windows)
        protocol = _protocol(args, result.model, tok) if args.domains else None
    rep = result.report.method_report
    return {
        "method": "lorashear", "layout": args.layout, "structures": args.structures, "options": options,
        "target": args.sparsity, "achieved": round(result.achieved_sparsity, 4),
        "params_after": result.params_after, "ppl_after_surgery": round(measured.get("ppl_after_surgery", float("nan")), 2),
        "ppl_after_recovery": round(ppl, 2), "prune_wall_s": round(wall, 1),
        "timings_s": {k: round(v, 1) for k, v in result.report.timings_s.items()},
        "protected_units": rep["stage2_knowledge"]["protected_units"],
        "periods": [{k: p[k] for k in ("period", "sparsity", "mean_loss", "new_groups") + _zeroing_keys(p)}
                    for p in rep["stage3_lhspg"]["periods"]],
        "recovery": [{k: r.get(k) for k in ("round", "mix", "loss_gap")} for r in rep.get("stage4_recovery", {}).get("rounds", [])],
        "threads": args.threads, "device": args.device, "windows": args.windows, "protocol": protocol,
    }


def _zeroing_keys(period: dict) -> tuple[str, ...]:
    """Which mechanism zeroed the groups: reported for zeroing=half-space only (default rows stay as they were)."""
    return ("half_space_projected", "forced_to_zero") if "forced_to_zero" in period else ()


def _print_rows(args, rows: list[dict], labelled: bool) -> None:
    """The markdown table (a variant column when ``labelled``), protocol tables, and each row as JSON on stderr."""
    lead = "| variant " if labelled else ""
    print(lead + "| method | layout | removed | ppl after surgery | ppl after recovery | prune wall (s) |")
    print("|---" * labelled + "|---|---|---|---|---|---|")
    for row in rows:
        cell = f"| {row['variant']} " if labelled else ""
        print(cell + f"| lorashear | {args.layout} | {row['achieved']:.4f} | {row['ppl_after_surgery']} | "
              f"{row['ppl_after_recovery']} | {row['prune_wall_s']} |")
    for row in rows:
        protocol = row["protocol"]
        if protocol:
            names = [k for k in protocol["dense"] if k not in ("geomean", "pydocs_eval")]
            print(("\n" + f"{row['variant']}:" if labelled else "") + "\n| model | " + " | ".join(names)
                  + " | geo-mean | x dense | pydocs_eval | x dense |")
            print("|" + "---|" * (len(names) + 5))
            for label, r in protocol.items():
                print(f"| {label} | " + " | ".join(f"{r[n]:.2f}" for n in names) + f" | {r['geomean']:.2f} | "
                      f"{r['geomean'] / protocol['dense']['geomean']:.3f} | {r['pydocs_eval']:.2f} | "
                      f"{r['pydocs_eval'] / protocol['dense']['pydocs_eval']:.3f} |")
        print(json.dumps(row, indent=1), file=sys.stderr)


def _write(args, row: dict) -> None:
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
