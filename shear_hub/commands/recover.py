"""`shear-hub recover MODEL --output DIR ...`: LoRA fine-tuning (optionally distilled) of a pruned model."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from ..recovery import RecoveryConfig

    d = RecoveryConfig()
    p = subparsers.add_parser(
        "recover", help="heal a pruned model with LoRA fine-tuning / distillation",
        description="Fine-tune LoRA adapters on every linear projection of MODEL (optionally distilling from the dense "
        "--teacher), merge them (default) and write a model folder of the same layout. Checkpoints every "
        "--save-every steps beside --output; re-running the same command resumes. Several processes: "
        "`accelerate launch --num_processes N -m shear_hub recover ...`; weights sharded over the GPUs (FSDP): "
        "`accelerate launch --config_file <shear_hub/resources/accelerate/fsdp.yaml> ... --save-every 0` (README).")
    p.add_argument("model", metavar="MODEL", help="pruned shear-hub folder (or any local folder / Hub id / 'smollm2')")
    p.add_argument("--output", "-o", required=True, help="folder to write (must not exist unless --overwrite)")
    p.add_argument("--data", default=None, help="training text: .txt/.jsonl/.parquet or Hub dataset name[:config[:split]] "
                   "(default: the built-in calibration text)")
    p.add_argument("--teacher", default=None, metavar="MODEL", help="dense model to distil from (KL on logits)")
    p.add_argument("--kd-alpha", type=float, default=d.kd_alpha, help=f"loss = a*LM + (1-a)*KL (default {d.kd_alpha})")
    p.add_argument("--kd-temperature", type=float, default=d.kd_temperature, help="distillation temperature")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"windows per step, all processes (default {d.batch_size})")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per window (default {d.seq_len})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate, warm-up then cosine (default {d.lr})")
    p.add_argument("--lora-rank", type=int, default=d.lora_rank, help=f"LoRA rank (default {d.lora_rank})")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                   help="merge the adapters into the weights (default) or save a peft adapter (--no-merge)")
    p.add_argument("--eval-data", default=None, help="held-out text: measure perplexity before and after")
    p.add_argument("--eval-every", type=int, default=0, help="also measure every N steps (with --eval-data)")
    p.add_argument("--eval-windows", type=int, default=d.eval_windows)
    p.add_argument("--eval-seq-len", type=int, default=d.eval_seq_len)
    p.add_argument("--save-every", type=int, default=d.save_every, help=f"checkpoint interval (default {d.save_every}; 0: never)")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--no-resume", action="store_true", help="ignore (and delete) an existing checkpoint")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="cpu or cuda (default: what accelerate picks)")
    p.add_argument("--dtype", default=d.dtype, help="float32 (default), bfloat16 or float16")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import ShearHubError
    from ..loading import parse_dtype
    from ..recovery import RecoveryConfig, recover

    parse_dtype(args.dtype)
    if args.threads is not None:
        if args.threads < 1:
            raise ShearHubError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.log_every < 1:
        raise ShearHubError("--log-every must be >= 1")
    cfg = RecoveryConfig(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, warmup_steps=args.warmup_steps, data=args.data,
        teacher=args.teacher, kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature, seed=args.seed,
        dtype=args.dtype, save_every=args.save_every, log_every=args.log_every, eval_data=args.eval_data,
        eval_every=args.eval_every, eval_windows=args.eval_windows, eval_seq_len=args.eval_seq_len, merge=args.merge,
    )
    result = recover(args.model, args.output, cfg, overwrite=args.overwrite, device=args.device,
                     trust_remote_code=args.trust_remote_code, resume=not args.no_resume)
    rec = result.report.recovery
    last = rec["curve"][-1] if rec["curve"] else {}
    line = f"recovered {args.model} -> {result.output} ({cfg.steps} steps, final loss {last.get('loss', float('nan')):.4f}"
    if rec.get("perplexity_after") is not None:
        line += f", perplexity {rec['perplexity_before']:.2f} -> {rec['perplexity_after']:.2f}"
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(line + ")")
    return 0
