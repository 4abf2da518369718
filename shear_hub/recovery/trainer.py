"""The recovery loop: LoRA (peft) on every linear projection, LM loss optionally mixed with distillation from the
dense teacher, data parallel through accelerate, checkpointed so that a killed run resumes where it stopped."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data import load_text, sample_windows, tokenize_text
from ..errors import ShearHubError
from ..io import atomic_output_dir, check_output_dir, clean_stale_temporaries
from ..loading import load_model, resolve_source
from ..lora_trainer import LoraTrainer, adamw, attach_lora
from ..report import PruningReport, command_line, read_report, write_report
from ..save_dtype import base_dtype
from .checkpoint import Checkpoint, checkpoint_dir, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RecoveryConfig
from .losses import mixed_loss


@dataclass
class RecoveryResult:
    output: Path
    report: PruningReport  # what the output folder's pruning_report.json holds
    resumed_from: int | None


def _log(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(f"shear-hub recover: {message}", file=sys.stderr, flush=True)


def _fsdp(accelerator):
    """(accelerator, whether this run shards the model with FSDP): ``accelerate launch --config_file
    <shear_hub/resources/accelerate/fsdp.yaml>``. accelerate 1.x selects FSDP only for accelerator devices (its
    ``AcceleratorState`` leaves CPU processes at MULTI_CPU); CPU processes on gloo (``--device cpu``, as in the tests)
    get it here, since torch's FSDP itself runs on CPU: the accelerator comes back wrapped in ``_CpuFsdp``."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        pass
    elif (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
          and state.distributed_type == DistributedType.MULTI_CPU):
        state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch sets
        accelerator = _CpuFsdp(accelerator)
    else:
        return accelerator, False
    plugin = state.fsdp_plugin
    if plugin.fsdp_version != 1:
        raise ShearHubError("recover supports FSDP version 1 (fsdp_version: 1, as in shear_hub/resources/accelerate/"
                            "fsdp.yaml), not FSDP2")
    if not plugin.use_orig_params:
        raise ShearHubError("FSDP with LoRA needs use_orig_params "
                            "(fsdp_use_orig_params: true in the accelerate config)")
    return accelerator, True


class _CpuFsdp:
    """An ``Accelerator`` whose CPU processes run FSDP: the one owner of that workaround of accelerate's internals.

    Every ``AcceleratorState()`` that accelerate builds later (e.g. for the optimizer) copies MULTI_CPU and device
    cpu:0 back from ``PartialState``, which stays MULTI_CPU so that its collectives (reduce, gather) keep working.
    So FSDP is (re)selected when it is chosen, after ``prepare``, before ``clip_grad_norm_`` (FSDP's clip: the norm
    over all ranks' shards) and before ``get_state_dict``. FSDP's CPU compute device has no index: "cpu", not
    "cpu:0". Everything else goes to the wrapped accelerator unchanged."""

    def __init__(self, accelerator) -> None:
        self._accelerator = accelerator
        self._select()

    def __getattr__(self, name: str):
        return getattr(self._accelerator, name)

    def _select(self) -> None:
        from accelerate.utils import DistributedType

        self._accelerator.state.distributed_type = DistributedType.FSDP
        self._accelerator.state.device = torch.device("cpu")

    def prepare(self, *args):
        prepared = self._accelerator.prepare(*args)
        self._select()
        return prepared

    def clip_grad_norm_(self, parameters, max_norm: float):
        self._select()
        return self._accelerator.clip_grad_norm_(parameters, max_norm)

    def get_state_dict(self, model) -> dict | None:
        """The full state dict on the main process (None elsewhere), as ``Accelerator.get_state_dict`` gives it but
        without offload_to_cpu, which frees the gathered tensors when they already are on the CPU."""
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        self._select()
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=True)):
            return model.state_dict()


def step_windows(tokens: torch.Tensor, cfg: RecoveryConfig, step: int) -> torch.Tensor:
    """The global batch of ``step``: random windows from a generator seeded by (seed, step), identical in every
    process and after a resume, so data order needs no checkpointing."""
    return sample_windows(tokens, cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))


