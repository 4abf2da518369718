"""shear-hub Space: a structurally pruned model next to its base model.

Standalone on purpose (a Space installs only requirements.txt): imports transformers, torch,
gradio, huggingface_hub and matplotlib, never shear_hub.

Configuration (environment variables win over shear_space.json written by
`shear-hub push --space` / `shear_hub.space.prepare_space_folder`):
  SHEAR_MODEL            pruned model: Hub id or local folder (required)
  SHEAR_BASE_MODEL       base model; default: `base_model` of the pruned model card, then pruning_report.json
  SHEAR_DEVICE           cpu | cuda | auto (default auto: GPU when present)
  SHEAR_MAX_NEW_TOKENS   upper bound accepted for max_new_tokens (default 512)
  SHEAR_CHAT_TEMPLATE    auto | on | off (default auto: use the tokenizer's chat template if it has one)
  SHEAR_TRUST_REMOTE_CODE  1 (default) | 0. Per-layer pruned models ship their own modeling code
                         (config.json `auto_map`); running the Space is the explicit request to execute it,
                         so such folders load with trust_remote_code=True. Folders without auto_map never do.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import torch
from huggingface_hub import snapshot_download
from huggingface_hub.repocard import metadata_load
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

HERE = Path(__file__).absolute().parent  # not resolve(): a symlinked app.py (Hub cache) keeps its folder
CONFIG_FILE = HERE / "shear_space.json"
# Only what inference needs; weights as safetensors only (no pickle files are fetched or loaded).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.md", "*.png", "*.txt", "*.model", "*.jinja"]
DEFAULT_PROMPT = "Explain what a Python list comprehension is."


class SpaceConfigError(RuntimeError):
    """Misconfiguration the Space owner must fix (message says how)."""


# ---------------------------------------------------------------- settings & files


def load_settings(config_file: Path = CONFIG_FILE) -> dict[str, str | None]:
    cfg: dict[str, Any] = {}
    if config_file.is_file():
        cfg = json.loads(config_file.read_text())
    return {
        "model": os.environ.get("SHEAR_MODEL") or cfg.get("model"),
        "base_model": os.environ.get("SHEAR_BASE_MODEL") or cfg.get("base_model"),
        "device": os.environ.get("SHEAR_DEVICE") or cfg.get("device") or "auto",
        "max_new_tokens": os.environ.get("SHEAR_MAX_NEW_TOKENS") or cfg.get("max_new_tokens") or "512",
        "chat_template": os.environ.get("SHEAR_CHAT_TEMPLATE") or cfg.get("chat_template") or "auto",
        "trust_remote_code": os.environ.get("SHEAR_TRUST_REMOTE_CODE") or "1",
    }


def is_hub_id(ref: str) -> bool:
    """huggingface_hub's own repo-id rule, the one shear_hub.hub.ids applies (this app never imports shear_hub)."""
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def resolve_local(ref: str) -> Path:
    """Local folder as is; otherwise a Hub model id downloaded (inference files only)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    if not is_hub_id(ref):
        raise SpaceConfigError(
            f"model '{ref}' is not an existing folder nor a Hub id; set SHEAR_MODEL/SHEAR_BASE_MODEL to a Hub id"
        )
    try:
        return Path(snapshot_download(ref, allow_patterns=ALLOW_PATTERNS))
    except Exception as exc:  # network, 404, gated repo: one readable line for the Space logs
        raise SpaceConfigError(f"cannot download '{ref}' from the Hub ({type(exc).__name__}: {exc})") from exc


def read_card_metadata(folder: Path) -> dict[str, Any]:
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    try:
        return metadata_load(readme) or {}
    except Exception:  # malformed front matter should not take the Space down
        return {}


def read_report(folder: Path) -> dict[str, Any] | None:
    path = folder / "pruning_report.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def default_base_model(folder: Path) -> str | None:
    """`base_model` from the model card front matter (str or list), else from pruning_report.json."""
    base = read_card_metadata(folder).get("base_model")
    if isinstance(base, list):
        base = base[0] if base else None
    if not base:
        base = (read_report(folder) or {}).get("base_model")
    return str(base) if base else None


def safetensors_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


# ---------------------------------------------------------------- models


def pick_device(setting: str) -> tuple[str, torch.dtype]:
    device = setting
    if setting == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


@dataclass
class LoadedModel:
    role: str  # "base" | "pruned"
    ref: str
    folder: Path
    model: Any
    tokenizer: Any
    device: str
    dtype: torch.dtype
    params: int
    file_bytes: int
    remote_code: bool
    stats: dict[str, Any] = field(default_factory=dict)


def load_model(role: str, ref: str, device: str, dtype: torch.dtype, allow_remote_code: bool) -> LoadedModel:
    folder = resolve_local(ref)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SpaceConfigError(f"{role} model '{ref}' has no config.json; point it at a transformers model folder")
    # Per-layer layouts ship configuration_shear.py/modeling_shear.py referenced by auto_map.
    remote_code = "auto_map" in json.loads(config_path.read_text())
    if remote_code and not allow_remote_code:
        raise SpaceConfigError(
            f"{role} model '{ref}' needs its shipped modeling code; set SHEAR_TRUST_REMOTE_CODE=1 to run it"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=remote_code, dtype=dtype
    )
    model.to(device).eval()
    params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    lm = LoadedModel(role, ref, folder, model, tokenizer, device, dtype, params, safetensors_bytes(folder), remote_code)
    # One-token warm-up so the first measured tokens/s is not paying for lazy initialisation.
    with torch.inference_mode():
        model.generate(**encode(lm, "Hello"), max_new_tokens=1, do_sample=False, pad_token_id=pad_id(lm))
    return lm


def pad_id(lm: LoadedModel) -> int | None:
    tok = lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def encode(lm: LoadedModel, prompt: str, chat_template: str = "off") -> dict[str, torch.Tensor]:
    tok = lm.tokenizer
    use_chat = chat_template == "on" or (chat_template == "auto" and getattr(tok, "chat_template", None))
    if use_chat:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tok(prompt, return_tensors="pt")
    return {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


class CountingStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also counts generated tokens (for live tokens/s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_tokens = 0

    def put(self, value: torch.Tensor) -> None:
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.n_tokens += int(value.numel())
        super().put(value)


def stream_generate(lm: LoadedModel, prompt: str, max_new_tokens: int, chat_template: str) -> Iterator[tuple[str, dict]]:
    """Greedy generation in a worker thread; yields (text so far, stats) as tokens arrive."""
    inputs = encode(lm, prompt, chat_template)
    streamer = CountingStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    error: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                lm.model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer, pad_token_id=pad_id(lm)
                )
        except BaseException as exc:  # surface in the UI instead of hanging the reader
            error.append(exc)
            streamer.end()

    start = time.perf_counter()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    text = ""
    for chunk in streamer:
        text += chunk
        yield text, _stats(lm, streamer.n_tokens, time.perf_counter() - start, done=False)
    thread.join()
    if error:
        raise gr.Error(f"{lm.role} model failed to generate: {error[0]}")
    yield text, _stats(lm, streamer.n_tokens, time.perf_counter() - start, done=True)


def _stats(lm: LoadedModel, tokens: int, seconds: float, done: bool) -> dict[str, Any]:
    return {
        "model": lm.ref,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else 0.0,
        "params": lm.params,
        "file_bytes": lm.file_bytes,
        "device": lm.device,
        "dtype": str(lm.dtype).replace("torch.", ""),
        "done": done,
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


def stats_markdown(lm: LoadedModel, stats: dict[str, Any] | None) -> str:
    head = f"**{human_count(lm.params)} params** · **{human_bytes(lm.file_bytes)}** safetensors · {lm.device}/{str(lm.dtype).replace('torch.', '')}"
    if not stats:
        return head
    state = "" if stats["done"] else " (running)"
    return f"**{stats['tokens_per_s']:.1f} tokens/s**{state} · {stats['tokens']} tokens in {stats['seconds']:.2f} s  \n{head}"


# ---------------------------------------------------------------- card: quality numbers & width plot


def quality_markdown(report: dict[str, Any] | None, base: LoadedModel, pruned: LoadedModel) -> str:
    if not report:
        return "_No pruning_report.json in the pruned model folder: quality numbers unavailable._"
    rows = [("Method", str(report.get("method", "?"))), ("Layout", str(report.get("layout", "?")))]
    if report.get("structures"):
        rows.append(("Structures", ", ".join(map(str, report["structures"]))))
    if report.get("params_before") and report.get("params_after"):
        rows.append(("Parameters", f"{human_count(report['params_before'])} → {human_count(report['params_after'])}"))
    if report.get("achieved_sparsity") is not None:
        rows.append(("Sparsity (achieved / target)", f"{report['achieved_sparsity']:.1%} / {report.get('target_sparsity', 0):.1%}"))
    ev = report.get("evaluation") or {}
    ppl = ev.get("perplexity") or {}
    if isinstance(ppl, dict) and ppl.get("value") is not None:
        where = f" ({ppl.get('data', '?')}, seq {ppl.get('seq_len', '?')})"
        base_ppl = ev.get("base_perplexity")
        rows.append(("Perplexity" + where, f"{base_ppl:.2f} → {ppl['value']:.2f}" if base_ppl else f"{ppl['value']:.2f}"))
    held = ev.get("heldout_perplexity") or {}
    if isinstance(held, dict) and held.get("value") is not None:  # measured by prune on unused calibration text
        where = f" (held-out calibration text, seq {held.get('seq_len', '?')})"
        rows.append(("Perplexity" + where, f"{held['base']:.2f} → {held['value']:.2f}" if held.get("base")
                     else f"{held['value']:.2f}"))
    for key, val in ev.items():  # zero-shot or other scalar metrics added by eval
        if key == "heldout_perplexity":
            continue
        if key not in ("perplexity", "base_perplexity") and isinstance(val, (int, float)):
            rows.append((key.replace("_", " "), f"{val:.4g}"))
        elif isinstance(val, dict) and key not in ("perplexity",):
            for sub, v in val.items():
                if isinstance(v, (int, float)):
                    rows.append((f"{key} {sub}".replace("_", " "), f"{v:.4g}"))
    rec = report.get("recovery")
    if isinstance(rec, dict) and rec.get("method"):
        rows.append(("Recovery", str(rec["method"])))
    rows.append(("File size (safetensors)", f"{human_bytes(base.file_bytes)} → {human_bytes(pruned.file_bytes)}"))
    lines = ["| Metric | Value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _per_layer_widths(report: dict[str, Any]) -> tuple[list[int], list[float], list[float]] | None:
    before = (report.get("dims_before") or {}).get("layers") or []
    after_d = report.get("dims_after") or {}
    after = after_d.get("layers") or []
    removed = set(after_d.get("removed_layers") or [])
    if not before:
        return None
    if len(after) == len(before):
        mapped = dict(enumerate(after))
    else:  # dims_after lists only the surviving layers, in order
        kept = [i for i in range(len(before)) if i not in removed]
        mapped = dict(zip(kept, after))
    idx, mlp, heads = [], [], []
    for i, b in enumerate(before):
        a = None if i in removed else mapped.get(i)
        idx.append(i)
        mlp.append(100.0 * (a or {}).get("intermediate_size", 0) / max(b.get("intermediate_size", 1), 1))
        heads.append(100.0 * (a or {}).get("num_attention_heads", 0) / max(b.get("num_attention_heads", 1), 1))
    return idx, mlp, heads


def width_plot_path(folder: Path, report: dict[str, Any] | None, out_dir: Path) -> Path | None:
    """The card's width_per_layer.png, or one drawn here from pruning_report.json."""
    shipped = folder / "width_per_layer.png"
    if shipped.is_file():
        return shipped
    widths = _per_layer_widths(report or {})
    if widths is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx, mlp, heads = widths
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(idx) + 3), 3.2), dpi=100)
    w = 0.4
    ax.bar([i - w / 2 for i in idx], mlp, w, label="MLP channels kept")
    ax.bar([i + w / 2 for i in idx], heads, w, label="attention heads kept")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("% of base width")
    ax.set_ylim(0, 125)  # headroom so the legend never hides a bar
    ax.set_xticks(idx)
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    ax.set_title("Width per layer after pruning")
    fig.tight_layout()
    out = out_dir / "width_per_layer.png"
    fig.savefig(out)
    plt.close(fig)
    return out


