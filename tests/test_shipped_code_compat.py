"""Per-layer folders outlive the transformers they were made with: folders written by the current code load through
their own shipped modeling code (``trust_remote_code``, shear_hub never imported), match the dense model's logits with
the same groups zeroed, and decode with a KV cache exactly as without one, under every interpreter in the check.

The check always runs under this interpreter (the newest packages in CI). ``SHEAR_HUB_COMPAT_PYTHONS`` (paths joined
by ``os.pathsep``) adds interpreters with other transformers releases: ``.ci/run`` builds one pinned to the lowest
versions pyproject allows (``.ci/constraints-lowest.txt``) and sets it, and ``SHEAR_HUB_COMPAT_REQUIRE`` makes the
test fail when one of those interpreters is missing or does not run the declared lower bound.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from model_factory import tiny_llama
from test_architectures import tiny_model

from shear_hub.export import write_model_files
from shear_hub.modeling.modeling_shear import TESTED_TRANSFORMERS
from shear_hub.structures import build_graph, zero_groups
from shear_hub.structures.graph import ATTN_BLOCKS, HEADS, MLP, MLP_BLOCKS
from shear_hub.surgery import build_pruned_model

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "opt"]
IDS = torch.randint(0, 96, (2, 14), generator=torch.Generator().manual_seed(3))

CHECK = """
import inspect, json, sys, torch, transformers
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'shear_hub':
            raise ImportError('shear_hub must not be imported here')
