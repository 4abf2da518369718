"""GGUF export (llama.cpp / Ollama) of uniform-layout Llama, Mistral, Qwen2 and Qwen3 models, with their tokenizer.

The file follows llama.cpp's ``convert_hf_to_gguf.py`` conventions, written with the ``gguf`` package:

- architecture ``llama`` (Llama and Mistral: llama.cpp runs Mistral as ``llama``), ``qwen2`` or ``qwen3``;
- tensor names from ``gguf.get_tensor_name_map`` (``token_embd``, ``blk.N.attn_q``, ``blk.N.ffn_gate``, ``output``...);
  ``output.weight`` is left out when the embeddings are tied, which is how llama.cpp and transformers' GGUF loader
  recognise tied embeddings;
- for ``llama`` the rows of ``q_proj`` / ``k_proj`` (and their biases) are permuted from the Hugging Face half-split
  rotary layout to llama.cpp's interleaved one (transformers' GGUF loader undoes exactly this); Qwen models use
  llama.cpp's NeoX rotary and are written as they are;
- hyperparameters under ``{arch}.*`` (head counts, ``attention.key_length`` / ``value_length`` = head_dim, so a pruned
  model whose head_dim is not hidden/heads stays exact in llama.cpp, ``rope.freq_base``, RMSNorm eps...);
  Llama-3 rope scaling becomes llama.cpp's ``rope_freqs`` tensor, linear scaling its two keys;
- the tokenizer as ``tokenizer.ggml.*``: byte-level BPE only (``model`` ``gpt2``: tokens, token types, merges, the
  pre-tokenizer name llama.cpp knows it by, special token ids, add-BOS/EOS flags, chat template).

Per-layer folders are refused: these llama.cpp architectures hold one set of widths for every layer. 1-D tensors
(norms, biases) stay float32 whatever ``dtype`` says, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ShearHubError
from .io import check_not_input_or_existing

# transformers model_type -> llama.cpp architecture
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
DTYPES = ("f32", "f16", "bf16")

# Pre-tokenizer regexes of tokenizer.json files, by the name llama.cpp gives them (tokenizer.ggml.pre).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_PRE = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclass
class GGUFExportResult:
    path: Path
    architecture: str  # llama.cpp's
    dtype: str
    tensors: int
    vocab_size: int
    notes: list[str] = field(default_factory=list)  # what llama.cpp will not reproduce (e.g. a sliding window)


def _refuse_unless_exportable(config: dict) -> str:
    """llama.cpp architecture for a config (as a dict); one-line errors for per-layer folders and other families."""
    model_type = str(config.get("model_type", ""))
    if config.get("layer_dims") or model_type.startswith("shear_"):
        raise ShearHubError("export-gguf needs a uniform-layout model: this is a per-layer folder, and llama.cpp's "
                            "llama/qwen2/qwen3 architectures have one head count and MLP width for every layer (no "
                            "per-layer widths); prune again with --layout uniform")
    if model_type not in ARCHITECTURES:
        raise ShearHubError(f"export-gguf writes Llama, Mistral, Qwen2 and Qwen3 models, not {model_type or 'this'} "
                            "ones; use export-onnx, or llama.cpp's convert_hf_to_gguf.py for other architectures")
    return ARCHITECTURES[model_type]


def _check_output(output: str | os.PathLike, overwrite: bool, inputs: tuple = ()) -> Path:
    out = Path(output).expanduser().resolve()
    if out.suffix != ".gguf":
        raise ShearHubError(f"output {out.name} does not end in .gguf; name the file like model.gguf")
    if out.is_dir():
        raise ShearHubError(f"output {out} is a folder; give a file path like {out / 'model.gguf'}")
    check_not_input_or_existing(out, overwrite, inputs, what="output", instead="a path")
    return out


def _rope(config) -> dict:
    """Rope parameters as one dict (transformers 5 ``rope_parameters``, older ``rope_theta`` + ``rope_scaling``)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def llama3_rope_factors(rope: dict, head_dim: int) -> torch.Tensor:
    """llama.cpp's ``rope_freqs`` for Llama-3 rope scaling (what convert_hf_to_gguf.py computes): the factor each
    rotary frequency is divided by."""
    freqs = 1.0 / (float(rope["rope_theta"]) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face rotary layout (halves) -> llama.cpp's (interleaved pairs), per head; as convert_hf_to_gguf.py."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _as_gguf_array(t: torch.Tensor, dtype: str):
    """(array, raw_dtype) for GGUFWriter.add_tensor; 1-D tensors stay float32."""
    import gguf

    t = t.detach().to("cpu", torch.float32).contiguous()
    if t.dim() <= 1 or dtype == "f32":
        return t.numpy(), gguf.GGMLQuantizationType.F32
    if dtype == "f16":
        return t.to(torch.float16).numpy(), gguf.GGMLQuantizationType.F16
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), gguf.GGMLQuantizationType.BF16


