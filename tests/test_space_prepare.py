"""shear_hub.space.prepare_space_folder and `shear-hub push --space` (against tests/hub_server.py, offline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from tiny_models import TinyPair, build_tiny_pair  # tests/ is on sys.path (pythonpath in pyproject's pytest config)

from shear_hub.errors import ShearHubError
from shear_hub.space import prepare_space_folder

REPO = Path(__file__).resolve().parent.parent


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    return build_tiny_pair(tmp_path_factory.mktemp("models"))


def test_space_template_is_a_valid_space() -> None:
    meta = front_matter(REPO / "space" / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert (REPO / "space" / meta["app_file"]).is_file()
    reqs = (REPO / "space" / "requirements.txt").read_text()
    pins = [line.split(">")[0].split("=")[0] for line in reqs.splitlines() if line and not line.startswith("#")]
    assert {"torch", "transformers", "huggingface_hub", "matplotlib"} <= set(pins)
    assert "shear-hub" not in pins  # the app is standalone


def test_prepare_local_folder_points_the_space_at_it(tiny: TinyPair, tmp_path: Path) -> None:
    out = prepare_space_folder(tiny.pruned_dir, tmp_path / "space")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "app.py", "requirements.txt", "shear_space.json"]
    assert (out / "app.py").read_bytes() == (REPO / "space" / "app.py").read_bytes()
    config = json.loads((out / "shear_space.json").read_text())
    # base_model comes from the pruned model card
    assert config == {"model": str(tiny.pruned_dir.resolve()), "base_model": str(tiny.base_dir.resolve())}
    meta = front_matter(out / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["models"] == []  # local paths are not Hub ids, so the Hub gets no links
    assert "# Pruned vs base" in (out / "README.md").read_text()


def test_prepare_for_the_hub_lists_models(tiny: TinyPair, tmp_path: Path) -> None:
    out = prepare_space_folder(tiny.pruned_dir, tmp_path / "space", base_model="org/tiny-base",
                               hub_model_id="me/tiny-pruned", require_hub_ids=True)
    meta = front_matter(out / "README.md")
    assert meta["models"] == ["me/tiny-pruned", "org/tiny-base"]
    assert meta["title"] == "tiny-pruned vs base"
    assert json.loads((out / "shear_space.json").read_text()) == {"model": "me/tiny-pruned",
                                                                   "base_model": "org/tiny-base"}


def test_prepare_bad_inputs_are_one_line_errors(tiny: TinyPair, tmp_path: Path) -> None:
    with pytest.raises(ShearHubError, match="neither an existing folder nor a valid Hub id"):
        prepare_space_folder(str(tmp_path / "missing" / "a" / "b"), tmp_path / "o1")
    with pytest.raises(ShearHubError, match="no config.json"):
        prepare_space_folder(tmp_path, tmp_path / "o2")
    # the card's base_model is a local path: a Space on the Hub could not load it
    with pytest.raises(ShearHubError, match="not a Hub id"):
        prepare_space_folder(tiny.pruned_dir, tmp_path / "o3", hub_model_id="me/x", require_hub_ids=True)
    with pytest.raises(ShearHubError, match="local folder"):
        prepare_space_folder(tiny.pruned_dir, tmp_path / "o4", base_model="org/b", require_hub_ids=True)
    existing = prepare_space_folder(tiny.pruned_dir, tmp_path / "o5")
    with pytest.raises(ShearHubError, match="already exists"):
        prepare_space_folder(tiny.pruned_dir, existing, overwrite=False)
    assert not any(p.name.startswith(".o") for p in tmp_path.iterdir())  # no half-written folders left
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()
