"""Pruning and evaluation under ``--max-memory``, on accelerate's dispatch / offload machinery (no home-made offloader).

    load      AutoModelForCausalLM.from_pretrained(device_map=infer_auto_device_map(meta model, max_memory),
              offload_folder=...): modules that do not fit the cap are disk-offloaded (transformers maps them onto
              the checkpoint's own safetensors files) and read back one module at a time by accelerate's hooks.
    score     forward passes run through the hooks (wanda's activation norms); weights are read one module at a
              time with accelerate's ``align_module_device`` and reduced to per-group sums before the next module.
    surgery   surgery.slice_state_dict one decoder layer at a time; each slice is written as a safetensors shard to a
              staging folder beside the output, which is then loaded the same way (dispatched under the cap).
    save      save_pretrained of the dispatched model with ``max_shard_size`` below the cap (transformers reads
              offloaded tensors back shard by shard); offloaded tensors are cast to the save dtype as they are read.

memory_plan.py holds the parsing, the header check and which methods are supported.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import ShearHubError
from .memory_plan import check_cap, check_offload_disk, describe


# ----------------------------------------------------------------- loading under the cap --------------------------
def device_map_for(config, cap: dict, dtype: torch.dtype, trust_remote_code: bool = False) -> dict:
    """accelerate's placement of ``config``'s model under ``cap`` (weights on the meta device: nothing is loaded)."""
    from accelerate import init_empty_weights
    from accelerate.utils import infer_auto_device_map
    from transformers import AutoModelForCausalLM

    from .modeling import register_auto_classes

    register_auto_classes()  # the per-layer architectures, for AutoModelForCausalLM.from_config (idempotent)

    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    meta.tie_weights()
    no_split = sorted(getattr(meta, "_no_split_modules", None) or [])
    return dict(infer_auto_device_map(meta, max_memory=dict(cap), no_split_module_classes=no_split, dtype=dtype))


def load_dispatched(path: str, cap: dict, *, dtype: torch.dtype, offload_dir: str | Path,
                    trust_remote_code: bool = False, spec: str | None = None):
    """The model at ``path`` dispatched under ``cap`` (accelerate hooks; disk offload for what does not fit)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .loading import _explain_load_failure

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        device_map = device_map_for(config, cap, dtype, trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, device_map=device_map, offload_folder=str(offload_dir), use_safetensors=True,
            trust_remote_code=trust_remote_code)
    except ShearHubError:
        raise
    except Exception as exc:
        raise ShearHubError(_explain_load_failure(spec or str(path), exc)) from exc
    model.eval()
    return model


def placement(model) -> dict[str, int]:
    """How many top-level units accelerate put on each device (for the report)."""
    counts: dict[str, int] = {}
    for device in (getattr(model, "hf_device_map", None) or {"": "cpu"}).values():
        counts[str(device)] = counts.get(str(device), 0) + 1
    return counts


# ----------------------------------------------------------------- reading weights one module at a time ----------
def materialized(model, names):
    """Yield (name, tensor) for the named parameters, onloading each owning module in turn with accelerate's
    ``align_module_device`` (resident modules are read as they are). A tensor stays valid after its module is
    offloaded again; drop it to free the memory."""
    from accelerate.utils import align_module_device

    modules = dict(model.named_modules())
    by_owner: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
    for name in names:
        owner, _, attr = name.rpartition(".")
        by_owner.setdefault(owner, []).append((name, attr))
    for owner, items in by_owner.items():
        module = modules[owner]
        with align_module_device(module):
            loaded = [(name, getattr(module, attr).detach()) for name, attr in items]
        for name, tensor in loaded:
            if tensor.device.type == "meta":
                raise ShearHubError(f"internal: {name} is offloaded but no accelerate hook holds it")
            yield name, tensor


# ----------------------------------------------------------------- scoring under the cap --------------------------
def capped_select(pruner, ctx, capped: "CappedRun") -> list:
    """``pruner.select(ctx)`` for a dispatched model: the method's own offloaded selection, or its element-wise
    importance from the weights (one module at a time) or from the weights and their gradients (one decoder layer
    at a time, layer_stream.py)."""
    from .allocation import allocate
    from .methods.base import costs_from_reduced, normalize_per_layer

    if pruner.defines("select_offloaded"):
        return pruner.select_offloaded(ctx, capped)
    reduced: dict = {}
    totals: dict = {}
    if pruner.defines("gradient_importance"):
        _gradient_importance(pruner, ctx, capped, reduced, totals)
    else:
        _weight_importance(pruner, ctx, reduced, totals)
    costs = costs_from_reduced(ctx.graph, reduced, totals)
    if pruner.layer_normalized:
        costs = normalize_per_layer(ctx.graph, costs)
    return allocate(ctx.graph, costs, ctx.params_to_remove, ctx.layout)


