"""Recovery on the real SmolLM2-135M: pydocs_eval perplexity before / after `shear-hub recover` (default settings)
for each given model folder, side by side in one run, with the loss curve and wall time. Give the dense model too
(`smollm2`) as the control: the recovery text itself improves even an unpruned model.

    .venv/bin/python benchmarks/bench_recover.py PRUNED_DIR [PRUNED_DIR ...] smollm2 [--teacher smollm2]

Any RecoveryConfig field can be changed with --set KEY=VALUE (e.g. --set steps=300).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from shear_hub.recovery import RecoveryConfig, recover

EVAL = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "pydocs_eval.txt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="pruned model folders (and `smollm2` for the dense control)")
    ap.add_argument("--teacher", default=None, help="distil from this dense model (adds KL to the LM loss)")
    ap.add_argument("--eval", default=EVAL, help="held-out text (default: ../shared/data/pydocs_eval.txt)")
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=None, help="append one JSON line per model to this file")
    args = ap.parse_args()
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        extra[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    rows = []
    for spec in args.models:
        cfg = RecoveryConfig(teacher=args.teacher, eval_data=args.eval, eval_windows=args.windows,
                             eval_every=args.eval_every, save_every=0, **extra)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = recover(spec, Path(tmp) / "out", cfg, resume=False)
        rec = result.report.recovery
        row = {"model": spec, "teacher": args.teacher, "steps": cfg.steps, "before": rec["perplexity_before"],
               "after": rec["perplexity_after"], "train_s": rec["timings_s"].get("train"),
               "total_s": round(time.perf_counter() - t, 1),
               "curve": [(p["step"], p.get("eval_ppl"), p["loss"]) for p in rec["curve"]]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    print(f"\n| model | teacher | steps | ppl before | ppl after | train | total |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['teacher'] or '-'} | {r['steps']} | {r['before']:.2f} | {r['after']:.2f} | "
              f"{r['train_s'] / 60:.1f} min | {r['total_s'] / 60:.1f} min |")
    print("\ncurves (step, eval ppl, train loss):")
    for r in rows:
        print(f"  {r['model']}: {r['curve']}")


if __name__ == "__main__":
    main()
