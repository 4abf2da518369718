"""What the export subcommands' parsers share: MODEL, --output, --overwrite and --trust-remote-code, one wording."""

from __future__ import annotations

import argparse
from collections.abc import Callable

MODEL_HELP = "model folder, Hub id, .gguf file or the demo alias 'smollm2'"


def add_export_parser(subparsers, name: str, *, output: tuple[str, str],
                      options: Callable[[argparse.ArgumentParser], None], **texts: str) -> argparse.ArgumentParser:
    """The parser of ``shear-hub NAME MODEL --output OUT``: ``output`` is (OUT's metavar, what OUT is), ``options``
    adds the command's own options, which --help lists before --overwrite and --trust-remote-code; ``texts`` are
    the ``help`` / ``description`` of ``subparsers.add_parser``."""
    metavar, what = output
    p = subparsers.add_parser(name, **texts)
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--output", "-o", required=True, metavar=metavar, help=f"{what} (written atomically)")
    options(p)
    p.add_argument("--overwrite", action="store_true", help=f"replace {metavar} if it exists")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom modeling code of MODEL")
    return p
