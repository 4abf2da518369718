"""ONNX export with a KV cache, in the input/output layout that optimum's ORTModelForCausalLM and transformers.js read.

Graph inputs:  ``input_ids`` [batch, seq], ``attention_mask`` [batch, past+seq], ``position_ids`` [batch, seq],
               ``past_key_values.{i}.key`` / ``.value`` [batch, kv_heads_i, past, head_dim]
Graph outputs: ``logits`` [batch, seq, vocab], ``present.{i}.key`` / ``.value`` [batch, kv_heads_i, past+seq, head_dim]

``i`` is the *past* index: only layers that still have attention get a past entry, numbered 0.. in order (inside the
graph, a removed attention block's own cache slot gets a placeholder, as in PyTorch). Per-layer models may give every entry its
own ``kv_heads_i``; the shapes are static in the graph and listed in ``config.json`` under ``shear_onnx``. The first
step feeds past tensors with a past length of 0.

Exporter: torch.onnx (dynamo). optimum's exporter is used instead when it is importable and the model is a stock
(uniform) one; it pins transformers versions that shear-hub does not run on today, so that path is opportunistic.
Either way the file is checked in onnxruntime against PyTorch logits for a prefill and a decode step before the
output folder appears.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..compat import cache_keyword, output_cache
from ..errors import ShearHubError

ONNX_SUBDIR = "onnx"
ONNX_FILE = "model.onnx"
BACKENDS = ("auto", "torch", "optimum")
# files copied from the source folder next to the ONNX model (tokenizer + generation settings)
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
              "tokenizer.model", "added_tokens.json", "chat_template.jinja", "generation_config.json")


@dataclass
class PastEntry:
    """One KV-cache input/output pair of the graph."""

    index: int  # the i in past_key_values.{i}.key
    decoder_layer: int  # which decoder layer of the (pruned) model it belongs to
    num_key_value_heads: int
    head_dim: int


@dataclass
class ExportResult:
    path: Path  # the output folder
    onnx_file: Path
    exporter: str
    past: list[PastEntry]
    validation: dict = field(default_factory=dict)


def past_entries(model) -> list[PastEntry]:
    """KV-cache entries of ``model``: one per decoder layer that still has attention, in layer order."""
    out = []
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):  # e.g. BERT, GPT-2, OPT
        raise ShearHubError(f"export-onnx does not support {type(model).__name__}: it exports decoder-only models "
                            "laid out as model.layers[i].self_attn (Llama, Mistral, Qwen, Gemma, Phi-3 and their "
                            "shear-hub per-layer variants); export one of those")
    for layer_no, layer in enumerate(layers):
        kv_heads = _kv_heads(layer.self_attn)
        if kv_heads is None:  # RemovedAttention: no keys, so no graph input (its slot gets a placeholder inside)
            continue
        out.append(PastEntry(len(out), layer_no, kv_heads, int(layer.self_attn.head_dim)))
    if not out:
        raise ShearHubError("no decoder layer of this model keeps its attention, so there is no KV cache to export; "
                            "export a model that keeps at least one attention block")
    return out


def _kv_heads(attn) -> int | None:
    """KV heads of one attention block, read from its weights: ``k_proj`` (Llama, Mistral, Qwen, Gemma) or the fused
    ``qkv_proj`` of Phi-3 (queries, then keys, then values); None for a removed block (RemovedAttention)."""
    if type(attn).__name__ == "RemovedAttention":
        return None
    k_proj, qkv, o_proj = (getattr(attn, name, None) for name in ("k_proj", "qkv_proj", "o_proj"))
    if k_proj is not None and hasattr(attn, "head_dim"):
        return k_proj.out_features // int(attn.head_dim)
    if qkv is not None and o_proj is not None and hasattr(attn, "head_dim"):
        return (qkv.out_features - o_proj.in_features) // (2 * int(attn.head_dim))
    raise ShearHubError(f"export-onnx does not know the attention block {type(attn).__name__} (no k_proj or qkv_proj "
                        "with head_dim); export a Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 or Phi-3 model")


def io_names(n_past: int) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "attention_mask", "position_ids"]
    inputs += [f"past_key_values.{i}.{t}" for i in range(n_past) for t in ("key", "value")]
    outputs = ["logits"] + [f"present.{i}.{t}" for i in range(n_past) for t in ("key", "value")]
    return inputs, outputs


class _FlatKVWrapper(torch.nn.Module):
    """Takes the cache as flat tensors, rebuilds a DynamicCache inside the traced graph, returns flat presents.

    The cache holds one slot per decoder layer; a layer whose attention was removed gets the same placeholder
    (one head of width 1) that its RemovedAttention block writes in PyTorch, built from the past length."""

    def __init__(self, model, past: list[PastEntry]):
        super().__init__()
        self.model = model
        self.past = past
        self.n_layers = len(model.model.layers)

    def forward(self, input_ids, attention_mask, position_ids, past: list[torch.Tensor]):
        from transformers import DynamicCache

        given = {e.decoder_layer: (past[2 * i], past[2 * i + 1]) for i, e in enumerate(self.past)}
        first = past[0]
        placeholder = first.new_ones(first.shape[0], 1, first.shape[2], 1)
        slots = [given.get(layer, (placeholder, placeholder)) for layer in range(self.n_layers)]
        cache = DynamicCache(ddp_cache_data=slots)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         **{cache_keyword(self.model): cache}, use_cache=True)
        layers = output_cache(out).layers
        presents: list[torch.Tensor] = []
        for e in self.past:
            presents += [layers[e.decoder_layer].keys, layers[e.decoder_layer].values]
        return (out.logits, *presents)


def _example_inputs(model, past: list[PastEntry], batch: int = 2, seq: int = 4, past_len: int = 3):
    # nonzero past length while tracing so that dimension stays symbolic; runtime accepts 0
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    mask = torch.ones(batch, past_len + seq, dtype=torch.long, device=device)
    pos = torch.arange(past_len, past_len + seq, device=device).expand(batch, seq).contiguous()
    dtype = next(model.parameters()).dtype
    kv = []
    for e in past:
        for _ in range(2):
            kv.append(torch.randn(batch, e.num_key_value_heads, past_len, e.head_dim, dtype=dtype, device=device))
    return ids, mask, pos, kv


def _torch_export(model, past: list[PastEntry], file: Path, opset: int | None) -> None:
    from torch.export import Dim

    batch, seq, past_len = Dim("batch_size"), Dim("sequence_length"), Dim("past_sequence_length")
    total = Dim("total_sequence_length")
    inputs, outputs = io_names(len(past))
    wrapper = _FlatKVWrapper(model, past).eval()
    dynamic = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
        "past": [{0: batch, 2: past_len} for _ in range(2 * len(past))],
    }
    kwargs = {"opset_version": opset} if opset else {}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, _example_inputs(model, past), dynamo=True, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=dynamic, optimize=True, verbose=False,
                                    **kwargs)
    # big models go to external data (protobuf's 2 GB limit); small ones stay one file
    program.save(str(file), external_data=sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8e9)


def _use_eager_attention(model) -> None:
    """Eager attention is the path validated for export. Per-layer models hold one config copy per layer, so set it
    on every module's config rather than through set_attn_implementation (which they do not support)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"


