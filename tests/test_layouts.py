"""Saved folders reload: uniform with stock transformers (no shear_hub import), per-layer with trust_remote_code
from the folder alone and through `import shear_hub`; generation with the KV cache works."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from model_factory import tiny_llama

from shear_hub.export import write_model_files
from shear_hub.structures import build_graph
from shear_hub.surgery import build_pruned_model


def _run_isolated(code: str, cwd) -> dict:
    """Run code in a fresh interpreter that must never import shear_hub; returns its JSON output."""
    guard = textwrap.dedent("""
        import sys, json
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'shear_hub':
                    raise ImportError('shear_hub must not be imported here')
        sys.meta_path.insert(0, _Block())
    """)
    done = subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          stdin=subprocess.DEVNULL,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                         "HOME": str(cwd)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.rsplit("RESULT:", 1)[1])


def _prune(layout, kinds, pick):
    model = tiny_llama(layers=4)
    graph = build_graph(model, kinds)
    removed = pick(graph)
    pruned, _ = build_pruned_model(graph, removed, layout)
    return pruned


IDS = [[5, 17, 3, 88, 41, 9, 60]]
LOGITS_AND_GENERATE = """
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained('{path}', {kwargs})
    ids = torch.tensor({ids})
    with torch.no_grad():
        logits = model(ids).logits
    cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    print('RESULT:' + json.dumps({{'arch': type(model).__name__, 'logits': logits[0, -1].tolist(),
                      'cached': cached.tolist(), 'uncached': uncached.tolist(),
                      'shear_loaded': 'shear_hub' in sys.modules}}))
"""


def test_uniform_loads_with_stock_transformers(tmp_path):
    pruned = _prune("uniform", ["heads", "mlp", "hidden"],
                    lambda g: [x for x in g.groups if x.index == 0 or (x.kind == "hidden" and x.index < 5)])
    write_model_files(pruned, None, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "auto_map" not in config and config["architectures"][0] in ("LlamaForCausalLM", "MistralForCausalLM")
    out = _run_isolated(LOGITS_AND_GENERATE.format(path=tmp_path / "m", kwargs="", ids=IDS), tmp_path)
    with torch.no_grad():
        expected = pruned(torch.tensor(IDS)).logits[0, -1]
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert out["cached"] == out["uncached"]
    assert not out["shear_loaded"]


@pytest.mark.parametrize("drop_first_attention", [False, True])
def test_per_layer_loads_from_folder_alone_with_remote_code(tmp_path, drop_first_attention):
    def pick(graph):
        groups = [g for g in graph.groups if g.kind == "mlp" and g.layer == 1 and g.index < 30]
        groups += [g for g in graph.groups if g.kind == "heads" and g.layer == 2 and g.index == 0]
        groups += [g for g in graph.groups if g.kind == "attn-blocks" and g.layer == (0 if drop_first_attention else 3)]
        groups += [g for g in graph.groups if g.kind == "mlp-blocks" and g.layer == 3]
        return groups

    pruned = _prune("per-layer", ["heads", "mlp", "attn-blocks", "mlp-blocks"], pick)
    folder = tmp_path / "m"
    write_model_files(pruned, None, folder)
    moved = tmp_path / "elsewhere" / "copy"  # the folder alone, nowhere near the source tree
    shutil.copytree(folder, moved)
    config = json.loads((moved / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_shear.")
    assert [d["intermediate_size"] for d in config["layer_dims"]][3] == 0
    out = _run_isolated(LOGITS_AND_GENERATE.format(path=moved, kwargs="trust_remote_code=True", ids=IDS), tmp_path)
    with torch.no_grad():
        expected = pruned(torch.tensor(IDS)).logits[0, -1]
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert out["cached"] == out["uncached"], "KV-cache generation must match full recomputation"
    assert not out["shear_loaded"]


def test_per_layer_loads_without_remote_code_through_shear_hub(tmp_path):
    """config.json names the stock family (silent stock AutoConfig / AutoTokenizer), so without remote code the
    per-layer class comes from ``shear_hub.from_pretrained``; folders written with the shear model_type (earlier
    releases) still load through the Auto classes once shear_hub is imported."""
    pruned = _prune("per-layer", ["mlp"], lambda g: g.groups[:20])
    write_model_files(pruned, None, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"
    legacy = tmp_path / "legacy"
    shutil.copytree(tmp_path / "m", legacy)
    config = json.loads((legacy / "config.json").read_text())
    (legacy / "config.json").write_text(json.dumps({**config, "model_type": "shear_llama"}))
    code = f"""
import json, torch, shear_hub
from transformers import AutoModelForCausalLM
m = shear_hub.from_pretrained({str(tmp_path / 'm')!r})
old = AutoModelForCausalLM.from_pretrained({str(legacy)!r})
ids = torch.tensor([[3, 9, 27, 4]])
with torch.no_grad():
    same = torch.equal(m(ids).logits, old(ids).logits)
print('RESULT:' + json.dumps({{"arch": type(m).__name__, "module": type(m).__module__,
                               "legacy": type(old).__name__, "same": same}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.rsplit("RESULT:", 1)[1])
    assert out["arch"] == "ShearLlamaForCausalLM" and out["module"].startswith("shear_hub.")
    assert out["legacy"] == "ShearLlamaForCausalLM" and out["same"]


def test_per_layer_refused_without_remote_code_or_shear_hub(tmp_path):
    pruned = _prune("per-layer", ["mlp"], lambda g: g.groups[:20])
    write_model_files(pruned, None, tmp_path / "m")
    code = f"""
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r})
except Exception as exc:
    print('RESULT:' + json.dumps({{"refused": True, "msg": str(exc)[:200]}}))
else:
    print('RESULT:' + json.dumps({{"refused": False}}))
"""
    assert _run_isolated(code, tmp_path)["refused"]
