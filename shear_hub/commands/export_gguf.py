"""`shear-hub export-gguf MODEL --output FILE`: a uniform Llama / Mistral / Qwen2 / Qwen3 model as one GGUF file."""

from __future__ import annotations

import argparse

from ._common import add_export_parser


def add_parser(subparsers) -> None:
    add_export_parser(
        subparsers, "export-gguf", output=("FILE", "output .gguf file"), options=_options,
        help="write a uniform Llama/Mistral/Qwen2/Qwen3 model and its tokenizer as a GGUF file (llama.cpp, Ollama)",
        description="Write FILE in llama.cpp's GGUF conventions (tensor names, q/k rotary permutation for Llama, "
        "hyperparameters, byte-level BPE tokenizer with merges and special tokens) with the gguf package, atomically. "
        "Uniform-layout folders only: llama.cpp has no per-layer widths, so per-layer folders are refused.",
    )


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=("f32", "f16", "bf16"), default="f32",
                   help="type of the 2-D weights (norms and biases stay f32, as llama.cpp keeps them)")


def run(args: argparse.Namespace) -> int:
    from ..gguf_export import export_gguf_file

    result = export_gguf_file(args.model, args.output, dtype=args.dtype, overwrite=args.overwrite,
                              trust_remote_code=args.trust_remote_code)
    print(f"wrote {result.path} (GGUF, architecture {result.architecture}, {result.dtype}, {result.tensors} tensors, "
          f"vocabulary {result.vocab_size})")
    for note in result.notes:
        print(f"note: {note}")
    return 0
