"""Recovery on the cross-domain protocol, each variant next to its control (the dense model given the same recovery).

Prunes the demo model once with the prune defaults, then runs `shear-hub recover` variants on the pruned model and on
the dense model, and measures every model on the protocol's held-out domain texts (their geometric mean) and on
pydocs_eval (the calibration domain) in one run with the same windows:

- ``lm``: the recover defaults (LoRA, language-model loss on the built-in calibration text);
- ``kd``: 0.5 LM + 0.5 KL to the dense model's next-token distribution (``--teacher``);
- ``kd-only``: KL to the dense model only (``kd_alpha=0``): the student imitates the dense model instead of the text.

    python benchmarks/bench_recover_protocol.py --variants lm,kd-only --windows 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layouts import EVAL, measure, record  # noqa: E402  (the protocol of the layout and knob tables)

from shear_hub.loading import load_model  # noqa: E402
from shear_hub.pruning import prune  # noqa: E402
from shear_hub.recovery import RecoveryConfig, recover  # noqa: E402

# variant -> RecoveryConfig overrides (``teacher`` is filled with the dense model)
VARIANTS = {"lm": {}, "kd": {"kd_alpha": 0.5}, "kd-only": {"kd_alpha": 0.0}}


def _measured(folder: str, windows: int, eval_data: str) -> dict:
    model, tok, _ = load_model(folder)
    return measure(model, tok, windows, eval_data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--variants", default="lm,kd-only", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--windows", type=int, default=16, help="512-token windows per text")
    ap.add_argument("--eval-data", default=str(EVAL))
    ap.add_argument("--no-control", action="store_true", help="skip the dense model's recoveries")
    ap.add_argument("--json", default=None, help="append one JSON line per row")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in VARIANTS for v in variants):
        ap.error(f"unknown variant; use some of {', '.join(VARIANTS)}")

    rows: list[dict] = []

    def record(row: dict) -> None:
        record(rows, row, args.json)

    with tempfile.TemporaryDirectory() as work:
        dense, tok, _ = load_model(args.model)
        record({"model": "dense", "recovery": "-", "seconds": 0.0, **measure(dense, tok, args.windows, args.eval_data)})
        del dense
        t = time.perf_counter()
        pruned = str(Path(work) / "pruned")
        prune(args.model, pruned, sparsity=args.sparsity, progress=False, evaluate=False)
        record({"model": f"pruned {args.sparsity:.0%}", "recovery": "-", "seconds": round(time.perf_counter() - t, 1),
                **_measured(pruned, args.windows, args.eval_data)})
        sources = [(f"pruned {args.sparsity:.0%}", pruned)] + ([] if args.no_control else [("dense", args.model)])
        for variant in variants:
            for label, source in sources:
                cfg = RecoveryConfig(teacher=None if variant == "lm" else args.model, save_every=0,
                                     **VARIANTS[variant])
                out = Path(work) / f"{variant}-{label.split()[0]}"
                t = time.perf_counter()
                recover(source, out, cfg, resume=False)
                record({"model": label, "recovery": variant, "seconds": round(time.perf_counter() - t, 1),
                        **_measured(str(out), args.windows, args.eval_data)})

    skip = ("model", "recovery", "seconds", "geomean", "pydocs_eval")
    names = [k for k in rows[0] if k not in skip]
    dense_gm, dense_py = rows[0]["geomean"], rows[0]["pydocs_eval"]
    print(f"\n{args.model}, prune defaults at {args.sparsity:.0%}, recover variants, {args.windows} x 512 tokens per text")
    print("| model | recovery | " + " | ".join(names) + " | geo-mean | x dense | pydocs_eval | x dense | s |")
    print("|" + "---|" * (len(names) + 7))
    for r in rows:
        cells = " | ".join(f"{r[n]:.2f}" for n in names)
        print(f"| {r['model']} | {r['recovery']} | {cells} | {r['geomean']:.2f} | {r['geomean'] / dense_gm:.3f} | "
              f"{r['pydocs_eval']:.2f} | {r['pydocs_eval'] / dense_py:.3f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