def _tensors(model, arch: str, rope: dict, head_dim: int) -> list[tuple[str, torch.Tensor]]:
    import gguf

    config = model.config
    n_layers, n_head, n_kv = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads
    arch_enum = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(arch_enum, n_layers)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = bool(getattr(config, "tie_word_embeddings", False)) or (head is not None and head.weight is embed)
    out = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ShearHubError(f"export-gguf has no llama.cpp name for tensor {hf_name} of this {arch} model; "
                                "export a stock Llama/Mistral/Qwen2/Qwen3 model (or report the architecture)")
        if arch == "llama" and ".self_attn.q_proj." in hf_name:
            tensor = _permute(tensor, n_head)
        elif arch == "llama" and ".self_attn.k_proj." in hf_name:
            tensor = _permute(tensor, n_kv)
        out.append((f"{gguf_name}.{suffix}", tensor))
    if rope["rope_type"] == "llama3":
        out.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(rope, head_dim)))
    return out


def _pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or None when it is not one llama.cpp knows."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return _SPLIT_PRE.get((steps[0].get("pattern") or {}).get("Regex"))
    return None


def _add_tokenizer(writer, tokenizer, config, n_vocab: int) -> None:
    import gguf

    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ShearHubError("export-gguf needs the model's fast tokenizer (tokenizer.json) to write it into the file; "
                            "save the tokenizer next to the model")
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = data.get("model") or {}, data.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        kind = f"{model.get('type')}{' with byte fallback (SentencePiece)' if model.get('byte_fallback') else ''}"
        raise ShearHubError(f"export-gguf writes byte-level BPE tokenizers (Llama 3, Qwen, SmolLM), not this {kind} "
                            "one; convert the model with llama.cpp's convert_hf_to_gguf.py instead")
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"))
    if pre is None:
        raise ShearHubError("export-gguf does not recognise this tokenizer's pre-tokenizer (llama.cpp must be told "
                            "which splitting rule it is); convert the model with llama.cpp's convert_hf_to_gguf.py")
    by_id: dict[int, tuple[str, int]] = {i: (tok, gguf.TokenType.NORMAL) for tok, i in model["vocab"].items()}
    for added in data.get("added_tokens") or []:
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if max(by_id) >= n_vocab:
        raise ShearHubError(f"the tokenizer has token ids up to {max(by_id)} but the model's embedding only "
                            f"{n_vocab} rows; save the matching tokenizer with the model")
    tokens, types = [], []
    for i in range(n_vocab):  # ids the tokenizer never produces get llama.cpp's padding entries
        tok, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(tok)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part)
                                                    for part in m) for m in model.get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    specials = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
                "pad": tokenizer.pad_token_id}
    if specials["eos"] is None and isinstance(getattr(config, "eos_token_id", None), int):
        specials["eos"] = config.eos_token_id
    for kind, token_id in specials.items():
        if isinstance(token_id, int) and 0 <= token_id < n_vocab:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(specials["bos"] is not None and len(full) > len(plain) and full[0] == specials["bos"])
    writer.add_add_eos_token(specials["eos"] is not None and len(full) > len(plain) and full[-1] == specials["eos"])
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def export_gguf(model, tokenizer, output: str | os.PathLike, *, dtype: str = "f32", name: str | None = None,
                overwrite: bool = False) -> GGUFExportResult:
    """Write ``model`` (uniform Llama / Mistral / Qwen2 / Qwen3) and its byte-level BPE ``tokenizer`` to the GGUF file
    ``output`` (written to a temporary file beside it, then renamed). ``dtype`` is f32, f16 or bf16 for 2-D weights."""
    import gguf

    if dtype not in DTYPES:
        raise ShearHubError(f"unknown GGUF dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    config = model.config
    arch = _refuse_unless_exportable(config.to_dict())
    out = _check_output(output, overwrite)
    rope = _rope(config)
    if rope["rope_type"] not in ("default", "linear", "llama3"):
        raise ShearHubError(f"export-gguf writes default, linear and llama3 rope scaling, not {rope['rope_type']!r}; "
                            "convert this model with llama.cpp's convert_hf_to_gguf.py")
    n_head, hidden = config.num_attention_heads, config.hidden_size
    head_dim = int(getattr(config, "head_dim", None) or hidden // n_head)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    notes = []
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    uses_window = ("sliding_attention" in layer_types if layer_types is not None
                   else getattr(config, "use_sliding_window", config.model_type == "mistral"))
    if window and uses_window and window < config.max_position_embeddings:
        notes.append(f"sliding window {window} not stored: llama.cpp attends over the whole context (the same "
                     f"logits up to {window} tokens)")

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        model_name = name or Path(str(getattr(config, "name_or_path", "") or "model")).name or "model"
        writer.add_name("shear-hub model" if model_name == "mistral" else model_name)  # "mistral" is a loader switch
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(int(hidden))
        writer.add_block_count(int(config.num_hidden_layers))
        writer.add_feed_forward_length(int(config.intermediate_size))
        writer.add_head_count(int(n_head))
        writer.add_head_count_kv(int(config.num_key_value_heads))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope["rope_theta"]))
        if rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(int(n_vocab))
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])
        _add_tokenizer(writer, tokenizer, config, n_vocab)
        tensors = _tensors(model, arch, rope, head_dim)
        for tensor_name, tensor in tensors:
            array, raw_dtype = _as_gguf_array(tensor, dtype)
            writer.add_tensor(tensor_name, array, raw_shape=tuple(tensor.shape), raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return GGUFExportResult(out, arch, dtype, len(tensors), n_vocab, notes)


def export_gguf_file(spec: str, output: str | os.PathLike, *, dtype: str = "f32", overwrite: bool = False,
                     trust_remote_code: bool = False) -> GGUFExportResult:
    """Load MODEL (folder / Hub id / .gguf / demo alias) and write it as GGUF; what the CLI calls. A local folder is
    checked (layout, family) from its config.json before the weights are loaded."""
    from .loading import load_model, resolve_source

    if dtype not in DTYPES:
        raise ShearHubError(f"unknown GGUF dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    _check_output(output, overwrite, inputs=(spec,))
    source = resolve_source(spec)
    config_file = Path(source.path) / "config.json"
    if not source.gguf_file and config_file.is_file():
        try:
            _refuse_unless_exportable(json.loads(config_file.read_text()))
        except ValueError:
            pass  # unreadable config: load_model says so
    model, tokenizer, source = load_model(spec, dtype="float32", trust_remote_code=trust_remote_code)
    name = Path(source.path).name if Path(source.path).is_dir() else source.path.split("/")[-1]
    return export_gguf(model, tokenizer, output, dtype=dtype, name=name, overwrite=overwrite)
