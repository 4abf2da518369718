"""Model cards: Hub metadata, the human page, the width plot, and `shear-hub card`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from shear_hub.errors import ShearHubError
from shear_hub.hub import render_card
from shear_hub.hub.card import CARD_MARKER, is_generated_card
from shear_hub.hub.plot import layer_widths

ROOT = Path(__file__).resolve().parents[1]
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def layer(h: int, kv: int, mlp: int) -> dict:
    return {"num_attention_heads": h, "num_key_value_heads": kv, "intermediate_size": mlp}


def make_report(**over) -> dict:
    report = {
        "shear_hub_version": "0.1.0",
        "command": f"shear-hub prune {BASE} --method wanda --sparsity 0.2 --out smol-wanda",
        "base_model": BASE, "base_model_license": "apache-2.0",
        "method": "wanda", "method_config": {"alpha": 1.0},
        "layout": "uniform", "structures": ["heads", "mlp"],
        "target_sparsity": 0.2, "achieved_sparsity": 0.2004,
        "params_before": 134515008, "params_after": 107612160,
        "architecture_before": "LlamaForCausalLM", "architecture_after": "LlamaForCausalLM",
        "dims_before": {"hidden_size": 576, "layers": [layer(9, 3, 1536)] * 4},
        "dims_after": {"hidden_size": 576, "layers": [layer(6, 2, 1024)] * 4, "removed_layers": []},
        "removed_groups": {"mlp": 2048, "heads": 12, "hidden": 0, "layers": 0},
        "calibration": {"spec": "builtin:pydocs", "samples": 64, "seq_len": 512, "datasets": ["allenai/c4"]},
        "evaluation": {"perplexity": {"data": "pydocs_eval", "seq_len": 512, "windows": 48, "value": 30.1},
                       "base_perplexity": 23.83,
                       "speed": {"tokens_per_s": 141.0, "base_tokens_per_s": 120.0}},
        "recovery": None,
        "timings_s": {"load": 3.1},
    }
    report.update(over)
    return report


def model_folder(tmp_path: Path, name: str = "smol-wanda", **over) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "pruning_report.json").write_text(json.dumps(make_report(**over)))
    (folder / "model.safetensors").write_bytes(b"\0" * 4000)  # only its size matters to the card
    return folder


def test_uniform_card_metadata_page_and_plot(tmp_path):
    folder = model_folder(tmp_path)
    readme = render_card(folder, repo_id="me/smol-wanda")
    card = ModelCard.load(readme)
    meta = card.data.to_dict()
    assert meta["base_model"] == BASE
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"
    assert {"pruned", "shear-hub", "wanda"} <= set(meta["tags"]) and "custom_code" not in meta["tags"]
    assert meta["datasets"] == ["allenai/c4"]
    [result] = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("perplexity", 30.1, "pydocs_eval")

    text = card.text
    assert "134,515,008" in text and "107,612,160" in text and "20.0%" in text
    assert "| 30.10 | 23.83 | +26.3% |" in text  # quality versus base
    assert "| 141 | 120 | +17.5% |" in text  # speed versus base
    assert 'from_pretrained("me/smol-wanda")' in text and "trust_remote_code" not in text
    assert make_report()["command"] in text
    assert "2306.11695" in text and "2312.17244" not in text  # Wanda cited, not the others
    assert "![Retained width per layer](width_per_layer.png)" in text
    assert "| 0 | 6 / 9 | 2 / 3 | 1024 / 1536 |" in text
    assert is_generated_card(readme) and CARD_MARKER in readme.read_text()

    png = (folder / "width_per_layer.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    import matplotlib.image

    assert matplotlib.image.imread(folder / "width_per_layer.png").shape[2] in (3, 4)
    # Deterministic: the same report gives the same bytes (a re-push uploads nothing new).
    render_card(folder, repo_id="me/smol-wanda")
    assert (folder / "width_per_layer.png").read_bytes() == png
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_per_layer_card_loading_citations_and_removed_layers(tmp_path):
    after = [layer(6, 2, 1000), layer(9, 3, 700), layer(3, 1, 512)]
    folder = model_folder(
        tmp_path, method="llm-surgeon", layout="per-layer", structures=["heads", "mlp", "layers"],
        architecture_after="ShearLlamaForCausalLM",
        dims_after={"hidden_size": 576, "layers": after, "removed_layers": [2]},
        recovery={"kind": "lora", "steps": 50, "datasets": ["wikitext"]},
    )
    card = ModelCard.load(render_card(folder))
    assert "custom_code" in card.data.tags and "llm-surgeon" in card.data.tags
    assert card.data.datasets == ["allenai/c4", "wikitext"]
    text = card.text
    assert "trust_remote_code=True" in text and "import shear_hub" in text
    assert "2312.17244" in text and "2310.18356" in text  # LLM Surgeon + LoRAShear (LoRA recovery)
    assert "| 2 | removed | removed | removed |" in text
    assert "| 3 | 3 / 9 | 1 / 3 | 512 / 1536 |" in text  # survivors map back to their original index
    assert '"<namespace>/smol-wanda"' in text  # no repo id given: a placeholder, not a wrong id


def test_layer_widths_maps_survivors_to_original_layers():
    rows = layer_widths(make_report(dims_after={"hidden_size": 576, "removed_layers": [0, 2],
                                                "layers": [layer(3, 1, 768), layer(9, 3, 1536)]}))
    assert [r["removed"] for r in rows] == [True, False, True, False]
    assert rows[1]["heads"] == pytest.approx(3 / 9) and rows[1]["mlp"] == pytest.approx(0.5)
    assert rows[3]["heads"] == 1.0 and rows[0]["mlp"] == 0.0


def test_unmeasured_unknown_license_local_base_and_token_redaction(tmp_path):
    base_dir = tmp_path / "local-base"
    base_dir.mkdir()
    secret = "hf_abcdefghijklmnopqrstuvwxyz0123"
    folder = model_folder(
        tmp_path, method="magnitude", base_model=str(base_dir), base_model_license=None, evaluation={},
        command=f"shear-hub prune {base_dir} --method magnitude --token {secret} --out x",
    )
    readme = render_card(folder)
    meta = ModelCard.load(readme).data.to_dict()
    # A local path is not a Hub id: the Hub would reject it as base_model, so it only appears in the page.
    assert "base_model" not in meta and "license" not in meta and "model-index" not in meta
    text = readme.read_text()
    assert str(base_dir) in text and "Not measured yet" in text
    assert secret not in text and "--token ***" in text
    assert "without a dedicated paper" in text


def test_card_rendered_inside_atomic_output_uses_final_name(tmp_path):
    folder = model_folder(tmp_path, name=".smol-final.tmp-ab12cd")
    assert ModelCard.load(render_card(folder)).text.splitlines()[2] == "# smol-final"


def test_missing_or_broken_report_is_a_clear_error(tmp_path):
    with pytest.raises(ShearHubError, match="no pruning_report.json"):
        render_card(tmp_path)
    (tmp_path / "pruning_report.json").write_text("{not json")
    with pytest.raises(ShearHubError, match="not valid JSON"):
        render_card(tmp_path)
    assert not (tmp_path / "README.md").exists() and not (tmp_path / "width_per_layer.png").exists()


def test_card_command_line(tmp_path):
    folder = model_folder(tmp_path, method="taylor")
    cmd = [sys.executable, "-c", "import sys; sys.argv[0] = 'shear-hub'; from shear_hub.cli import main; "
           "sys.exit(main())"]
    res = subprocess.run([*cmd, "card", str(folder), "--repo-id", "me/taylor"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    text = (folder / "README.md").read_text()
    assert 'from_pretrained("me/taylor")' in text and "2305.11627" in text  # Taylor scores: LLM-Pruner cited
    res = subprocess.run([*cmd, "card", str(tmp_path / "nope")], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "not a folder" in res.stderr


def test_layer_widths_uses_original_layer_index():
    rows = layer_widths(make_report(dims_after={"hidden_size": 576, "removed_layers": [1],
                                                "original_layer_index": [0, 2, 3],
                                                "layers": [layer(9, 3, 1536), layer(3, 1, 768), layer(6, 2, 1024)]}))
    assert [r["removed"] for r in rows] == [False, True, False, False]
    assert rows[2]["mlp"] == pytest.approx(0.5) and rows[3]["heads"] == pytest.approx(6 / 9)