# ---------------------------------------------------------------- app


class Comparer:
    def __init__(self, settings: dict[str, str | None]) -> None:
        model_ref = settings.get("model")
        if not model_ref:
            raise SpaceConfigError(
                "no pruned model configured; set the SHEAR_MODEL variable (Hub id or folder) "
                "or create the Space with `shear-hub push --space`"
            )
        device, dtype = pick_device(str(settings.get("device") or "auto"))
        allow_remote = str(settings.get("trust_remote_code", "1")) != "0"
        pruned_folder = resolve_local(model_ref)
        base_ref = settings.get("base_model") or default_base_model(pruned_folder)
        if not base_ref:
            raise SpaceConfigError(
                f"model card of '{model_ref}' has no base_model; set the SHEAR_BASE_MODEL variable"
            )
        self.chat_template = str(settings.get("chat_template") or "auto")
        self.max_tokens_limit = int(settings.get("max_new_tokens") or 512)
        self.base = load_model("base", base_ref, device, dtype, allow_remote)
        self.pruned = load_model("pruned", model_ref, device, dtype, allow_remote)
        self.report = read_report(self.pruned.folder)
        self.plot_dir = Path(tempfile.mkdtemp(prefix="shear_space_"))
        self.plot = width_plot_path(self.pruned.folder, self.report, self.plot_dir)
        self.lock = threading.Lock()  # one generation at a time: fair tokens/s, bounded memory

    def compare(self, prompt: str, max_new_tokens: int) -> Iterator[tuple[str, str, str, str, dict]]:
        """Stream base then pruned (run one after the other so each gets the whole CPU/GPU and the
        tokens/s are comparable); the last yield holds the final texts and numbers."""
        if not prompt or not prompt.strip():
            raise gr.Error("Type a prompt first.")
        n = int(max_new_tokens or 0)
        if not 1 <= n <= self.max_tokens_limit:
            raise gr.Error(f"max_new_tokens must be between 1 and {self.max_tokens_limit}.")
        with self.lock:
            base_text, pruned_text = "", ""
            base_stats: dict[str, Any] | None = None
            pruned_stats: dict[str, Any] | None = None
            for base_text, base_stats in stream_generate(self.base, prompt, n, self.chat_template):
                yield self._out(base_text, pruned_text, base_stats, pruned_stats)
            for pruned_text, pruned_stats in stream_generate(self.pruned, prompt, n, self.chat_template):
                yield self._out(base_text, pruned_text, base_stats, pruned_stats)

    def _out(self, base_text: str, pruned_text: str, bs: dict | None, ps: dict | None) -> tuple[str, str, str, str, dict]:
        numbers: dict[str, Any] = {"base": bs, "pruned": ps}
        if bs and ps and bs["done"] and ps["done"] and bs["tokens_per_s"] > 0:
            numbers["speedup"] = round(ps["tokens_per_s"] / bs["tokens_per_s"], 3)
        return (
            base_text,
            pruned_text,
            stats_markdown(self.base, bs),
            stats_markdown(self.pruned, ps),
            numbers,
        )


