"""`shear-hub export-onnx MODEL --output DIR`: ONNX with KV cache (optimum / transformers.js layout), validated."""

from __future__ import annotations

import argparse

from ._common import add_export_parser


def add_parser(subparsers) -> None:
    add_export_parser(
        subparsers, "export-onnx", output=("DIR", "output folder"), options=_options,
        help="export a (pruned) model to ONNX with KV cache, checked against PyTorch in onnxruntime",
        description="Write DIR/onnx/model.onnx (inputs input_ids, attention_mask, position_ids, "
        "past_key_values.{i}.key/value; outputs logits, present.{i}.key/value) with config.json, tokenizer and "
        "generation_config.json beside it, the layout optimum's ORTModelForCausalLM and transformers.js read. "
        "Works for uniform and per-layer models; per-layer cache entries may differ in KV heads (listed in "
        "config.json under shear_onnx). The export is validated on a prefill and a decode step before DIR appears.",
    )


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "torch", "optimum"), default="auto",
                   help="exporter: optimum when importable for stock models (auto), else torch.onnx dynamo")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")


def run(args: argparse.Namespace) -> int:
    from ..onnx import export_model_folder

    result = export_model_folder(args.model, args.output, backend=args.backend, overwrite=args.overwrite,
                                 trust_remote_code=args.trust_remote_code, opset=args.opset)
    v = result.validation
    kv = sorted({e.num_key_value_heads for e in result.past})
    print(f"wrote {result.onnx_file} ({result.exporter}); {len(result.past)} KV-cache entries, KV heads {kv}")
    print(f"validated in onnxruntime: max |logit diff| prefill {v['prefill_max_abs_diff']:.2e}, "
          f"decode {v['decode_max_abs_diff']:.2e}")
    return 0
