"""SparseGPT / Wanda from llm-compressor on given calibration windows: the anchors of the unstructured / 2:4 table.

Runs in its own environment, because llm-compressor pins transformers to an older 5.x than shear-hub tests with
(``pip install torch==2.13.0 llmcompressor``; llmcompressor 0.14 takes transformers 5.17). It reads a dense model folder
(safetensors) and the calibration token windows that ``bench_sparsity.py`` wrote, prunes every decoder linear layer
(never the LM head), and writes the pruned linear weights to one safetensors file, which ``bench_sparsity.py`` loads
into the dense model for evaluation, so the anchors and shear-hub are measured by the same evaluator.

    python benchmarks/llmc_anchor.py --model DENSE_DIR --windows windows.safetensors --method sparsegpt \\
        --structure 2:4 --sparsity 0.5 --out weights.safetensors
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="dense model folder (safetensors)")
    ap.add_argument("--windows", required=True, help="safetensors file with a 'windows' tensor [n, seq_len]")
    ap.add_argument("--method", choices=("sparsegpt", "wanda"), required=True)
    ap.add_argument("--structure", default="0:0", help="0:0 (unstructured) or N:M such as 2:4")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    windows = load_file(args.windows)["windows"]
    data = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    modifier = SparseGPTModifier if args.method == "sparsegpt" else WandaPruningModifier
    recipe = modifier(sparsity=args.sparsity, mask_structure=args.structure, targets=["Linear"], ignore=["lm_head"])
    t = time.perf_counter()
    oneshot(model=model, tokenizer=AutoTokenizer.from_pretrained(args.model), dataset=data, recipe=recipe, num_calibration_samples=len(windows),
            max_seq_length=windows.shape[1], shuffle_calibration_samples=False)
    seconds = time.perf_counter() - t
    linear = {f"{name}.weight": mod.weight.detach().contiguous() for name, mod in model.named_modules()
              if isinstance(mod, torch.nn.Linear) and name != "lm_head"}
    zeros = sum(int((w == 0).sum()) for w in linear.values()) / sum(w.numel() for w in linear.values())
    save_file(linear, args.out, metadata={"seconds": f"{seconds:.1f}", "zeros": f"{zeros:.6f}"})
    print(json.dumps({"method": args.method, "structure": args.structure, "seconds": round(seconds, 1),
                      "zeros": round(zeros, 6)}), flush=True)


if __name__ == "__main__":
    main()