def _hub_link(ref: str) -> str:
    return ref if Path(ref).expanduser().is_dir() else f"[{ref}](https://huggingface.co/{ref})"


def build_demo(settings: dict[str, str | None] | None = None) -> gr.Blocks:
    cmp = Comparer(settings or load_settings())
    with gr.Blocks(title="shear-hub: pruned vs base") as demo:
        gr.Markdown(
            f"# ✂️ Pruned vs base\nPruned: {_hub_link(cmp.pruned.ref)} · Base: {_hub_link(cmp.base.ref)}  \n"
            "Greedy decoding; the base model runs first, then the pruned one, each alone on the hardware."
        )
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=3, scale=4, elem_id="prompt")
            with gr.Column(scale=1):
                max_new = gr.Slider(1, cmp.max_tokens_limit, value=min(64, cmp.max_tokens_limit), step=1,
                                    label="max_new_tokens", elem_id="max_new_tokens")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            with gr.Column():
                gr.Markdown(f"### Base\n{_hub_link(cmp.base.ref)}")
                base_out = gr.Textbox(label="Base output", lines=10, elem_id="base_output")
                base_stats = gr.Markdown(stats_markdown(cmp.base, None), elem_id="base_stats")
            with gr.Column():
                gr.Markdown(f"### Pruned\n{_hub_link(cmp.pruned.ref)}")
                pruned_out = gr.Textbox(label="Pruned output", lines=10, elem_id="pruned_output")
                pruned_stats = gr.Markdown(stats_markdown(cmp.pruned, None), elem_id="pruned_stats")
        with gr.Accordion("Raw numbers", open=False):
            numbers = gr.JSON(label="numbers")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Quality (from the model card's pruning_report.json)")
                gr.Markdown(quality_markdown(cmp.report, cmp.base, cmp.pruned), elem_id="quality")
            with gr.Column():
                if cmp.plot is not None:
                    gr.Image(value=str(cmp.plot), label="Width per layer", type="filepath",
                             interactive=False, elem_id="width_plot")
                else:
                    gr.Markdown("_No per-layer dimensions in pruning_report.json._")
        outputs = [base_out, pruned_out, base_stats, pruned_stats, numbers]
        run.click(cmp.compare, inputs=[prompt, max_new], outputs=outputs, api_name="compare")
        prompt.submit(cmp.compare, inputs=[prompt, max_new], outputs=outputs, api_visibility="private")
    return demo


def main() -> None:
    try:
        demo = build_demo()
    except SpaceConfigError as exc:
        raise SystemExit(f"shear-hub Space: {exc}") from None
    # Host/port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (set by Spaces and by the tests).
    demo.queue().launch(ssr_mode=False)


if __name__ == "__main__":
    main()
