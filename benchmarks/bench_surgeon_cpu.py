"""LLM Surgeon on the real SmolLM2-135M (CPU): per-stage wall time, peak RSS and pydocs_eval perplexity at several
sparsities for both layouts. Prints one table.

    .venv/bin/python benchmarks/bench_surgeon_cpu.py --sparsities 0.1,0.2,0.3,0.4 --layouts per-layer,uniform
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "data" / "pydocs_eval.txt"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsities", default="0.1,0.2,0.3,0.4")
    ap.add_argument("--layouts", default="per-layer,uniform")
    ap.add_argument("--structures", default="heads,mlp", help="per-layer structures (uniform uses --uniform-structures)")
    ap.add_argument("--uniform-structures", default=None)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--windows", type=int, default=48, help="evaluation windows of 512 tokens (48 = the protocol)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="surgeon option, repeatable")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dense", action="store_true", help="also evaluate the dense model")
    ap.add_argument("--json", default=None, help="append one JSON line per run to this file")
    ap.add_argument("--keep", default=None, help="keep each pruned model in KEEP/surgeon-LAYOUT-SPARSITY (for recovery)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from shear_hub.commands.prune import parse_options
    from shear_hub.evaluation import perplexity
    from shear_hub.loading import load_model
    from shear_hub.pruning import prune

    options = parse_options(args.option)
    rows = []
    if args.dense:
        model, tok, _ = load_model(args.model)
        t = time.perf_counter()
        ppl = perplexity(model, tok, str(EVAL), seq_len=512, windows=args.windows)
        rows.append(("dense", "-", 0.0, ppl, {}, time.perf_counter() - t, peak_rss_mib(), None))
    for layout in args.layouts.split(","):
        structures = args.structures if layout == "per-layer" else (args.uniform_structures or args.structures)
        for s in (float(x) for x in args.sparsities.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                out = Path(args.keep) / f"surgeon-{layout}-{s}" if args.keep else Path(tmp) / "out"
                res = prune(args.model, out, method="surgeon", overwrite=bool(args.keep), sparsity=s, layout=layout,
                            structures=structures, calib_samples=args.calib_samples, seq_len=args.seq_len,
                            batch_size=args.batch_size, method_options=options, progress=False, return_model=True)
                wall = time.perf_counter() - t
                _, tok, _ = load_model(args.model)
                t = time.perf_counter()
                ppl = perplexity(res.model, tok, str(EVAL), seq_len=512, windows=args.windows)
                ev = time.perf_counter() - t
            rep = res.report.to_dict()
            row = (layout, structures, res.achieved_sparsity, ppl, rep["timings_s"], wall, peak_rss_mib(),
                   rep["method_report"])
            rows.append(row)
            print(f"# {layout} {structures} {s}: ppl {ppl:.2f} removed {rep['removed_groups']} "
                  f"prune {wall:.0f}s eval {ev:.0f}s", flush=True)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps({"layout": layout, "structures": structures, "target": s,
                                         "achieved": res.achieved_sparsity, "ppl": ppl, "options": options,
                                         "calib": [args.calib_samples, args.seq_len], "windows": args.windows,
                                         "removed": rep["removed_groups"], "dims_after": rep["dims_after"]["layers"],
                                         "timings_s": rep["timings_s"], "method_report": rep["method_report"],
                                         "peak_rss_mib": peak_rss_mib()}) + "\n")
    print(f"\nSmolLM2 surgeon, options {options}, calib {args.calib_samples}x{args.seq_len}, "
          f"eval pydocs_eval {args.windows}x512")
    print("| layout | structures | removed | ppl | load s | calib s | select s | surgery s | save s | "
          "curvature+costs s / shot | updates s / shot | peak factors MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for layout, st, ach, ppl, tim, wall, rss, mrep in rows:
        shots = (mrep or {}).get("shots", [])
        cc = sum(x["curvature_and_costs_s"] for x in shots) / max(len(shots), 1)
        up = sum(x["updates_s"] for x in shots) / max(len(shots), 1)
        print(f"| {layout} | {st} | {ach:.1%} | {ppl:.2f} | {tim.get('load', 0):.1f} | "
              f"{tim.get('calibration_data', 0):.1f} | {tim.get('select', 0):.1f} | {tim.get('surgery', 0):.1f} | "
              f"{tim.get('save', 0):.1f} | {cc:.1f} | {up:.1f} | {(mrep or {}).get('peak_factor_mib', '-')} | "
              f"{rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
