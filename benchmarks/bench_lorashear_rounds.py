"""LoRAShear stage 4 round by round: pydocs_eval perplexity after every dynamic-recovery round, next to the held-out
loss gaps that drive the data mix and the choice of the merged round.

    .venv/bin/python benchmarks/bench_lorashear_rounds.py --option recovery_rounds=10 --json /tmp/rounds.jsonl

Stages 1-3 + surgery run first with ``recovery=false`` (or ``--pruned DIR`` reuses such a folder), then stage 4 runs on
the physically smaller model exactly as `shear-hub prune --method lorashear` would (same sources, seed and settings).
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
from shear_hub.data import load_text, tokenize_text
from shear_hub.evaluation import perplexity
from shear_hub.loading import load_model
from shear_hub.methods.lorashear.config import LoRAShearConfig
from shear_hub.methods.lorashear.data import split_stream
from shear_hub.methods.lorashear.knowledge import mean_loss
from shear_hub.methods.lorashear.recovery import dynamic_recovery, recovery_sources
from shear_hub.pruning import prune
from shear_hub.structures.adapters import get_adapter

EVAL = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "pydocs_eval.txt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--pruned", help="a folder pruned by lorashear with --option recovery=false (skips stages 1-3)")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--layout", default="per-layer")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=48, help="pydocs_eval windows of 512 tokens (48 = full protocol)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--option", action="append", default=[], help="lorashear KEY=VALUE (stages 1-3 and 4)")
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    options = parse_options(args.option)
    cfg = LoRAShearConfig(**options)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.pruned) if args.pruned else Path(tmp) / "pruned"
        if not args.pruned:
            prune(args.model, folder, method="lorashear", sparsity=args.sparsity, layout=args.layout,
                  structures="heads,mlp", seq_len=args.seq_len, batch_size=args.batch_size, seed=args.seed,
                  method_options={**options, "recovery": False}, progress=True)
        dense, tokenizer, _ = load_model(args.model)
        pruned, _, _ = load_model(str(folder))
    # the same pool as the method builds (default calibration text, held-out chunks cut out of the stream)
    tokens = tokenize_text(tokenizer, load_text(None))
    pretrain = split_stream(tokens, args.seq_len, cfg.held_out_windows())
    sources, _ = recovery_sources(pretrain, tokenizer, args.seq_len, cfg)
    dense_loss = {s: mean_loss(dense, sources[s].held, args.batch_size) for s in sources}
    del dense
    curve: dict[int, float] = {}

    def evaluate(model, round_: int) -> None:
        curve[round_] = perplexity(model, tokenizer, EVAL, windows=args.windows)
        print(f"round {round_}: pydocs_eval {curve[round_]:.3f}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    report = dynamic_recovery(pruned, get_adapter(pruned), sources, dense_loss, cfg, args.batch_size, args.seq_len,
                              args.seed, lambda m: print(m, file=sys.stderr, flush=True), on_round=evaluate)
    final = perplexity(pruned, tokenizer, EVAL, windows=args.windows)
    names = list(sources)
    print(f"| round | mix ({', '.join(names)}) | " + " | ".join(f"{s} gap (nats)" for s in names)
          + " | worst gap | pydocs_eval ppl |")
    print("|---" * (4 + len(names)) + "|")
    for e in report["rounds"]:
        mix = ", ".join(f"{e['mix'][s]:.2f}" for s in names) if e.get("mix") else "-"
        gaps = " | ".join(f"{e['loss_gap'][s]:+.4f}" for s in names)
        print(f"| {e['round']} | {mix} | {gaps} | {e['worst_gap']:+.4f} | {curve[e['round']]:.2f} |")
    print(f"\nmerged round {report['best_round']} ({report['stopped']}): pydocs_eval {final:.2f}")
    if args.json:
        row = {"options": args.option, "curve": {str(k): round(v, 3) for k, v in curve.items()},
               "rounds": report["rounds"], "best_round": report["best_round"], "stopped": report["stopped"],
               "final_ppl": round(final, 3), "stage4_s_with_evals": round(time.perf_counter() - t, 1)}
        with open(args.json, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
