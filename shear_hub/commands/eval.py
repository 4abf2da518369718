"""`shear-hub eval MODEL [--data SPEC] [--tasks ...] [--json]`: perplexity, size, speed, zero-shot tasks."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="measure perplexity, size, speed (and zero-shot tasks) of a model",
        description="Perplexity over consecutive windows of a text (the benchmarks' protocol), parameter count, weight "
        "file size, prefill/decode tokens per second, and lm-evaluation-harness tasks when installed. For a "
        "shear-hub folder the numbers are written into pruning_report.json and the model card.")
    p.add_argument("model", metavar="MODEL", help="model folder, Hub id, .gguf file or 'smollm2'")
    p.add_argument("--data", default=None, help="text for perplexity: .txt/.jsonl/.parquet or Hub dataset "
                   "name[:config[:split]] (default: the built-in calibration text, which is not held out)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--windows", type=int, default=48, help="number of consecutive windows (default 48)")
    p.add_argument("--domains", action="store_true", help="also the cross-domain protocol: perplexity with the same "
                   "windows on each shipped held-out text (fiction, drama, encyclopedia, manual) and their geometric mean")
    p.add_argument("--tasks", default=None, help="comma list of lm-eval tasks, e.g. hellaswag,arc_easy")
    p.add_argument("--task-limit", type=int, default=None, help="examples per task (lm-eval --limit)")
    p.add_argument("--base", default=None, metavar="MODEL", help="also measure this model (e.g. the dense one) for comparison")
    p.add_argument("--no-speed", action="store_true", help="skip the generation speed measurement")
    p.add_argument("--prompt-len", type=int, default=128, help="speed: prompt tokens (default 128)")
    p.add_argument("--new-tokens", type=int, default=32, help="speed: generated tokens (default 32)")
    p.add_argument("--speed-batch-size", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4, help="perplexity windows per forward pass")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--no-write", action="store_true", help="do not write the numbers into the folder's report/card")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--max-memory", default=None, metavar="DEVICE=SIZE[,...]",
                   help="cap on the weights per device, accelerate's max_memory (e.g. cpu=2GiB or "
                   "cuda:0=70GiB,cpu=20GiB); what does not fit is offloaded to disk and streamed one module at a "
                   "time")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import ShearHubError
    from ..evaluation.report import evaluate, record_evaluation

    if args.threads is not None:
        if args.threads < 1:
            raise ShearHubError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if min(args.prompt_len, args.new_tokens, args.speed_batch_size) < 1:
        raise ShearHubError("--prompt-len, --new-tokens and --speed-batch-size must be >= 1")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    capped = {}
    if args.max_memory is not None:  # a malformed cap fails before anything loads
        from ..memory_plan import parse_max_memory

        capped = {"max_memory": parse_max_memory(args.max_memory)}
    notes: list[str] = []
    kwargs = dict(data=args.data, seq_len=args.seq_len, windows=args.windows, tasks=tasks, task_limit=args.task_limit,
                  speed=not args.no_speed, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                  speed_settings={"prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                                  "batch_size": args.speed_batch_size},
                  trust_remote_code=args.trust_remote_code, domains=args.domains, **capped)
    result = evaluate(args.model, notes=notes, **kwargs)
    base = evaluate(args.base, notes=[], **kwargs) if args.base else None
    if base:
        result["base"] = base
    written = False if args.no_write else record_evaluation(args.model, result, base)
    result["written_to_report"] = written
    for note in dict.fromkeys(notes):
        print(f"shear-hub eval: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    rows = [("model", result["model"]), ("parameters", f"{result['params']:,}")]
    if result.get("file_size_bytes"):
        rows.append(("weights size", f"{result['file_size_bytes'] / 2**20:.1f} MiB"))
    ppl = result["perplexity"]
    rows.append((f"perplexity ({ppl['data']}, {ppl['windows']} x {ppl['seq_len']})", f"{ppl['value']:.3f}"
                 + (f"  (base {base['perplexity']['value']:.3f})" if base else "")))
    if "domains" in result:
        dom, base_dom = result["domains"], (base or {}).get("domains")
        for name, entry in dom["texts"].items():
            rows.append((f"perplexity ({name}: {entry['data']}, {entry['windows']} x {dom['seq_len']})",
                         f"{entry['value']:.3f}" + (f"  (base {base_dom['texts'][name]['value']:.3f})" if base_dom else "")))
        rows.append((f"perplexity, geometric mean of {len(dom['texts'])} domains", f"{dom['geometric_mean']:.3f}"
                     + (f"  (base {base_dom['geometric_mean']:.3f})" if base_dom else "")))
    if "speed" in result:
        s = result["speed"]
        rows.append((f"prefill tok/s ({s['prompt_len']} tokens, batch {s['batch_size']}, {s['device']})",
                     f"{s['prefill_tok_s']:.1f}" + (f"  (base {base['speed']['prefill_tok_s']:.1f})" if base else "")))
        rows.append((f"decode tok/s ({s['new_tokens']} tokens)",
                     f"{s['decode_tok_s']:.1f}" + (f"  (base {base['speed']['decode_tok_s']:.1f})" if base else "")))
    for task, metrics in (result.get("zero_shot") or {}).get("tasks", {}).items():
        rows.append((f"{task}", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if written:
        print(f"numbers written to {args.model}/pruning_report.json and its model card")
    return 0
