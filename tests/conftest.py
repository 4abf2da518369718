import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def tiny_folder(tmp_path):
    from model_factory import save_tiny_model_folder

    path = tmp_path / "dense"
    save_tiny_model_folder(path, layers=4, intermediate=64)
    return path