def _weight_importance(pruner, ctx, reduced: dict, totals: dict) -> None:
    from .methods.base import prunable_weights, reduce_importance

    names = list(prunable_weights(ctx))  # shapes only: offloaded parameters are on the meta device
    importance = pruner.weight_importance(ctx, names)  # the method's own formula, one weight at a time
    for name, w in materialized(ctx.model, names):
        reduce_importance(name, w, importance, reduced, totals)  # block by block: no full-size importance copy
        del w


def _gradient_importance(pruner, ctx, capped: "CappedRun", reduced: dict, totals: dict) -> None:
    """Gradients of the method's loss, one decoder layer at a time; each layer's importances are reduced to group
    sums while its weights are materialized, before the next layer is read."""
    from .methods.base import prunable_weights, reduce_importance

    sliced = {s.param for g in ctx.graph.groups for s in g.slices}  # what a group's cost can read
    names = [n for n in prunable_weights(ctx) if n in sliced]
    by_layer = layer_names(ctx.graph, names, pruner.name)
    importance = pruner.gradient_importance(ctx)
    stream = capped.stream(ctx, "gradients")
    n = len(stream.batches)
    model = ctx.model

    def before(i, layer):
        for p in ctx.graph.layer_params(i, layer, by_layer[i]).values():
            p.requires_grad_(True)
            p.grad = None

    def after(i, layer):
        for name, p in ctx.graph.layer_params(i, layer, by_layer[i]).items():
            if p.grad is not None:
                reduce_importance(name, importance(name, p, p.grad), lambda _n, block: block, reduced, totals)
            p.grad = None
            p.requires_grad_(False)

    for p in model.parameters():
        p.requires_grad_(False)
    stream.forward()
    stream.backward(lambda logits, ids: pruner.loss_for(model, logits, ids, n), down_to=min(by_layer),
                    before_layer=lambda i, layer: before(i, layer) if i in by_layer else None,
                    after_layer=lambda i, layer: after(i, layer) if i in by_layer else None)


def layer_names(graph, names: list[str], method: str) -> dict[int, list[str]]:
    """Weight names by decoder layer; weights outside the decoder layers (embedding, LM head: residual channels)
    would need full-size gradients, which the cap is there to avoid."""
    by_layer: dict[int, list[str]] = {}
    for name in names:
        role = graph.role(name)
        if role is None or role.layer is None:
            raise ShearHubError(f"--method {method} under --max-memory scores decoder layers only, not {name}; "
                                "drop 'hidden' from --structures, or drop --max-memory")
        by_layer.setdefault(role.layer, []).append(name)
    return by_layer