def _base_report(source, model) -> PruningReport:
    """The input folder's report, or a minimal one for a model that shear-hub did not prune (e.g. the dense control)."""
    report = read_report(source.path, missing_ok=True)
    if report is not None:
        return report
    params = sum(p.numel() for p in model.parameters())
    return PruningReport(
        shear_hub_version=__version__, command=None, base_model=source.hub_id or str(source.spec),
        base_model_license=source.license, method="none", method_config={},
        layout="per-layer" if getattr(model.config, "auto_map", None) else "uniform", structures=[],
        target_sparsity=0.0, achieved_sparsity=0.0, params_before=params, params_after=params,
        architecture_before=type(model).__name__, architecture_after=type(model).__name__,
        evaluation={}, recovery=None,
    )


def _record_recovery(report: PruningReport, recovery: dict, cfg: RecoveryConfig, ppl_after: float | None) -> None:
    """recover's section in the report, and the perplexity it measured after training in the report's evaluation."""
    from ..evaluation.report import data_label

    report.recovery = recovery
    held = (report.evaluation or {}).get("heldout_perplexity")
    if isinstance(held, dict) and "stage" not in held:  # prune's numbers describe the model before this training
        report.evaluation = {**report.evaluation, "heldout_perplexity": {**held, "stage": "after pruning, before recovery"}}
    if ppl_after is not None:
        report.evaluation = {**(report.evaluation or {}), "perplexity": {
            "data": data_label(cfg.eval_data), "seq_len": cfg.eval_seq_len, "windows": cfg.eval_windows,
            "value": round(ppl_after, 4)}}


@dataclass
class _Run:
    """One recovery run: its settings, the accelerate state and what the steps share."""

    cfg: RecoveryConfig
    accelerator: Any
    fsdp: bool
    out: Path
    ckpt_dir: Path
    timings: dict[str, float] = field(default_factory=dict)
    tokenizer: Any = None
    teacher: torch.nn.Module | None = None
    tokens: torch.Tensor | None = None  # the tokenized training text
    eval_text: str | None = None
    fingerprint: str = ""  # the settings and input a checkpoint must match to be resumed

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def log(self, message: str) -> None:
        _log(self.accelerator, message)

    def measure(self, model) -> float | None:
        """Perplexity on --eval-data (main process only; None elsewhere or without --eval-data)."""
        from ..evaluation.perplexity import perplexity

        if self.eval_text is None or not self.accelerator.is_main_process:
            return None
        cfg = self.cfg
        return perplexity(model, self.tokenizer, text=self.eval_text, seq_len=cfg.eval_seq_len, windows=cfg.eval_windows)


@dataclass
class _Progress:
    """Where training stands: the next step, the loss curve so far and the training seconds (from a checkpoint)."""

    start: int = 0
    curve: list[dict] = field(default_factory=list)
    train_s: float = 0.0
    resumed_from: int | None = None


