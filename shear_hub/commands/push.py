"""`shear-hub push MODEL REPO_ID`: upload a model folder to the Hugging Face Hub in one verified commit."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload a model folder to the Hugging Face Hub (one commit, verified)",
        description="Create the repo if needed, upload MODEL in one commit (large files through the Hub's "
        "large-file protocol), check every remote file's hash against the local folder and print the URL. "
        "Re-running after an interruption uploads only what is missing. The token comes from --token, HF_TOKEN "
        "or `hf auth login` and is never printed.",
    )
    p.add_argument("model", metavar="MODEL", help="local folder to upload (a pruned model, a Space, a dataset)")
    p.add_argument("repo_id", metavar="REPO_ID", help="namespace/name on the Hub (a bare name uses your account)")
    p.add_argument("--repo-type", choices=("model", "dataset", "space"), default="model")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--revision", metavar="BRANCH", default=None, help="branch to push to (created if missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of pushing to the branch")
    p.add_argument("--commit-message", default=None)
    p.add_argument("--endpoint", metavar="URL", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--token", metavar="T", default=None, help="write token (default: HF_TOKEN or the saved login)")
    p.add_argument("--no-card", action="store_true",
                   help="do not (re)generate README.md from pruning_report.json before pushing")
    p.add_argument("--space", metavar="SPACE_ID", default=None,
                   help="after the model, also push a Gradio Space (space/ template) that runs it next to its base "
                   "model: prompt, both generations streamed, tokens/s, size, card numbers")
    p.add_argument("--space-base-model", metavar="HUB_ID", default=None,
                   help="base model the Space compares with (default: base_model in the model card)")


def run(args: argparse.Namespace) -> int:
    from ..hub.card import is_generated_card, render_card
    from ..hub.push import push_folder
    from ..report import REPORT_NAME

    folder = Path(args.model).expanduser()
    if args.space and (args.revision or args.create_pr or args.repo_type != "model"):
        from ..errors import ShearHubError

        raise ShearHubError("--space needs a model pushed to main; drop --revision/--create-pr/--repo-type or "
                            "push the Space later with `shear-hub push SPACE_FOLDER SPACE_ID --repo-type space`")
    if args.space and folder.is_dir():
        from ..space import hub_base_model_for

        args.space_base_model = hub_base_model_for(folder, args.space_base_model)  # fail before any upload
    readme = folder / "README.md"
    # Keep a generated card current (repo id in the loading snippet, latest eval numbers); never touch a
    # hand-written README.
    if (not args.no_card and args.repo_type == "model" and (folder / REPORT_NAME).is_file()
            and (not readme.exists() or is_generated_card(readme))):
        render_card(folder, repo_id=args.repo_id if "/" in args.repo_id else None)
    url = push_folder(
        folder, args.repo_id, repo_type=args.repo_type, private=args.private, revision=args.revision,
        create_pr=args.create_pr, commit_message=args.commit_message, endpoint=args.endpoint, token=args.token,
    )
    print(url)
    if args.space:
        print(_push_space(args, model_repo_id="/".join(url.rstrip("/").split("/")[-2:])))
    return 0


def _push_space(args: argparse.Namespace, model_repo_id: str) -> str:
    """Write the Space folder configured for the just-pushed model into a temp dir and push it."""
    import tempfile

    from ..hub.push import push_folder
    from ..space import prepare_space_folder

    with tempfile.TemporaryDirectory(prefix="shear-space-") as tmp:
        folder = prepare_space_folder(args.model, Path(tmp) / "space", base_model=args.space_base_model,
                                      hub_model_id=model_repo_id, require_hub_ids=True)
        return push_folder(folder, args.space, repo_type="space", private=args.private,
                           commit_message=f"Space for {model_repo_id} (shear-hub)",
                           endpoint=args.endpoint, token=args.token)
