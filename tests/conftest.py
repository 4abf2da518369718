import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def make_pruned_folders(tmp_path_factory):
    """``make(name, *, layers, intermediate, layout, pruned, text_repeats=0)``: a fresh folder holding ``dense`` (a
    tiny random model folder), ``<pruned>`` (its 30% magnitude prune of heads and MLP channels in ``layout``) and,
    when ``text_repeats``, ``text.txt`` (the tiny corpus repeated that many times). Returns the folder."""
    from model_factory import save_tiny_model_folder
    from tiny_models import _CORPUS

    from shear_hub.pruning import prune

    def make(name: str, *, layers: int, intermediate: int, layout: str, pruned: str, text_repeats: int = 0) -> Path:
        root = tmp_path_factory.mktemp(name)
        save_tiny_model_folder(root / "dense", layers=layers, intermediate=intermediate)
        prune(str(root / "dense"), root / pruned, method="magnitude", sparsity=0.3, layout=layout,
              structures="heads,mlp", progress=False, seq_len=16)
        if text_repeats:
            (root / "text.txt").write_text(" ".join(_CORPUS * text_repeats))
        return root

    return make


@pytest.fixture
def tiny_folder(tmp_path):
    from model_factory import save_tiny_model_folder

    path = tmp_path / "dense"
    save_tiny_model_folder(path, layers=4, intermediate=64)
    return path