def recover(model: str, output: str | Path, config: RecoveryConfig | None = None, *, overwrite: bool = False,
            device: str | None = None, trust_remote_code: bool = False, resume: bool = True,
            command: str | None = None) -> RecoveryResult:
    """Fine-tune ``model`` (a pruned shear-hub folder or any causal LM) with LoRA and write the result to ``output``."""
    cfg = config or RecoveryConfig()
    cfg.validate()
    run, source = _start(model, output, cfg, overwrite=overwrite, device=device)
    student, source = _load_models(run, model, source, trust_remote_code)
    report = _base_report(source, student)
    _load_texts(run)
    ppl_before = _perplexity_before(run, student)
    # FSDP flattens each wrapped layer's parameters into one tensor of one dtype: LoRA stays in the model's dtype
    peft_model, named = _attach(student, cfg, autocast_adapter_dtype=not run.fsdp)
    trainable = sum(p.numel() for p in named.values())
    optimizer = None if run.fsdp else adamw(named.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.fingerprint = cfg.fingerprint(str(Path(source.path).resolve()) if Path(source.path).exists() else source.path)
    progress = _resume(run, named, optimizer, resume)
    wrapped, optimizer = _prepare(run, peft_model, optimizer, trainable)
    _train(run, wrapped, optimizer, progress)
    if run.fsdp:
        peft_model = _gather_fsdp(run.accelerator, wrapped, model, cfg, trust_remote_code)
    else:
        peft_model = run.accelerator.unwrap_model(wrapped)
    if peft_model is not None:
        peft_model.eval()
    ppl_after = _perplexity_after(run, peft_model, ppl_before)
    recovery = _recovery_section(run, source, command, trainable, progress, ppl_before, ppl_after)
    _record_recovery(report, recovery, cfg, ppl_after)
    if run.accelerator.is_main_process:
        _save(peft_model, run.tokenizer, run.out, report, overwrite, source, cfg)
        shutil.rmtree(run.ckpt_dir, ignore_errors=True)  # finished: the checkpoint is no longer needed
        run.log(f"wrote {'merged model' if cfg.merge else 'LoRA adapter'} -> {run.out}")
    run.accelerator.wait_for_everyone()
    return RecoveryResult(run.out, report, progress.resumed_from)


def _start(model: str, output: str | Path, cfg: RecoveryConfig, *, overwrite: bool, device: str | None):
    """The accelerate state and every refusal that needs no loaded model (settings vs processes and FSDP, output
    folder, memory / disk estimated from the headers)."""
    from accelerate import Accelerator

    from ..resources_check import check_recover

    source = resolve_source(model)
    out = check_output_dir(output, overwrite, inputs=(model, source.path))
    accelerator, fsdp = _fsdp(Accelerator(cpu=(device == "cpu")))
    world = accelerator.num_processes
    if fsdp and cfg.save_every:
        raise ShearHubError("checkpoints are not supported under FSDP; add --save-every 0 (a killed run starts over)")
    if fsdp and cfg.eval_every:
        raise ShearHubError("--eval-every is not supported under FSDP; perplexity is measured before and after only")
    if cfg.batch_size % world:
        raise ShearHubError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes; "
                            f"use a multiple of {world}")
    if device and device != "cpu" and accelerator.device.type != torch.device(device).type:
        raise ShearHubError(f"--device {device} asked but accelerate chose {accelerator.device}; check the device")
    if accelerator.is_main_process:
        clean_stale_temporaries(out)
    # Fail in seconds, not after loading, when memory or disk cannot hold the job (estimate from the headers).
    teacher_source = resolve_source(cfg.teacher) if cfg.teacher else None
    check_recover(source.weights_path, out, dtype=cfg.dtype, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                  lora_rank=cfg.lora_rank, device=str(accelerator.device),
                  teacher_path=teacher_source.weights_path if teacher_source else None)
    return _Run(cfg, accelerator, fsdp, out, checkpoint_dir(out)), source


def _attach(model: torch.nn.Module, cfg: RecoveryConfig, *, autocast_adapter_dtype: bool):
    """LoRA as recover puts it on ``model``: (peft model, its trainable parameters by name)."""
    return attach_lora(model, cfg.target_modules, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       task_type="CAUSAL_LM", autocast_adapter_dtype=autocast_adapter_dtype)


def _load_models(run: _Run, model: str, source, trust_remote_code: bool):
    """The student (returned with its source) and the teacher (kept in ``run``), seeded alike in every process."""
    cfg = run.cfg
    t = time.perf_counter()
    torch.manual_seed(cfg.seed)  # same LoRA initialisation in every process
    student, run.tokenizer, source = load_model(model, dtype=cfg.dtype, trust_remote_code=trust_remote_code)
    if cfg.teacher:
        teacher, _, _ = load_model(cfg.teacher, dtype=cfg.dtype, trust_remote_code=trust_remote_code)
        if teacher.config.vocab_size != student.config.vocab_size:
            raise ShearHubError(f"--teacher {cfg.teacher} has vocabulary {teacher.config.vocab_size}, the model "
                                f"{student.config.vocab_size}; distil from the model it was pruned from")
        run.teacher = teacher.requires_grad_(False).to(run.accelerator.device).eval()
    run.timings["load"] = time.perf_counter() - t
    return student, source


def _load_texts(run: _Run) -> None:
    cfg = run.cfg
    run.tokens = tokenize_text(run.tokenizer, load_text(cfg.data))
    if run.tokens.numel() < cfg.seq_len + 1:
        raise ShearHubError(f"training text has {run.tokens.numel()} tokens, fewer than --seq-len {cfg.seq_len}; "
                            "give more text (--data) or a smaller --seq-len")
    run.eval_text = load_text(cfg.eval_data) if cfg.eval_data else None


