"""One Hub repo-id rule (huggingface_hub's validate_repo_id, through shear_hub.hub.ids.is_hub_id) everywhere a string
is judged to name a Hub repo: model loading, push, the model card's base_model, the Space folder and the Space app."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from shear_hub.errors import ShearHubError
from shear_hub.hub.card import _hub_id
from shear_hub.hub.ids import is_hub_id
from shear_hub.hub.push import push_folder
from shear_hub.loading import resolve_source
from shear_hub.space import _is_hub_id as space_is_hub_id

REPO = Path(__file__).resolve().parents[1]
VALID = ["org/name", "Org-1/model_v2.0", "a/b", "gpt2", "_org/name", "x" * 96 + "/" + "y" * 96]
INVALID = ["bad id!", "org/bad name!", "org/name/extra", "a/b/c", "./x", "/abs/path", "~/model", "org/-name",
           "org/name.", "org/na--me", "org/na..me", "org/name.git", "x" * 97, "", "org/", "/name", "org//name"]


@pytest.mark.parametrize("ref", VALID)
def test_valid_ids(ref):
    assert is_hub_id(ref)
    assert is_hub_id(ref, namespace=True) == ("/" in ref)


@pytest.mark.parametrize("ref", INVALID)
def test_invalid_ids(ref):
    assert not is_hub_id(ref) and not is_hub_id(ref, namespace=True)


def test_not_a_string_is_not_an_id():
    assert not is_hub_id(None) and not is_hub_id(Path("org/name")) and not is_hub_id(3)


def test_every_site_applies_the_shared_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no relative path of the table exists here
    for ref in VALID + INVALID:
        valid = is_hub_id(ref)
        if Path(ref).exists():  # "": the current folder, a local path for loading
            pass
        elif valid:
            assert resolve_source(ref).hub_id == ref
        else:
            with pytest.raises(ShearHubError, match="not a valid Hub id"):
                resolve_source(ref)
        assert space_is_hub_id(ref) == valid, ref
        assert (_hub_id(ref) == ref) == is_hub_id(ref, namespace=True), ref


def test_an_existing_local_path_is_not_a_hub_id_for_card_and_space(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert is_hub_id("org/name") and _hub_id("org/name") is None and not space_is_hub_id("org/name")


@pytest.mark.parametrize("ref", [r for r in INVALID if "/" in r])
def test_push_refuses_what_the_rule_refuses_before_any_request(tmp_path, ref):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ShearHubError, match="invalid REPO_ID"):
        push_folder(tmp_path, ref, endpoint="http://127.0.0.1:9", token="hf_unusedFAKEtoken0123456789")


def test_space_app_applies_the_same_rule():
    """space/app.py runs without shear_hub; it calls validate_repo_id itself and must agree."""
    pytest.importorskip("gradio")
    spec = importlib.util.spec_from_file_location("shear_space_app_ids", REPO / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        for ref in VALID + INVALID:
            assert module.is_hub_id(ref) == is_hub_id(ref), ref
    finally:
        sys.modules.pop(spec.name, None)
