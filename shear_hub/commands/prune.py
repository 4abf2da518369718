"""`shear-hub prune MODEL --output DIR ...`"""

from __future__ import annotations

import argparse
import json
import os
import textwrap


class _HelpFormatter(argparse.HelpFormatter):
    """The description is wrapped as usual; the epilog (the methods' options, already laid out) keeps its lines."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _json_or_repr(value) -> str:
    try:
        return json.dumps(value)  # how --option KEY=VALUE reads a value
    except (TypeError, ValueError):
        return repr(value)


def methods_help(width: int = 100) -> str:
    """Each registered method with its --option settings (default and help, from its config dataclass)."""
    from ..methods import METHODS, option_help

    lines = ["methods and their settings (--option KEY=VALUE):"]
    for name, cls in METHODS.items():
        needs = [w for w, on in (("calibration", cls.needs_calibration), ("gradients", cls.needs_gradients)) if on]
        lines.append(f"  {name} -- {cls.display_name}; " + (f"needs {' and '.join(needs)}" if needs else "data-free")
                     + ("; runs under --max-memory" if cls.streams_weights() else ""))
        rows = option_help(cls)
        if not rows:
            lines.append("      (no settings)")
        for key, default, text in rows:
            lines += textwrap.wrap(f"{key}={_json_or_repr(default)}: {text}", width, initial_indent="      ",
                                   subsequent_indent="          ")
    return "\n".join(lines) + "\n"


def add_parser(subparsers) -> None:
    from ..methods import METHODS
    from ..pruning import DEFAULT_STRUCTURES
    from ..structures import KINDS

    p = subparsers.add_parser("prune", help="prune a model into a smaller one",
                              description="Remove structures (heads, MLP channels, residual channels, layers) so "
                              "that --sparsity of the parameters go; write a smaller model folder.",
                              epilog=methods_help(), formatter_class=_HelpFormatter)
    p.add_argument("model", metavar="MODEL", help="Hub id, local folder, .gguf file, or 'smollm2' (built-in demo)")
    p.add_argument("--output", "-o", required=True, help="folder to write (must not exist unless --overwrite)")
    p.add_argument("--method", default="surgeon", choices=sorted(METHODS),
                   help="pruning criterion (default: surgeon, the LLM Surgeon)")
    p.add_argument("--sparsity", type=float, default=0.2, help="fraction of all parameters to remove (default 0.2)")
    p.add_argument("--layout", default="uniform", choices=["uniform", "per-layer"],
                   help="uniform (default): stock config, loads anywhere; per-layer: each layer its own widths "
                   "(needs its shipped modeling code)")
    p.add_argument("--structures", default=None,
                   help=f"comma list of {','.join(KINDS)} (default: {','.join(DEFAULT_STRUCTURES)}, less what the "
                   "layout cannot hold for the architecture, e.g. mlp for OPT in the uniform layout)")
    p.add_argument("--calib", default=None, help="calibration text: .txt/.jsonl/.parquet, Hub dataset name[:config[:split]], builtin:pydocs, or self "
                   "(sampled from the model itself; self:START-END sets the temperature schedule) (default: built-in)")
    p.add_argument("--calib-samples", type=int, default=None,
                   help="calibration windows (default: the method's; surgeon 128, the others 32)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per calibration window (default: the method's; surgeon 512, the others 256)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", help="compute dtype: float32 (default), bfloat16 or float16")
    # Validated by the API (one "what; how to fix" line), not argparse choices, so aliases work as for --dtype.
    p.add_argument("--save-dtype", default="auto", metavar="{auto,float32,bfloat16,float16}",
                   help="dtype of the saved weights (default auto: the base checkpoint's, bf16 in -> bf16 out; "
                   "bfloat16 for .gguf inputs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method setting (repeatable), e.g. --option shots=4; the settings of each method are "
                   "listed below")
    p.add_argument("--max-memory", default=None, metavar="DEVICE=SIZE[,...]",
                   help="cap on the weights per device, accelerate's max_memory (e.g. cpu=2GiB or "
                   "cuda:0=70GiB,cpu=20GiB); what does not fit is offloaded to disk and streamed one module at a "
                   "time (methods that score weight by weight: see 'runs under --max-memory' below)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the perplexity before / after on a held-out slice of the calibration text (seconds)")


def parse_options(pairs: list[str]) -> dict:
    from ..errors import ShearHubError

    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ShearHubError(f"--option {pair!r} must look like KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except ValueError:
            options[key.replace("-", "_")] = value
    return options


def run(args: argparse.Namespace) -> int:
    from ..pruning import prune
    from ..summary import prune_summary

    result = prune(
        args.model, args.output, method=args.method, sparsity=args.sparsity, layout=args.layout,
        structures=args.structures, calib=args.calib, calib_samples=args.calib_samples, seq_len=args.seq_len,
        device=args.device, dtype=args.dtype, save_dtype=args.save_dtype, seed=args.seed, overwrite=args.overwrite,
        method_options=parse_options(args.option), trust_remote_code=args.trust_remote_code,
        batch_size=args.batch_size, progress=not args.no_progress, evaluate=not args.no_eval,
        library_bars=getattr(args, "debug", False) or os.environ.get("SHEAR_HUB_DEBUG") == "1",
        **({"max_memory": args.max_memory} if args.max_memory is not None else {}),
    )
    print(f"pruned {result.params_before:,} -> {result.params_after:,} parameters "
          f"({result.achieved_sparsity:.2%} removed, target {args.sparsity:.0%}) -> {result.output}")
    for line in prune_summary(result.report.to_dict(), args.output, base=args.model):
        print(line)
    if result.report.warning:
        print(f"warning: {result.report.warning}")
    return 0