def _perplexity_before(run: _Run, student) -> float | None:
    """Moves the student to its device (under FSDP only the main process, and only to measure) and measures it."""
    from ..evaluation.report import data_label

    accelerator = run.accelerator
    if not run.fsdp:
        student.to(accelerator.device)
    elif run.eval_text is not None and accelerator.is_main_process:
        student.to(accelerator.device)  # the whole model on the main process's device for the measurement only
    if run.eval_text is None:
        return None
    t = time.perf_counter()
    ppl_before = run.measure(student)
    if run.fsdp:
        student.to("cpu")  # FSDP moves each rank's shard to its device when it wraps the model
    run.timings["eval_before"] = time.perf_counter() - t
    run.log(f"perplexity before recovery on {data_label(run.cfg.eval_data)}: {ppl_before:.3f}"
            if ppl_before is not None else "")
    return ppl_before


def _perplexity_after(run: _Run, peft_model, ppl_before: float | None) -> float | None:
    if run.eval_text is None:
        return None
    t = time.perf_counter()
    ppl_after = run.measure(peft_model)
    run.timings["eval_after"] = time.perf_counter() - t
    if ppl_after is not None:
        run.log(f"perplexity after recovery: {ppl_after:.3f} (before {ppl_before:.3f})")
    return ppl_after


def _resume(run: _Run, named: dict[str, torch.nn.Parameter], optimizer, resume: bool) -> _Progress:
    """Training state from the output's checkpoint when there is one and ``resume``; a fresh start otherwise."""
    cfg, ckpt_dir = run.cfg, run.ckpt_dir
    ckpt = load_checkpoint(ckpt_dir) if resume else None
    if ckpt is not None and run.fsdp:
        raise ShearHubError(f"checkpoint {ckpt_dir} cannot be resumed under FSDP; resume it without FSDP, "
                            "or add --no-resume to start over")
    if ckpt is None:
        if not resume and run.accelerator.is_main_process:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return _Progress()
    if ckpt.state.get("fingerprint") != run.fingerprint:
        raise ShearHubError(f"checkpoint {ckpt_dir} was made with other settings or another model; re-run with "
                            "the same arguments to resume it, or add --no-resume to start over")
    with torch.no_grad():
        for name, value in ckpt.adapter.items():
            named[name].copy_(value)
    optimizer.load_state_dict(ckpt.optimizer)
    set_rng_state(ckpt.rng)
    run.log(f"resuming from checkpoint at step {ckpt.step}/{cfg.steps} ({ckpt_dir})")
    return _Progress(ckpt.step, ckpt.state.get("curve", []), ckpt.state.get("train_s", 0.0), ckpt.step)


def _prepare(run: _Run, peft_model, optimizer, trainable: int):
    """The model and optimizer wrapped by accelerate (DDP, or FSDP with the optimizer built on each rank's shards)."""
    cfg, accelerator = run.cfg, run.accelerator
    peft_model.train()
    if run.fsdp:  # wrap first, then build the optimizer on each rank's shards of the LoRA parameters
        wrapped = accelerator.prepare(peft_model)
        optimizer = accelerator.prepare(adamw([p for p in wrapped.parameters() if p.requires_grad],
                                              lr=cfg.lr, weight_decay=cfg.weight_decay))
    else:
        wrapped, optimizer = accelerator.prepare(peft_model, optimizer)
    run.log(f"LoRA r={cfg.lora_rank} on {cfg.target_modules}: {trainable:,} trainable parameters; "
            f"{cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens on {run.world} process(es), "
            f"{accelerator.device}" + (f"; distilling from {cfg.teacher} (alpha {cfg.kd_alpha}, T {cfg.kd_temperature})"
                                       if run.teacher else ""))
    return wrapped, optimizer


