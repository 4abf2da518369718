"""Unstructured and 2:4 LLM Surgeon against SparseGPT and Wanda (llm-compressor), same calibration windows, same
evaluator, one run.

Every method masks the same share of the decoder's linear weights (the LM head and embeddings stay dense) from the
same calibration windows of the built-in calibration text; each row gives the protocol's held-out domain texts,
their geometric mean, pydocs_eval (the calibration domain) and the pruning time. The anchors run in their own Python
environment (llm-compressor pins an older transformers): pass its interpreter with ``--llmc-python``; without it only
the surgeon rows are measured.

    python benchmarks/bench_sparsity.py --structures unstructured,2:4 --llmc-python /path/to/llmc/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layouts import EVAL, measure, record  # noqa: E402  (the protocol of the layout and knob tables)

from shear_hub.data import load_text, random_window_starts, tokenize_text  # noqa: E402
from shear_hub.loading import load_model  # noqa: E402
from shear_hub.pruning import prune  # noqa: E402

ANCHOR = Path(__file__).resolve().parent / "llmc_anchor.py"
LLMC_STRUCTURE = {"unstructured": "0:0", "2:4": "2:4"}


def _save_dense(model, tok, folder: Path) -> None:
    """A plain safetensors folder of the dense model (a GGUF-loaded model forgets its quantizer first)."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def _windows(tok, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """Exactly the calibration windows ``prune`` cuts from the built-in text with the same settings."""
    tokens = tokenize_text(tok, load_text(None))
    return torch.stack([tokens[s : s + seq_len] for s in random_window_starts(tokens.numel(), samples, seq_len, seed)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsity", type=float, default=0.5, help="share of the decoder's linear weights masked")
    ap.add_argument("--structures", default="unstructured,2:4")
    ap.add_argument("--surgeon", default="shots=1", help="';'-separated surgeon variants, each KEY=VALUE[,KEY=VALUE]")
    ap.add_argument("--anchors", default="sparsegpt,wanda")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=16, help="512-token windows per evaluation text")
    ap.add_argument("--eval-data", default=str(EVAL))
    ap.add_argument("--llmc-python", default=None, help="interpreter of an environment with llmcompressor")
    ap.add_argument("--json", default=None, help="append one JSON line per row")
    args = ap.parse_args()

    rows: list[dict] = []

    dense, tok, _ = load_model(args.model)
    record(rows, {"structure": "-", "method": "dense", "zeros": 0.0, "seconds": 0.0,
                  **measure(dense, tok, args.windows, args.eval_data)}, args.json)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        dense_dir, windows_file = work / "dense", work / "windows.safetensors"
        _save_dense(dense, tok, dense_dir)
        save_file({"windows": _windows(tok, args.calib_samples, args.seq_len, 0).contiguous()}, windows_file)
        original = {k: v.clone() for k, v in dense.state_dict().items()}
        for structure in args.structures.split(","):
            for variant in (v for v in args.surgeon.split(";") if v):
                options = {"mode": structure}
                for item in variant.split(","):
                    key, value = item.split("=", 1)
                    options[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
                t = time.perf_counter()
                result = prune(str(dense_dir), work / f"surgeon-{structure}", sparsity=args.sparsity,
                               calib_samples=args.calib_samples, seq_len=args.seq_len, method_options=options,
                               progress=False, evaluate=False, return_model=True, overwrite=True)
                seconds = time.perf_counter() - t
                record(rows, {"structure": structure, "method": f"surgeon {variant}", "seconds": round(seconds, 1),
                              "zeros": result.report.method_report.get("mask_sparsity"),
                              **measure(result.model, tok, args.windows, args.eval_data)}, args.json)
                del result
            for anchor in (a for a in args.anchors.split(",") if a and args.llmc_python):
                out = work / f"{anchor}-{structure.replace(':', '_')}.safetensors"
                cmd = [args.llmc_python, str(ANCHOR), "--model", str(dense_dir), "--windows", str(windows_file),
                       "--method", anchor, "--structure", LLMC_STRUCTURE[structure], "--sparsity", str(args.sparsity),
                       "--out", str(out)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                weights = load_file(out)
                with safe_open(out, "pt") as fh:
                    meta = fh.metadata()
                dense.load_state_dict(original)
                dense.load_state_dict(weights, strict=False)
                record(rows, {"structure": structure, "method": f"{anchor} (llm-compressor)",
                              "seconds": float(meta["seconds"]), "zeros": float(meta["zeros"]),
                              **measure(dense, tok, args.windows, args.eval_data)}, args.json)
        dense.load_state_dict(original)

    skip = ("structure", "method", "zeros", "seconds", "geomean", "pydocs_eval")
    names = [k for k in rows[0] if k not in skip]
    dense_gm, dense_py = rows[0]["geomean"], rows[0]["pydocs_eval"]
    print(f"\n{args.model}, {args.sparsity:.0%} of the decoder's linear weights, calibration "
          f"{args.calib_samples} x {args.seq_len} tokens of the built-in text, {args.windows} x 512 tokens per text")
    print("| structure | method | zeros | " + " | ".join(names) + " | geo-mean | x dense | pydocs_eval | x dense | s |")
    print("|" + "---|" * (len(names) + 8))
    for r in rows:
        cells = " | ".join(f"{r[n]:.2f}" for n in names)
        zeros = f"{r['zeros']:.1%}" if r["zeros"] is not None else "-"
        print(f"| {r['structure']} | {r['method']} | {zeros} | {cells} | {r['geomean']:.2f} | "
              f"{r['geomean'] / dense_gm:.3f} | {r['pydocs_eval']:.2f} | {r['pydocs_eval'] / dense_py:.3f} | "
              f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
