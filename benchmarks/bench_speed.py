"""Measured speed of pruned vs dense models, side by side in one run: PyTorch eager, PyTorch static cache +
torch.compile (CUDA graphs on GPU), and onnxruntime; prefill and batch-1 decode; measured speedup / ideal speedup
(ideal = parameter ratio, tied embeddings counted once).

The models are random Llamas of a chosen shape (weights do not change speed) so the run needs no download:
dense, a uniform pruned model (same heads / MLP channels removed in every layer) and a per-layer pruned model
(layers pruned unevenly, one attention block removed) of about the same size, built with the real surgery.
Default shape: Llama-3.2-1B widths with 8 layers and a 32k tied vocabulary (552M params, 2.2 GB in fp32), big
enough that batch-1 decode streams the weights from memory on every token (bandwidth-bound) on a CPU.

    python benchmarks/bench_speed.py                       # CPU, fp32, all runtimes
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --layers 32 --hidden 4096 --heads 32 \
        --kv-heads 8 --intermediate 14336 --vocab 128256 --prompt-len 2048 --new-tokens 128    # 8B shape on a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shear_hub.evaluation.speed import count_params, measure_onnx_speed, measure_speed  # noqa: E402
from shear_hub.structures import build_graph  # noqa: E402
from shear_hub.surgery import build_pruned_model  # noqa: E402


def dense_model(args):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                         tie_word_embeddings=True, max_position_embeddings=max(4096, args.prompt_len + args.new_tokens))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def pruned_models(dense, fraction: float):
    """(uniform, per-layer) pruned models removing about ``fraction`` of every decoder layer's weights."""
    graph = build_graph(dense, ["mlp", "heads", "attn-blocks"])
    n = dense.config.num_hidden_layers
    kv, inter = dense.config.num_key_value_heads, dense.config.intermediate_size
    rng = random.Random(0)

    def pick(kind, layer, count):
        groups = [g for g in graph.of_kind(kind) if g.layer == layer]
        return rng.sample(groups, count)

    uniform = []
    for i in range(n):
        uniform += pick("heads", i, round(kv * fraction)) + pick("mlp", i, round(inter * fraction))
    # per-layer: MLP cut grows with depth (0.5x..1.5x the fraction), KV groups cut unevenly, layer 1 loses attention
    per_layer = []
    for i in range(n):
        f = fraction * (0.5 + i / max(1, n - 1))
        per_layer += pick("mlp", i, min(inter - 1, round(inter * f)))
        if i == 1:
            per_layer += pick("attn-blocks", i, 1)
        else:
            per_layer += pick("heads", i, min(kv - 1, round(kv * fraction * (0.5 + (i % 3) / 2))))
    uni, _ = build_pruned_model(graph, uniform, "uniform")
    per, _ = build_pruned_model(graph, per_layer, "per-layer")
    return uni, per


def row(name, runtime, r, base, params, base_params):
    ideal = base_params / params
    if base is None:
        return f"| {name} | {runtime} | {params / 1e6:.0f}M | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.2f} | - | - | - |"
    sp_pre = r["prefill_tok_s"] / base["prefill_tok_s"]
    sp_dec = r["decode_tok_s"] / base["decode_tok_s"]
    return (f"| {name} | {runtime} | {params / 1e6:.0f}M | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.2f} | "
            f"{ideal:.3f}x | {sp_pre:.3f}x ({sp_pre / ideal:.2f}) | {sp_dec:.3f}x ({sp_dec / ideal:.2f}) |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--fraction", type=float, default=0.25, help="share of heads / MLP channels removed per layer")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per runtime; best round kept (noise)")
    p.add_argument("--modes", default="eager,static-compile,onnx", help="comma list of eager, static-compile, onnx")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write all results to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    dtype = getattr(torch, args.dtype)
    t0 = time.time()
    dense = dense_model(args)
    uni, per = pruned_models(dense, args.fraction)
    models = {"dense": dense, "uniform": uni, "per-layer": per}
    params = {k: count_params(m) for k, m in models.items()}
    print(f"# shapes: {', '.join(f'{k} {v / 1e6:.1f}M' for k, v in params.items())}; built in {time.time() - t0:.0f}s",
          flush=True)
    results: dict[str, dict[str, dict]] = {}

    def best(runs):  # keep the fastest round per metric: other processes only ever slow a run down
        out = dict(runs[0])
        for key in ("prefill_tok_s", "decode_tok_s"):
            out[key] = max(r[key] for r in runs)
        return out

    for mode in [m for m in modes if m in ("eager", "static-compile")]:
        if mode == "static-compile" and not args.device.startswith("cuda") and args.dtype != "float32":
            print(f"# {mode}: skipped for {args.dtype} on CPU")
            continue
        runs: dict[str, list] = {k: [] for k in models}
        # compiling is slow on CPU: one round; dynamo is reset per model so each gets its own graphs (no recompile limit)
        for _ in range(args.rounds if mode == "eager" else 1):
            for name, model in models.items():
                model.to(device=args.device, dtype=dtype)
                torch._dynamo.reset()
                runs[name].append(measure_speed(model, None, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                                                batch_size=args.batch, device=args.device, mode=mode,
                                                repeats=args.repeats))
                print(f"#   {mode} {name}: {runs[name][-1]['decode_tok_s']:.2f} tok/s decode", flush=True)
        results[f"pytorch {mode}"] = {k: best(v) for k, v in runs.items()}
    if "onnx" in modes:
        from shear_hub.onnx import OnnxCausalLM, export_onnx

        with tempfile.TemporaryDirectory() as work:
            for name in list(models):
                t = time.time()
                export_onnx(models[name].float().cpu(), Path(work) / name)  # fp32 graph; validated
                print(f"#   exported {name} in {time.time() - t:.0f}s", flush=True)
            for model in models.values():
                model.to("meta")  # free the PyTorch copies before onnxruntime loads its own
            gc.collect()
            providers = ["CUDAExecutionProvider"] if args.device.startswith("cuda") else ["CPUExecutionProvider"]
            runners = {k: OnnxCausalLM(Path(work) / k, providers=providers, threads=args.threads) for k in models}
            runs = {k: [] for k in models}
            for _ in range(args.rounds):
                for name, runner in runners.items():
                    runs[name].append(measure_onnx_speed(runner, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                                                         batch_size=args.batch, vocab=args.vocab, repeats=args.repeats))
                    print(f"#   onnxruntime {name}: {runs[name][-1]['decode_tok_s']:.2f} tok/s decode", flush=True)
            results["onnxruntime fp32"] = {k: best(v) for k, v in runs.items()}
    print(f"\ndevice {args.device}, {args.dtype}, batch {args.batch}, prompt {args.prompt_len}, decode {args.new_tokens} "
          f"tokens, threads {torch.get_num_threads()}, total {time.time() - t0:.0f}s\n")
    print("| model | runtime | params | prefill tok/s | decode tok/s | ideal speedup | prefill speedup (measured/ideal) "
          "| decode speedup (measured/ideal) |")
    print("|---|---|---|---|---|---|---|---|")
    for runtime, by_model in results.items():
        base = by_model["dense"]
        for name, r in by_model.items():
            print(row(name, runtime, r, None if name == "dense" else base, params[name], params["dense"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "params": params, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