def _train(run: _Run, wrapped, optimizer, progress: _Progress) -> None:
    """The training loop from ``progress.start``: a curve point every --log-every steps, a checkpoint every
    --save-every steps."""
    cfg = run.cfg
    trainer = LoraTrainer(wrapped, optimizer, schedule=cfg.schedule(), max_grad_norm=cfg.max_grad_norm,
                          loss_fn=lambda model, ids: _loss(run, model, ids), backward=run.accelerator.backward,
                          clip=lambda max_norm: run.accelerator.clip_grad_norm_(wrapped.parameters(), max_norm),
                          position=progress.start)
    sums = torch.zeros(3)  # loss, lm, kd since the last log line
    count = 0
    t_start = time.perf_counter() - progress.train_s
    for step in range(progress.start, cfg.steps):
        sums += _train_step(run, trainer, step)
        count += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps or (cfg.eval_every and done % cfg.eval_every == 0):
            progress.curve.append(_curve_point(run, wrapped, (sums / count).tolist(), step, t_start))
            sums.zero_()
            count = 0
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
            _checkpoint(run, wrapped, optimizer, done, progress.curve, t_start)
    run.timings["train"] = time.perf_counter() - t_start


def _loss(run: _Run, wrapped, ids: torch.Tensor):
    """(loss, lm, kd) of ``ids``: the LM loss mixed with distillation from the teacher when there is one."""
    cfg = run.cfg
    logits = wrapped(input_ids=ids, use_cache=False).logits
    teacher_logits = None
    if run.teacher is not None:
        with torch.no_grad():
            teacher_logits = run.teacher(input_ids=ids, use_cache=False).logits
    return mixed_loss(logits, ids, teacher_logits, alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)


def _train_step(run: _Run, trainer: LoraTrainer, step: int) -> torch.Tensor:
    """One optimizer step on this process's share of the step's windows; the (loss, lm, kd) mean over processes."""
    accelerator = run.accelerator
    ids = step_windows(run.tokens, run.cfg, step)[accelerator.process_index :: run.world].to(accelerator.device)
    loss, lm, kd = trainer.step(ids)
    parts = torch.stack([loss.detach(), lm.detach(), kd.detach() if kd is not None else torch.zeros(())]).cpu()
    return accelerator.reduce(parts.to(accelerator.device), reduction="mean").cpu()


def _curve_point(run: _Run, wrapped, avg: list[float], step: int, t_start: float) -> dict:
    """The loss curve's point after ``step`` (averages since the last point), with --eval-every's perplexity."""
    cfg, done = run.cfg, step + 1
    point = {"step": done, "loss": round(avg[0], 5), "lm_loss": round(avg[1], 5),
             "lr": round(cfg.schedule().lr_at(step), 8), "elapsed_s": round(time.perf_counter() - t_start, 1)}
    if run.teacher is not None:
        point["kd_loss"] = round(avg[2], 5)
    if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps and run.eval_text is not None:
        value = run.measure(run.accelerator.unwrap_model(wrapped))
        if value is not None:
            point["eval_ppl"] = round(value, 4)
        wrapped.train()
        run.accelerator.wait_for_everyone()
    run.log(f"step {done}/{cfg.steps} loss {avg[0]:.4f} (lm {avg[1]:.4f}"
            + (f", kd {avg[2]:.4f}" if run.teacher is not None else "") + f") lr {point['lr']:.2e} "
            f"{point['elapsed_s']:.0f}s" + (f" eval ppl {point['eval_ppl']:.3f}" if "eval_ppl" in point else ""))
    return point


def _checkpoint(run: _Run, wrapped, optimizer, done: int, curve: list[dict], t_start: float) -> None:
    accelerator = run.accelerator
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(wrapped)
        adapter = {n: p.detach() for n, p in unwrapped.named_parameters() if p.requires_grad}
        base_opt = getattr(optimizer, "optimizer", optimizer)
        state = {"fingerprint": run.fingerprint, "curve": curve, "train_s": time.perf_counter() - t_start,
                 "steps": run.cfg.steps}
        path = save_checkpoint(run.ckpt_dir, Checkpoint(done, adapter, base_opt.state_dict(), rng_state(), state))
        run.log(f"checkpoint saved at step {done} ({path})")
    accelerator.wait_for_everyone()


