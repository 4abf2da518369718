"""LLM Surgeon at scale: an 8B-shaped Llama (Llama-3-8B dims) with random weights on one GPU. Prints time per shot,
passes per shot, peak GPU memory and peak factor memory, then the total for a structured prune.

    .venv/bin/python benchmarks/bench_surgeon_gpu.py --device cuda --sparsity 0.2 --shots 4
    .venv/bin/python benchmarks/bench_surgeon_gpu.py --device cpu --preset tiny   # a smoke run without a GPU
    # 8B widths, 2 decoder layers, the surgeon's defaults (1 shot, 32 x 256 calibration), on CPU:
    .venv/bin/python benchmarks/bench_surgeon_gpu.py --device cpu --layers 2 --dtype float32 --shots 1 \
        --samples 32 --seq-len 256 --structures heads,mlp --layout uniform

Per stage it prints wall time and the peak RSS / GPU memory reached by the end of the stage: curvature collection
(forward + backward passes with K-FAC hooks), factor inversions, costs, weight updates (OBS solves), surgery and
save. Collection and inversions are timed by wrapping the surgeon's own functions here, so the method is unchanged.

Random weights make the *choice* meaningless but the work identical: 128 x 2048 calibration tokens, K-FAC factors
of every projection (MLP factors are 14336^2), OBS updates, surgery.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import defaultdict

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
    ap.add_argument("--layers", type=int, default=0, help="override the preset's decoder layer count (0: keep)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, LlamaConfig

    from shear_hub.methods import PruneContext, get_method
    from shear_hub.pruning import count_params
    from shear_hub.structures import build_graph
    from shear_hub.surgery import build_pruned_model

    dtype = getattr(torch, args.dtype)
    dims = dict(PRESETS[args.preset], **({"num_hidden_layers": args.layers} if args.layers else {}))
    cfg = LlamaConfig(**dims, max_position_embeddings=max(args.seq_len, 128), tie_word_embeddings=False)
    stages = _instrument(args.device)
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
    stages.mark("surgery", surgery_s)
    del model
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        pruned.save_pretrained(out)
    stages.mark("save", time.perf_counter() - t)
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
    table = stages.table(rep, select_s, dims["num_hidden_layers"])
    print(f"\nper stage ({dims['num_hidden_layers']} decoder layers; 'per layer' = stage time / layers):")
    print("| stage | wall s | s per layer | peak RSS GiB by end | peak GPU GiB by end |")
    print("|---|---|---|---|---|")
    for row in table:
        print(f"| {row['stage']} | {row['s']:.1f} | {row['s_per_layer']:.1f} | {row['rss_gib']:.1f} | {row['gpu_gib']:.1f} |")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps({"args": vars(args), "dims": dims, "select_s": select_s, "surgery_s": surgery_s,
                                 "removed": 1 - after / before, "stages": table, "report": rep}) + "\n")
    return 0


class _Stages:
    """Wall time and memory high-water marks per stage of a surgeon run."""

    def __init__(self, device: str):
        self.device = device
        self.s: dict[str, float] = defaultdict(float)
        self.mem: dict[str, tuple[float, float]] = {}
        self.phase = "costs"

    def memory(self) -> tuple[float, float]:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        gpu = torch.cuda.max_memory_allocated() / 2**30 if self.device.startswith("cuda") else 0.0
        return rss, gpu

    def mark(self, stage: str, seconds: float) -> None:
        self.s[stage] += seconds
        self.mem[stage] = self.memory()

    def table(self, rep: dict, select_s: float, layers: int) -> list[dict]:
        shots = rep["shots"]
        # curvature_and_costs_s and updates_s (the method's own shot log) include collection and inversions
        costs = sum(s["curvature_and_costs_s"] for s in shots) - self.s["collection (costs)"] - self.s["inversions (costs)"]
        updates = sum(s["updates_s"] for s in shots) - self.s["collection (updates)"] - self.s["inversions (updates)"]
        rows = [("curvature collection", self.s["collection (costs)"] + self.s["collection (updates)"],
                 "collection (updates)" if "collection (updates)" in self.mem else "collection (costs)"),
                ("inversions", self.s["inversions (costs)"] + self.s["inversions (updates)"], "inversions (updates)"),
                ("costs", costs, "inversions (costs)"), ("updates (OBS solves)", updates, "inversions (updates)"),
                ("surgery", self.s["surgery"], "surgery"), ("save", self.s["save"], "save")]
        return [{"stage": name, "s": sec, "s_per_layer": sec / layers,
                 "rss_gib": self.mem.get(key, (0.0, 0.0))[0], "gpu_gib": self.mem.get(key, (0.0, 0.0))[1]}
                for name, sec, key in rows]


def _instrument(device: str) -> _Stages:
    """Time the surgeon's K-FAC collection and factor inversions, split by phase (costs vs updates)."""
    from shear_hub.methods.surgeon import obs, shots, structured

    stages = _Stages(device)

    def timed(fn, stage):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stages.mark(f"{stage} ({stages.phase})", time.perf_counter() - t)
        return wrapper

    def phase(fn, name):
        def wrapper(*a, **k):
            stages.phase = name
            return fn(*a, **k)
        return wrapper

    # module attributes the surgeon looks up on every shot (shots.py, structured.py), so the wrappers take effect
    shots.collect_kfac = timed(shots.collect_kfac, "collection")
    obs.spd_inverse = timed(obs.spd_inverse, "inversions")
    # a shot starts in its costs phase (collection + scoring); the decision opens its updates phase, whose
    # collections (multi-pass) and inversions count as updates
    structured.run_shot = phase(structured.run_shot, "costs")
    structured._decide = phase(structured._decide, "updates")
    return stages


if __name__ == "__main__":
    sys.exit(main())