def optimum_available() -> bool:
    """True when optimum's ONNX exporter imports against the installed transformers."""
    try:
        from optimum.exporters.onnx import main_export  # noqa: F401
    except Exception:  # ImportError, or version-pin failures at import time
        return False
    return True


def _optimum_export(model, work: Path) -> Path:
    """optimum's exporter works from a folder; returns the ONNX file it wrote."""
    from optimum.exporters.onnx import main_export

    staged = work / "_hf"
    model.save_pretrained(staged)
    out = work / "_optimum"
    main_export(str(staged), output=str(out), task="text-generation-with-past", no_post_process=True)
    file = out / ONNX_FILE
    if not file.is_file():
        raise ShearHubError(f"optimum wrote no {ONNX_FILE}; retry with --backend torch")
    return file


class OnnxCausalLM:
    """Minimal onnxruntime runner for an exported folder: reads each past entry's shape from the graph itself, so it
    works for per-layer models whose cache entries have different head counts."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        file = path if path.suffix == ".onnx" else (path / ONNX_SUBDIR / ONNX_FILE)
        if not file.is_file() and (path / ONNX_FILE).is_file():
            file = path / ONNX_FILE
        if not file.is_file():
            raise ShearHubError(f"no ONNX model at {file}; export one with `shear-hub export-onnx MODEL --output DIR`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(file), options, providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_shapes = {i.name: i.shape for i in self.session.get_inputs() if i.name.startswith("past_key_values.")}
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.kv_dtype = np.float16 if any("float16" in types[n] for n in self.past_shapes) else np.float32

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {name: np.zeros((batch, shape[1], 0, shape[3]), dtype=self.kv_dtype)
                for name, shape in self.past_shapes.items()}

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward: logits and the next past (presents renamed to past inputs)."""
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
                "position_ids": position_ids.astype(np.int64), **past}
        outs = self.session.run(None, feed)
        named = dict(zip(self.output_names, outs))
        nxt = {name: named[name.replace("past_key_values.", "present.", 1)] for name in self.past_shapes}
        return named["logits"], nxt