def _recovery_section(run: _Run, source, command: str | None, trainable: int, progress: _Progress,
                      ppl_before: float | None, ppl_after: float | None) -> dict:
    """The report's "recovery": settings, data, processes, the loss curve, timings and the perplexity measured."""
    from ..evaluation.report import data_label

    cfg = run.cfg
    recovery = {
        "method": "lora" + ("+distillation" if run.teacher is not None else ""),
        "command": command or command_line(),
        "input_model": str(source.spec),
        "merged": cfg.merge,
        "config": cfg.to_dict(),
        "data": data_label(cfg.data),
        "trainable_params": trainable,
        "processes": run.world,
        **({"sharding": "fsdp"} if run.fsdp else {}),
        "device": str(run.accelerator.device),
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
        "resumed_from_step": progress.resumed_from,
        "curve": progress.curve,
        "timings_s": {k: round(v, 2) for k, v in run.timings.items()},
    }
    if run.eval_text is not None:
        recovery["perplexity_eval"] = {"data": data_label(cfg.eval_data), "seq_len": cfg.eval_seq_len,
                                       "windows": cfg.eval_windows}
        recovery["perplexity_before"] = None if ppl_before is None else round(ppl_before, 4)
        recovery["perplexity_after"] = None if ppl_after is None else round(ppl_after, 4)
    return recovery


def _gather_fsdp(accelerator, wrapped, model: str, cfg: RecoveryConfig, trust_remote_code: bool):
    """The trained model in one piece on the main process (None elsewhere): every rank takes part in gathering the
    full state dict, which the main process loads into a fresh, unsharded copy of the model with the same adapters."""
    # FULL_STATE_DICT on rank 0 only (offloaded to CPU; on CPU processes ``_CpuFsdp`` gathers it without offloading)
    state = accelerator.get_state_dict(wrapped)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    base, _, _ = load_model(model, dtype=cfg.dtype, trust_remote_code=trust_remote_code)
    peft_model, _ = _attach(base, cfg, autocast_adapter_dtype=False)
    peft_model.load_state_dict(state, strict=True)
    return peft_model.to(accelerator.device)


def _save(peft_model, tokenizer, out: Path, report: PruningReport, overwrite: bool, source, cfg: RecoveryConfig) -> None:
    """The merged model or the adapter. recovery.timings_s["save"] is recorded just before the report is written, so
    the file and the returned report are equal."""
    started = time.perf_counter()

    def record_save_time(written: PruningReport) -> None:
        written.recovery["timings_s"]["save"] = round(time.perf_counter() - started, 2)

    if cfg.merge:
        _save_merged(peft_model, tokenizer, out, report, overwrite, base_dtype(source) or cfg.dtype, record_save_time)
    else:
        _save_adapter(peft_model, tokenizer, out, report, overwrite, source, record_save_time)


def _save_merged(peft_model, tokenizer, out: Path, report: PruningReport, overwrite: bool, save_dtype: str,
                 before_report) -> None:
    """The merged model in ``save_dtype``: the input folder's own dtype, so a bf16 pruned model stays bf16."""
    from ..export import save_model_folder
    from ..loading import parse_dtype
    from ..save_dtype import cast_weights

    merged = peft_model.merge_and_unload()
    cast_weights(merged, parse_dtype(save_dtype))
    # The config must not remember the input folder as its name (it is the output now).
    merged.config.name_or_path = out.name
    save_model_folder(merged, tokenizer, out, report, overwrite=overwrite, before_report=before_report)


def _save_adapter(peft_model, tokenizer, out: Path, report: PruningReport, overwrite: bool, source,
                  before_report) -> None:
    """A peft adapter folder whose base is the pruned model folder (AutoPeftModelForCausalLM loads it)."""
    base = Path(source.path)
    base_ref = str(base.resolve()) if base.exists() else source.path
    for cfg in peft_model.peft_config.values():
        cfg.base_model_name_or_path = base_ref
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for pickle in tmp.glob("*.bin"):
            pickle.unlink()
        before_report(report)
        write_report(tmp, report)
        (tmp / "README.md").write_text(
            f"# LoRA adapter for `{base_ref}`\n\nRecovered with shear-hub (not merged). Load it with\n\n"
            "```python\nfrom peft import AutoPeftModelForCausalLM\n"
            "# trust_remote_code=True: a per-layer base ships its modeling code (harmless for a uniform one)\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained(\"{out.name}\", trust_remote_code=True)\n```\n\n"
            "Settings and loss curve: `pruning_report.json` → `recovery`.\n", encoding="utf-8")