# ----------------------------------------------------------------- the capped run ---------------------------------
class CappedRun:
    """Staging folders and steps of one prune under ``--max-memory`` (see the module docstring)."""

    def __init__(self, cap: dict, output: str | Path, dtype: str, trust_remote_code: bool = False):
        self.cap = cap
        self.dtype_name = dtype
        self.trust_remote_code = trust_remote_code
        out = Path(output).expanduser().resolve()
        self.output = out
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.updated: dict[str, Path] = {}  # weight name -> staged file holding the method's updated tensor
        self._parts = 0  # staged update files written so far

    def check(self, model_path: str, spec: str, sparsity: float, writes_updates: bool = False) -> None:
        """Before anything loads: the cap holds the largest unit, the disk holds the staged pruned weights (and,
        for a method that updates weights, one updated copy of the decoder layers)."""
        plan = check_cap(self.cap, model_path, self.dtype_name, spec=spec)
        self.plan = plan
        # staged pruned weights (compute dtype) + the saved folder: at most the dense size each
        needed = int(plan.total_bytes * (1 - sparsity)) * 2 + (plan.total_bytes if writes_updates else 0)
        check_offload_disk(self.output.parent, needed)

    @property
    def workdir(self) -> Path:
        if self._tmp is None:
            for stale in self.output.parent.glob(f".{self.output.name}.offload-*"):  # a killed run's leftovers
                shutil.rmtree(stale, ignore_errors=True)
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.TemporaryDirectory(prefix=f".{self.output.name}.offload-", dir=self.output.parent)
        return Path(self._tmp.name)

    def load(self, path: str, spec: str):
        from .loading import parse_dtype

        (self.workdir / "dense-offload").mkdir(exist_ok=True)
        model = load_dispatched(path, self.cap, dtype=parse_dtype(self.dtype_name),
                                offload_dir=self.workdir / "dense-offload", trust_remote_code=self.trust_remote_code,
                                spec=spec)
        self.dense_placement = placement(model)
        return model

    def select(self, pruner, ctx) -> list:
        return capped_select(pruner, ctx, self)

    def store(self, new: dict[str, torch.Tensor]) -> None:
        """Keep a method's updated weights (e.g. the surgeon's OBS updates) on disk, in the compute dtype, for
        surgery to read instead of the dense weights."""
        from safetensors.torch import save_file

        from .loading import parse_dtype

        if not new:
            return
        folder = self.workdir / "updated"
        folder.mkdir(exist_ok=True)
        self._parts += 1  # a new name each time: earlier files may still be read
        file = folder / f"part-{self._parts:05d}.safetensors"
        dtype = parse_dtype(self.dtype_name)
        save_file({n: t.detach().to("cpu", dtype).contiguous() for n, t in new.items()}, str(file))
        self.updated.update({n: file for n in new})
        for old in set(folder.iterdir()) - set(self.updated.values()):  # superseded by a later shot's updates
            old.unlink()

    def weights(self, model, names: list[str]):
        """(name, tensor) for ``names``: the stored update where the method wrote one, the dense weight otherwise."""
        from safetensors import safe_open

        resident = [n for n in names if n not in self.updated]
        if resident:
            yield from materialized(model, resident)
        by_file: dict[Path, list[str]] = {}
        for name in names:
            if name in self.updated:
                by_file.setdefault(self.updated[name], []).append(name)
        for file, stored in by_file.items():  # each staged file opened once
            with safe_open(str(file), framework="pt") as f:
                for name in stored:
                    yield name, f.get_tensor(name)

    def stream(self, ctx, what: str, prepare=None):
        """A LayerStream of ``ctx``'s calibration batches through the dispatched model's decoder layers;
        ``prepare(i, layer)`` runs on each materialized layer before it is used."""
        from .layer_stream import LayerStream

        stage = self.workdir / f"stream-{what}"
        shutil.rmtree(stage, ignore_errors=True)
        layers = ctx.graph.decoder_layers(ctx.model)
        return LayerStream(ctx.model, layers, list(ctx.batches(what)), stage, prepare)

    def restore(self, layer, prefix: str, zeroed: list) -> None:
        """Put the stored updates of a materialized ``layer`` (weight names start with ``prefix``) back into it and
        zero the slices of the ``zeroed`` groups there: the layer as a method that ran resident would have left it
        (the surgeon's later shots)."""
        from .structures.graph import zero_groups

        own = dict(layer.named_parameters())
        mine = [n for n in self.updated if n.startswith(prefix)]
        with torch.no_grad():
            for name, tensor in self.weights(None, mine):
                own[name[len(prefix):]].copy_(tensor)
        zero_groups(layer, zeroed, prefix)

    def build_pruned(self, graph, removed: list, layout: str):
        """surgery.build_pruned_model, one decoder layer at a time: slices staged as safetensors, then dispatched."""
        from safetensors.torch import save_file

        from .loading import parse_dtype
        from .surgery import pruned_config, slice_state_dict

        dense = graph.adapter.model
        config, new_dims = pruned_config(graph, removed, layout)
        stage = self.workdir / "pruned"
        stage.mkdir()
        chunks: OrderedDict = OrderedDict()
        for name, _ in dense.named_parameters():  # tied weights once, as in the dense state dict's slices
            role = graph.role(name)
            if role is not None:
                chunks.setdefault(role.layer, []).append(name)
        weight_map: dict[str, str] = {}
        total = 0
        for k, names in enumerate(chunks.values()):
            state = dict(self.weights(dense, names))
            sliced = {n: t.detach().cpu().contiguous() for n, t in
                      slice_state_dict(graph, state, removed, new_dims).items()}
            del state
            if not sliced:
                continue
            file = f"model-{k + 1:05d}-of-{len(chunks):05d}.safetensors"
            save_file(sliced, str(stage / file), metadata={"format": "pt"})
            for n, t in sliced.items():
                weight_map[n] = file
                total += t.numel() * t.element_size()
            del sliced
        (stage / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        config.save_pretrained(stage)
        self._check_names(config, weight_map, new_dims)
        (self.workdir / "pruned-offload").mkdir(exist_ok=True)
        pruned = load_dispatched(str(stage), self.cap, dtype=parse_dtype(self.dtype_name),
                                 offload_dir=self.workdir / "pruned-offload", trust_remote_code=self.trust_remote_code)
        if getattr(dense, "generation_config", None) is not None:
            pruned.generation_config = dense.generation_config
        self.pruned_placement = placement(pruned)
        return pruned, new_dims

    def _check_names(self, config, weight_map: dict, new_dims) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights():
            meta = AutoModelForCausalLM.from_config(config, trust_remote_code=self.trust_remote_code)
        expected = set(meta.state_dict())
        persistent = {n for n, _ in meta.named_parameters()} | {
            f"{m}.{b}" if m else b for m, mod in meta.named_modules() for b in mod._buffers
            if b not in mod._non_persistent_buffers_set}
        missing = sorted(n for n in expected & persistent if n not in weight_map
                         and not (n == "lm_head.weight" and new_dims.tied_embeddings))
        unexpected = sorted(set(weight_map) - expected)
        if missing or unexpected:
            raise ShearHubError(f"internal: surgery produced mismatched weights (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]})")

    def cast(self, model, dtype: torch.dtype) -> None:
        """save_dtype.cast_weights for a dispatched model: resident tensors now, offloaded ones as they are read."""
        from .save_dtype import cast_weights

        cast_weights(model, dtype)
        name = str(dtype).removeprefix("torch.")
        for module in model.modules():
            weights_map = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
            loader = getattr(weights_map, "dataset", weights_map)
            for entry in (getattr(loader, "index", None) or {}).values():
                if isinstance(entry, dict) and "safetensors_file" in entry:
                    entry["dtype"] = name

    @property
    def max_shard_size(self) -> int:
        """Shards small enough that the one being written fits beside the resident weights."""
        return max(self.plan.min_cap_bytes, max(self.cap.values()) // 4)

    def record(self) -> dict:
        return {"cap": describe(self.cap), "min_cap_bytes": self.plan.min_cap_bytes,
                "dense_placement": getattr(self, "dense_placement", None),
                "pruned_placement": getattr(self, "pruned_placement", None)}

    def keep_alive(self, model) -> None:
        """A returned model reads its offloaded weights from the staging folder: it lives as long as the model."""
        if model is not None and self._tmp is not None:
            model._shear_hub_offload_dir = self._tmp
            self._tmp = None

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def load_tokenizer(source, trust_remote_code: bool = False):
    """The tokenizer of a local model folder (the capped path loads the model itself, under the cap)."""
    from transformers import AutoTokenizer

    from .loading import _explain_load_failure

    try:
        return AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ShearHubError(_explain_load_failure(str(source.spec), exc)) from exc


def evaluate_loader(spec: str, max_memory, *, dtype: str, device: str = "cpu", trust_remote_code: bool = False):
    """(model, tokenizer, source, device) for ``shear-hub eval --max-memory``: the header check, then the model
    dispatched under the cap; its offload folder lives as long as the model."""
    from .loading import parse_dtype, resolve_source
    from .memory_plan import main_device, parse_max_memory

    cap = parse_max_memory(max_memory)
    device = main_device(cap, device)
    source = resolve_source(spec)
    check_cap(cap, source.weights_path, dtype, spec=spec)
    tmp = tempfile.TemporaryDirectory(prefix="shear-hub-offload-")
    model = load_dispatched(source.path, cap, dtype=parse_dtype(dtype), offload_dir=tmp.name,
                            trust_remote_code=trust_remote_code, spec=spec)
    model._shear_hub_offload_dir = tmp
    return model, load_tokenizer(source, trust_remote_code), source, device