sys.meta_path.insert(0, _Block())
from transformers import AutoModelForCausalLM
transformers.utils.logging.set_verbosity_error()
cases = json.loads(sys.argv[1])
ids = torch.tensor(cases.pop('ids'))
out = {'transformers': transformers.__version__}
for name, folder in cases.items():
    # eager like the reference: transformers 5.0 picks sdpa for Gemma 2, which drops its logit soft-capping
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation='eager').eval()
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        step = model(ids[:, :5], use_cache=True)
        steps = [step.logits]
        cache = getattr(step, 'cache', None) or step.past_key_values
        kw = 'cache' if 'cache' in inspect.signature(model.forward).parameters else 'past_key_values'
        for t in range(5, ids.shape[1]):
            step = model(ids[:, t:t + 1], use_cache=True, **{kw: cache})
            cache = getattr(step, 'cache', None) or step.past_key_values
            steps.append(step.logits)
        cached = model.generate(ids[:1, :4], max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(ids[:1, :4], max_new_tokens=8, do_sample=False, use_cache=False)
    out[name] = {'arch': type(model).__name__, 'logits': full.tolist(),
                 'stepwise_max_diff': float((torch.cat(steps, 1) - full).abs().max()),
                 'generate_equal': cached.tolist() == uncached.tolist()}
out['shear_loaded'] = 'shear_hub' in sys.modules
print('RESULT:' + json.dumps(out))
"""


def _removed(graph) -> list:
    """Ragged heads and MLP channels, layer 0's attention block (slot 0 of the cache) and layer 3's MLP block."""
    removed = [g for g in graph.of_kind(HEADS) if g.layer in (1, 2) and g.index == 0]
    removed += [g for g in graph.of_kind(MLP) if g.index % (2 + g.layer) == 0]
    removed += [g for g in graph.of_kind(ATTN_BLOCKS) if g.layer == 0]
    removed += [g for g in graph.of_kind(MLP_BLOCKS) if g.layer == 3]
    return removed


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("compat")
    paths, expected = {}, {}
    for family in FAMILIES:
        dense = tiny_llama(layers=4) if family == "llama" else tiny_model(family)
        graph = build_graph(dense, [HEADS, MLP, ATTN_BLOCKS, MLP_BLOCKS])
        removed = _removed(graph)
        pruned, _ = build_pruned_model(graph, removed, "per-layer")
        write_model_files(pruned, None, root / family)
        reference = copy.deepcopy(dense)
        zero_groups(reference, removed)
        with torch.no_grad():
            expected[family] = reference(IDS, use_cache=False).logits
        paths[family] = str(root / family)
    return paths, expected


def _interpreters() -> list[str]:
    extra = [p for p in os.environ.get("SHEAR_HUB_COMPAT_PYTHONS", "").split(os.pathsep) if p]
    return [sys.executable, *extra]


def _lower_bound() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'"transformers>=([0-9.]+)', text).group(1)


@pytest.mark.parametrize("interpreter", _interpreters(), ids=lambda p: "this" if p == sys.executable else Path(p).parts[-3])
def test_per_layer_folders_load_and_decode_through_shipped_code(folders, interpreter, tmp_path):
    paths, expected = folders
    done = subprocess.run([interpreter, "-c", textwrap.dedent(CHECK), json.dumps({**paths, "ids": IDS.tolist()})],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.rsplit("RESULT:", 1)[1])
    assert not result["shear_loaded"]
    for family in FAMILIES:
        got = result[family]
        assert got["arch"].startswith("Shear"), family
        torch.testing.assert_close(torch.tensor(got["logits"]), expected[family], atol=2e-4, rtol=1e-4,
                                   msg=lambda m: f"{family} under transformers {result['transformers']}: {m}")
        assert got["stepwise_max_diff"] < 1e-4, (family, result["transformers"], got["stepwise_max_diff"])
        assert got["generate_equal"], (family, result["transformers"])
    if interpreter != sys.executable and os.environ.get("SHEAR_HUB_COMPAT_REQUIRE"):
        assert result["transformers"] == _lower_bound() or result["transformers"] == f"{_lower_bound()}.0"


def test_tested_range_starts_at_pyproject_lower_bound():
    """The range the shipped code states starts at pyproject's lower bound (the one the check above runs in CI). A
    transformers newer than its end only warns: the check above is what proves a new release works, after which
    TESTED_TRANSFORMERS is raised."""
    import warnings

    import transformers
    from packaging.version import Version

    low, high = TESTED_TRANSFORMERS
    assert Version(low) == Version(_lower_bound())
    assert Version(low) <= Version(high)
    if Version(Version(transformers.__version__).base_version) > Version(high):
        warnings.warn(f"transformers {transformers.__version__} is newer than the tested range {low}..{high}; if "
                      "this file passes, raise TESTED_TRANSFORMERS in shear_hub/modeling/modeling_shear.py")


def test_compat_interpreters_present_when_required():
    """CI asks for the lowest-version interpreter; a missing one must fail, not skip the check silently."""
    if not os.environ.get("SHEAR_HUB_COMPAT_REQUIRE"):
        pytest.skip("SHEAR_HUB_COMPAT_REQUIRE not set (only .ci/run sets it)")
    extra = [p for p in os.environ.get("SHEAR_HUB_COMPAT_PYTHONS", "").split(os.pathsep) if p]
    assert extra and all(Path(p).is_file() for p in extra), extra


def test_outside_the_tested_range_warns_in_one_line(caplog):
    from transformers.utils import logging as hf_logging

    from shear_hub.modeling import modeling_shear

    hf_logging.enable_propagation()  # transformers' loggers do not reach caplog otherwise
    try:
        assert not modeling_shear.warn_if_untested_transformers()  # this run's transformers is in the range
        assert not modeling_shear.warn_if_untested_transformers(TESTED_TRANSFORMERS[0])
        assert modeling_shear.warn_if_untested_transformers("9.1.0")
    finally:
        hf_logging.disable_propagation()
    lines = [r.getMessage() for r in caplog.records if "tested with transformers" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "9.1.0" in lines[0] and TESTED_TRANSFORMERS[0] in lines[0]


def test_report_and_card_state_the_tested_range(folders, tmp_path):
    """A per-layer prune records the range in its report and its card says it; a uniform one records no range."""
    from shear_hub.pruning import prune
    from shear_hub.report import read_report

    from model_factory import save_tiny_model_folder

    dense = tmp_path / "dense"
    save_tiny_model_folder(dense, layers=2, intermediate=32)
    for layout in ("per-layer", "uniform"):
        out = tmp_path / layout
        prune(str(dense), out, method="magnitude", sparsity=0.2, layout=layout, structures="mlp", progress=False)
        record = read_report(out).transformers
        card = (out / "README.md").read_text()
        if layout == "per-layer":
            low, high = TESTED_TRANSFORMERS
            assert record["shipped_code_tested"] == [low, high]
            assert f"tested with transformers {low} to {high}" in card
        else:
            assert "shipped_code_tested" not in record and "tested with transformers" not in card
