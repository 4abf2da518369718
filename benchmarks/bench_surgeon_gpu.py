"""LLM Surgeon at scale: an 8B-shaped Llama (Llama-3-8B dims) with random weights on one GPU. Prints time per shot,
passes per shot, peak GPU memory and peak factor memory, then the total for a structured prune.

    .venv/bin/python benchmarks/bench_surgeon_gpu.py --device cuda --sparsity 0.2 --shots 4
    .venv/bin/python benchmarks/bench_surgeon_gpu.py --device cpu --preset tiny   # a smoke run without a GPU

Random weights make the *choice* meaningless but the work identical: 128 x 2048 calibration tokens, K-FAC factors
of every projection (MLP factors are 14336^2), OBS updates, surgery.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

PRESETS = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=4096),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="8b", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--layout", default="per-layer")
    ap.add_argument("--structures", default="heads,mlp")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--curvature", default="kfac")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--layers-per-pass", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, LlamaConfig

    from shear_hub.methods import PruneContext, get_method
    from shear_hub.pruning import count_params
    from shear_hub.structures import build_graph
    from shear_hub.surgery import build_pruned_model

    dtype = getattr(torch, args.dtype)
    cfg = LlamaConfig(**PRESETS[args.preset], max_position_embeddings=max(args.seq_len, 128), tie_word_embeddings=False)
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    model.eval()
    build_s = time.perf_counter() - t
    graph = build_graph(model, args.structures.split(","))
    before = count_params(model)
    calib = torch.randint(0, cfg.vocab_size, (args.samples, args.seq_len))
    ctx = PruneContext(model, None, graph, calib, before, int(round(args.sparsity * before)), args.layout,
                       args.structures.split(","), device=args.device, batch_size=args.batch_size, progress=True)
    method = get_method("surgeon", {"shots": args.shots, "curvature": args.curvature,
                                    "layers_per_pass": args.layers_per_pass})
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    removed = method.select(ctx)
    select_s = time.perf_counter() - t
    t = time.perf_counter()
    pruned, _ = build_pruned_model(graph, removed, args.layout)
    surgery_s = time.perf_counter() - t
    after = count_params(pruned)
    rep = ctx.report
    print(f"\nsurgeon on a random {args.preset}-shaped Llama ({before / 1e9:.2f}B params), {args.device} "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else ''}, {args.dtype}, calib "
          f"{args.samples}x{args.seq_len}, {args.structures}, {args.layout}")
    print("| shot | curvature+costs s | updates s | passes | groups removed |")
    print("|---|---|---|---|---|")
    for s in rep["shots"]:
        print(f"| {s['shot']} | {s['curvature_and_costs_s']} | {s['updates_s']} | {s['passes']} | {s['groups_removed']} |")
    print(f"build {build_s:.0f}s, select {select_s:.0f}s ({select_s / 60:.1f} min), surgery {surgery_s:.0f}s; "
          f"removed {1 - after / before:.1%}; peak factors {rep['peak_factor_mib']:.0f} MiB; "
          f"peak GPU {rep.get('peak_gpu_mib', 0):.0f} MiB; peak RSS {rep['peak_rss_mib']:.0f} MiB")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps({"args": vars(args), "select_s": select_s, "surgery_s": surgery_s,
                                 "removed": 1 - after / before, "report": rep}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
