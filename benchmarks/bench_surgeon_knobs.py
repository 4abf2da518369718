"""LLM Surgeon knobs, one at a time against the defaults, on the cross-domain protocol (issue: the surgeon at full
strength).

Each variant is the default prune (uniform layout, built-in mixed calibration) with one change: more shots, sampled
Fisher, raw cost instead of cost per parameter, more calibration tokens, LoRA between shots. A knob is chosen on the
calibration domain: pydocs_eval (held-out Python documentation, a quarter of the mixed calibration text's genre) and
"calib held-out" (windows of the calibration text that no calibration window overlaps, which `prune` measures
itself; its slice moves when the calibration size changes, so compare it across sizes only as a ratio to its own
dense value), never by the domain texts, which are only reported. Every row is measured in the same run with the
same windows.

    python benchmarks/bench_surgeon_knobs.py --sparsities 0.2 --windows 16
    python benchmarks/bench_surgeon_knobs.py --variants "default;shots=4" --sparsities 0.3,0.4
    python benchmarks/bench_surgeon_knobs.py --variants "shots=4,lora" --sparsities "" --lora-control

``--lora-control`` adds, for a variant that fits LoRA between shots, the dense model given the same fits with
nothing removed: the part of that variant's gain that is training on the calibration text, not repair of the prune.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layouts import EVAL, measure, record  # noqa: E402  (same protocol as the layout table)

from shear_hub.data import calibration_batches  # noqa: E402
from shear_hub.loading import load_model  # noqa: E402
from shear_hub.methods.base import PruneContext  # noqa: E402
from shear_hub.methods.surgeon.config import SurgeonConfig  # noqa: E402
from shear_hub.methods.surgeon.lora import lora_update  # noqa: E402
from shear_hub.methods.surgeon.state import start_run  # noqa: E402
from shear_hub.pruning import calibration_size, prune  # noqa: E402
from shear_hub.structures import build_graph  # noqa: E402

# variant -> prune keyword arguments (method options under "method_options")
VARIANTS = {
    "default": {},
    "shots=4": {"method_options": {"shots": 4}},
    "fisher=sampled": {"method_options": {"fisher": "sampled"}},
    "normalize=false": {"method_options": {"normalize": False}},
    "calib=128x512": {"calib_samples": 128, "seq_len": 512},
    "shots=4,lora": {"method_options": {"shots": 4, "lora_rank": 8, "lora_steps": 20}},
    # updates layer by layer on the inputs the already-updated layers below give (SparseGPT's order)
    "propagate": {"method_options": {"propagate": True}},
    # the earlier, faster calibration size: the reference row for the variants below measured at that size
    "calib=32x256": {"calib_samples": 32, "seq_len": 256},
    # query heads inside a KV group as a removable kind (Gemma-3-270M has one KV group per layer, so "heads" can
    # remove nothing there)
    "qheads,calib=32x256": {"structures": "qheads,mlp", "calib_samples": 32, "seq_len": 256},
    # LoRA between shots at 30/40%, against the "calib=32x256" row
    "shots=4,lora,calib=32x256": {"method_options": {"shots": 4, "lora_rank": 8, "lora_steps": 20},
                                  "calib_samples": 32, "seq_len": 256},
    # residual-stream channels as a third kind (each also shrinks the tied embedding), at the faster calibration size
    "hidden,calib=32x256": {"structures": "heads,mlp,hidden", "calib_samples": 32, "seq_len": 256},
    "taylor": {"method": "taylor"},  # reference: the project's first-order Taylor baseline at the same size
    # per-layer layout (global allocation) with and without a floor on every layer's widths
    "per-layer": {"layout": "per-layer"},
    "per-layer,min_keep=0.25": {"layout": "per-layer", "method_options": {"min_keep": 0.25}},
    "per-layer,min_keep=0.5": {"layout": "per-layer", "method_options": {"min_keep": 0.5}},
    # LoRA between shots in the per-layer layout (its min_keep default applies), at the faster calibration size
    "per-layer,shots=4,lora,calib=32x256": {"layout": "per-layer", "calib_samples": 32, "seq_len": 256,
                                            "method_options": {"shots": 4, "lora_rank": 8, "lora_steps": 20}},
}


def lora_control(model_name: str, variant: str):
    """The dense model given ``variant``'s between-shot LoRA fits and nothing removed: ``shots - 1`` fits of
    ``lora_steps`` steps each on the prune's own calibration windows, each merged before the next, as the surgeon
    runs them. What the fit alone does to the dense model: the control a LoRA variant's gain is read against."""
    kw = VARIANTS[variant]
    cfg = SurgeonConfig(**kw.get("method_options", {}))
    samples, seq_len = calibration_size("surgeon", kw.get("calib_samples"), kw.get("seq_len"))
    model, tok, _ = load_model(model_name)
    torch.manual_seed(0)  # prune's seed: the LoRA factors start from the same draws
    windows = calibration_batches(tok, kw.get("calib"), samples, seq_len, seed=0)
    ctx = PruneContext(model, tok, build_graph(model, ["mlp"]), windows, 0, 0, "uniform", ["mlp"], progress=False)
    run = start_run(ctx, cfg)  # the surgeon's own run state: the same projections get the LoRA factors
    for _ in range(cfg.shots - 1):
        lora_update(run, [])
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsities", default="0.2", help="','-separated; empty: no pruned rows (e.g. the controls only)")
    ap.add_argument("--variants", default=";".join(VARIANTS), help=f"';'-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--windows", type=int, default=16, help="512-token windows per text")
    ap.add_argument("--eval-data", default=str(EVAL))
    ap.add_argument("--json", default=None, help="append one JSON line per row")
    ap.add_argument("--lora-control", action="store_true",
                    help="for each variant that fits LoRA between shots, a row of the dense model given the same fits "
                         "and nothing removed (sparsity 0%%)")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(";") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r}; use one of {', '.join(VARIANTS)}")
    fitted = [v for v in variants if VARIANTS[v].get("method_options", {}).get("lora_rank")]
    if args.lora_control and not fitted:
        ap.error("--lora-control needs a variant that fits LoRA between shots, e.g. --variants \"shots=4,lora\"")

    dense, tok, _ = load_model(args.model)
    rows = [{"sparsity": 0.0, "variant": "dense", "removed": 0.0, "prune_s": 0.0, "calib_heldout": None,
             **measure(dense, tok, args.windows, args.eval_data)}]
    del dense
    print(json.dumps(rows[-1]), flush=True)
    for variant in fitted if args.lora_control else []:
        t = time.perf_counter()
        control = lora_control(args.model, variant)
        row = {"sparsity": 0.0, "variant": f"dense + {variant}'s LoRA fits (control)", "removed": 0.0,
               "prune_s": round(time.perf_counter() - t, 1), "calib_heldout": None,
               **measure(control, tok, args.windows, args.eval_data)}
        del control
        record(rows, row, args.json)
    with tempfile.TemporaryDirectory() as work:
        for sparsity in (float(s) for s in args.sparsities.split(",") if s):
            for variant in variants:
                t = time.perf_counter()
                result = prune(args.model, Path(work) / f"{variant}-{sparsity}", sparsity=sparsity,
                               progress=False, return_model=True, **VARIANTS[variant])
                took = time.perf_counter() - t
                row = {"sparsity": sparsity, "variant": variant, "removed": round(result.achieved_sparsity, 4),
                       "prune_s": round(took, 1), "calib_heldout": result.perplexity_after,
                       "calib_heldout_dense": result.perplexity_before,
                       **measure(result.model, tok, args.windows, args.eval_data)}
                record(rows, row, args.json)
    skip = ("sparsity", "variant", "removed", "prune_s", "geomean", "pydocs_eval", "calib_heldout",
            "calib_heldout_dense")
    names = [k for k in rows[0] if k not in skip]
    dense_gm, dense_py = rows[0]["geomean"], rows[0]["pydocs_eval"]
    print(f"\n{args.model}, surgeon (uniform, builtin:mixed), one knob changed per row, {args.windows} x 512 tokens "
          "per text; chosen by calib held-out (8 x 256)")
    print("| sparsity | variant | removed | calib held-out (x dense) | " + " | ".join(names)
          + " | geo-mean | x dense | pydocs_eval | x dense | prune s |")
    print("|" + "---|" * (len(names) + 9))
    for r in rows:
        cells = " | ".join(f"{r[n]:.2f}" for n in names)
        held = (f"{r['calib_heldout']:.2f} ({r['calib_heldout'] / r['calib_heldout_dense']:.3f})"
                if r.get("calib_heldout") and r.get("calib_heldout_dense") else "-")
        print(f"| {r['sparsity']:.0%} | {r['variant']} | {r['removed']:.1%} | {held} | {cells} | {r['geomean']:.2f} | "
              f"{r['geomean'] / dense_gm:.3f} | {r['pydocs_eval']:.2f} | {r['pydocs_eval'] / dense_py:.3f} | "
              f"{r['prune_s']:.0f} |")


if __name__ == "__main__":
    main()
