"""`shear-hub` command line: a thin layer over the Python API. Each subcommand is a module in commands/."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import ShearHubError

# Subcommand modules in shear_hub/commands/, each with add_parser(subparsers) and run(args) -> int.
COMMANDS = ["prune", "recover", "eval", "card", "push", "export_onnx", "export_gguf"]


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + error; keep the error to one line and exit 2 like every other input error."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"shear-hub: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shear-hub", description="Structured pruning of causal LMs into smaller Hub models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"shear-hub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue  # command not built in this checkout
            raise
        module.add_parser(sub)
        sub.choices[name.replace("_", "-")].set_defaults(_run=module.run)
    return parser


def _quiet_libraries() -> None:
    """Library warnings, load reports and retry notices would turn a one-line error into a page; --debug keeps them."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported later
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    if not sys.warnoptions:  # the user's own -W / PYTHONWARNINGS wins
        warnings.simplefilter("ignore")
    for name in ("transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)  # also when already imported (their handlers stay)


def _low_memory_options() -> str:
    """The end of the out-of-memory hint: --dtype, and each registered method's ``low_memory_option``."""
    try:
        from .methods import METHODS

        options = [f"{cls.low_memory_option} ({name})" for name, cls in METHODS.items() if cls.low_memory_option]
    except Exception:  # no method hints rather than a second error while reporting the first
        options = []
    return ", --dtype bfloat16, or " + " or ".join(options) if options else " or --dtype bfloat16"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("SHEAR_HUB_DEBUG") == "1"
    if not debug:
        _quiet_libraries()
    try:
        args = build_parser().parse_args(argv)
        return int(args._run(args) or 0)
    except ShearHubError as exc:
        if debug:
            raise
        print(f"shear-hub: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shear-hub: interrupted; outputs were not written (re-run to finish)", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            raise
        print(f"shear-hub: error: out of memory; use a smaller --calib-samples/--seq-len{_low_memory_options()}",
              file=sys.stderr)
        return 3
    except Exception as exc:  # last resort: still one line, traceback with --debug
        if debug:
            raise
        text = " ".join(str(exc).split())[:400]
        print(f"shear-hub: error: unexpected {type(exc).__name__}: {text} (re-run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