def _validate(model, runner: OnnxCausalLM, atol: float) -> dict:
    """Prefill (batch 2, one row left-padded) and one decode step, ONNX Runtime vs PyTorch, on real positions only."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # left padding, the way batched generation feeds it
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    device = next(model.parameters()).device
    cache_kw = cache_keyword(model)
    with torch.no_grad():
        ref = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    **{cache_kw: DynamicCache()}, use_cache=True)
        nxt = torch.randint(0, vocab, (2, 1), generator=g)
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        pos2 = pos[:, -1:] + 1
        ref2 = model(input_ids=nxt.to(device), attention_mask=mask2.to(device), position_ids=pos2.to(device),
                     **{cache_kw: output_cache(ref)}, use_cache=True)
    logits, past = runner.step(ids.numpy(), mask.numpy(), pos.numpy(), runner.empty_past(2))
    logits2, _ = runner.step(nxt.numpy(), mask2.numpy(), pos2.numpy(), past)
    real = mask.bool().numpy()
    d_prefill = float(np.abs(logits[real] - ref.logits.float().cpu().numpy()[real]).max())
    d_decode = float(np.abs(logits2 - ref2.logits.float().cpu().numpy()).max())
    scale = float(ref.logits.abs().max())
    result = {"prefill_max_abs_diff": d_prefill, "decode_max_abs_diff": d_decode, "logits_max_abs": scale,
              "atol": atol, "passed": max(d_prefill, d_decode) <= atol * max(1.0, scale)}
    if not result["passed"]:
        raise ShearHubError(f"ONNX logits differ from PyTorch (prefill {d_prefill:.2e}, decode {d_decode:.2e}, logits up "
                            f"to {scale:.1f}); retry with --backend torch or report the model architecture")
    return result


def _onnx_config(model, past: list[PastEntry], exporter: str, opset: int | None, validation: dict) -> dict:
    config = model.config.to_dict()
    config["use_cache"] = True
    config["shear_onnx"] = {
        "file": f"{ONNX_SUBDIR}/{ONNX_FILE}",
        "exporter": exporter,
        "opset": opset,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "inputs": "input_ids, attention_mask, position_ids, past_key_values.{i}.key/value",
        "outputs": "logits, present.{i}.key/value",
        "past_key_values": [asdict(e) for e in past],
        "note": ("past_key_values.{i} is numbered over the layers that still have attention (decoder_layer gives the "
                 "layer); layers whose attention was removed have no cache entry. Entries may differ in "
                 "num_key_value_heads: size empty past tensors from this list or from the graph inputs, not from "
                 "config.num_key_value_heads."),
        "validation": validation,
    }
    return config


def export_onnx(model, output_dir: str | Path, *, tokenizer=None, source_dir: str | Path | None = None,
                backend: str = "auto", opset: int | None = None, validate: bool = True, atol: float = 1e-4,
                overwrite: bool = False) -> ExportResult:
    """Write ``output_dir`` with config.json, tokenizer/generation files and ``onnx/model.onnx`` (atomically)."""
    from ..io import atomic_output_dir

    if backend not in BACKENDS:
        raise ShearHubError(f"unknown ONNX backend {backend!r}; use one of {', '.join(BACKENDS)}")
    stock = not getattr(model.config, "layer_dims", None)
    if backend == "optimum" and not optimum_available():
        raise ShearHubError("optimum's ONNX exporter is not importable with the installed transformers; "
                            "use --backend torch (or auto)")
    if backend == "optimum" and not stock:
        raise ShearHubError("optimum cannot export per-layer models (layers of different widths); use --backend torch")
    use_optimum = backend == "optimum" or (backend == "auto" and stock and optimum_available())
    model = model.float().eval()
    _use_eager_attention(model)
    past = past_entries(model)
    with atomic_output_dir(output_dir, overwrite) as tmp:
        (tmp / ONNX_SUBDIR).mkdir()
        file = tmp / ONNX_SUBDIR / ONNX_FILE
        if use_optimum:
            written = _optimum_export(model, tmp)
            for item in written.parent.iterdir():
                if item.name.startswith(ONNX_FILE):  # model.onnx and model.onnx_data
                    shutil.move(str(item), tmp / ONNX_SUBDIR / item.name)
            shutil.rmtree(tmp / "_hf", ignore_errors=True)
            shutil.rmtree(tmp / "_optimum", ignore_errors=True)
            exporter = "optimum"
        else:
            _torch_export(model, past, file, opset)
            exporter = f"torch.onnx (dynamo, torch {torch.__version__})"
        validation = {}
        if validate:
            validation = _validate(model, OnnxCausalLM(file), atol)
        (tmp / "config.json").write_text(json.dumps(_onnx_config(model, past, exporter, opset, validation), indent=2))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if source_dir is not None:
            for name in SIDE_FILES:
                src = Path(source_dir) / name
                if src.is_file() and not (tmp / name).exists():
                    shutil.copy2(src, tmp / name)
        if not stock:  # config.json's auto_map names these: AutoConfig can read it (trust_remote_code)
            from ..modeling import MODELING_FILES

            for src in MODELING_FILES:
                shutil.copy2(src, tmp / src.name)
        if tokenizer is not None and not (tmp / "tokenizer_config.json").exists():
            tokenizer.save_pretrained(tmp)
    out = Path(output_dir).expanduser().resolve()
    return ExportResult(out, out / ONNX_SUBDIR / ONNX_FILE, exporter, past, validation)


def export_model_folder(spec: str, output: str | Path, *, backend: str = "auto", overwrite: bool = False,
                        trust_remote_code: bool = False, opset: int | None = None) -> ExportResult:
    """Load MODEL (folder / Hub id / .gguf / demo alias) and export it; what the CLI calls."""
    from ..io import check_output_dir
    from ..loading import load_model

    check_output_dir(output, overwrite, inputs=(spec,))  # refuse before the (slow) load
    model, tokenizer, source = load_model(spec, dtype="float32", trust_remote_code=trust_remote_code)
    source_dir = Path(source.path) if Path(source.path).is_dir() else None
    return export_onnx(model, output, tokenizer=tokenizer, source_dir=source_dir, backend=backend, opset=opset,
                       overwrite=overwrite)
