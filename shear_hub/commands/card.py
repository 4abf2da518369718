"""`shear-hub card MODEL`: regenerate README.md (model card) and width_per_layer.png from pruning_report.json."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "card",
        help="regenerate the model card (README.md + width_per_layer.png) from pruning_report.json",
        description="Write README.md (Hub metadata and a human page) and width_per_layer.png into a pruned model "
        "folder from its pruning_report.json. Re-run after `shear-hub eval` to add measured numbers.",
    )
    p.add_argument("model", metavar="MODEL", help="folder of a pruned model (holds pruning_report.json)")
    p.add_argument("--repo-id", default=None, help="Hub repo id shown in the loading snippet (default: folder name)")


def run(args: argparse.Namespace) -> int:
    from ..hub.card import render_card

    path = render_card(args.model, repo_id=args.repo_id)
    print(f"wrote {path} and {path.with_name('width_per_layer.png')}")
    return 0
