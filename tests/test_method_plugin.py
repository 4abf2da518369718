"""The plug-in contract of pruning methods: a method is one package that declares itself (name, display name,
citation, data it needs, memory estimate, settings with help) and registers with ``@register_method``; core reads
the declaration and never the method's name. The example below lives in a package of its own in tmp_path, and a
real prune runs it end to end (score, allocation, surgery, save, card) while nothing in shear_hub/ changes."""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import shear_hub
from shear_hub.errors import ShearHubError
from shear_hub.methods import METHODS, Citation, PruningMethod, ScoringMethod, register_method

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(shear_hub.__file__).resolve().parent
PLUGIN = "norm_plugin_example"

PLUGIN_INIT = "from .method import WeightNormConfig, WeightNormMethod\n"
PLUGIN_METHOD = textwrap.dedent('''
    """Example plug-in: a group's cost is the sum of |W|^power over its weights (no data)."""

    from dataclasses import dataclass, field

    from shear_hub.methods import Citation, ScoringMethod, group_scores, prunable_weights, register_method


    @dataclass
    class WeightNormConfig:
        power: float = field(default=2.0, metadata={"help": "exponent p of the per-group sum of |W|^p"})


    @register_method
    class WeightNormMethod(ScoringMethod):
        name = "weight-norm"
        display_name = "Weight-norm example plug-in"
        config_class = WeightNormConfig
        citation = Citation("An example plug-in (Doe, 2099)",
                            "@misc{doe2099weightnorm,\\n  title = {Weight Norms},\\n  year = {2099}\\n}")
        needs_calibration = False
        calls = {"memory": 0, "score": 0}

        @classmethod
        def memory_estimate(cls, mem):
            cls.calls["memory"] += 1
            return {"norm buffers": mem.weights_bytes}

        @classmethod
        def low_memory_hint(cls):
            return "--option power=1 (example hint)"

        def score(self, ctx):
            self.calls["score"] += 1
            importance = {n: p.detach().abs().float() ** self.config.power for n, p in prunable_weights(ctx).items()}
            costs = group_scores(ctx.graph, importance)
            ctx.report["groups_scored"] = len(costs)
            return costs
''')


def _package_fingerprint() -> dict[str, str]:
    """Every file of the shear_hub package (bytecode caches aside) and its content hash."""
    return {str(p.relative_to(PACKAGE_DIR)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(PACKAGE_DIR.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The example method's package, written to tmp_path, on sys.path and imported (which registers it)."""
    root = tmp_path / "plugins"
    (root / PLUGIN).mkdir(parents=True)
    (root / PLUGIN / "__init__.py").write_text(PLUGIN_INIT)
    (root / PLUGIN / "method.py").write_text(PLUGIN_METHOD)
    monkeypatch.syspath_prepend(str(root))
    before = dict(METHODS)
    try:
        yield importlib.import_module(PLUGIN).WeightNormMethod
    finally:
        METHODS.clear()
        METHODS.update(before)
        for name in [m for m in sys.modules if m == PLUGIN or m.startswith(PLUGIN + ".")]:
            del sys.modules[name]


def test_builtin_methods_are_discovered_from_their_folders():
    init = (PACKAGE_DIR / "methods" / "__init__.py").read_text()
    for name, cls in METHODS.items():
        folder = Path(sys.modules[cls.__module__].__file__).resolve().parent
        assert folder.parent == PACKAGE_DIR / "methods"  # one folder per method ...
        assert f".{folder.name}" not in init  # ... that the registry imports by discovery, not by name
        assert cls.display_name and isinstance(cls.config_class, type)
    assert list(METHODS)[:5] == ["magnitude", "wanda", "taylor", "surgeon", "lorashear"]  # listing order kept


def test_plugin_prunes_saves_and_cards_without_changing_shear_hub(plugin, tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from shear_hub.commands.prune import methods_help
    from shear_hub.pruning import prune

    fingerprint = _package_fingerprint()
    assert PACKAGE_DIR not in Path(sys.modules[plugin.__module__].__file__).resolve().parents
    assert METHODS["weight-norm"] is plugin

    # its settings reach `shear-hub prune --help`
    listing = methods_help()
    assert "weight-norm -- Weight-norm example plug-in; data-free" in listing
    assert "power=2.0: exponent p of the per-group sum of |W|^p" in listing

    out = tmp_path / "pruned"
    result = prune(str(tiny_folder), out, method="weight-norm", sparsity=0.25, structures="heads,mlp",
                   method_options={"power": 1.0}, progress=False)
    # declared memory estimate used by the pre-flight check, then scored and allocated by the shared allocator
    assert plugin.calls == {"memory": 1, "score": 1}
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["method"] == "weight-norm" and report["method_config"] == {"power": 1.0}
    assert report["method_report"]["groups_scored"] > 0
    assert report["calibration"] is None  # needs_calibration = False: no calibration windows were cut
    assert sum(report["removed_groups"].values()) > 0
    assert 0.2 < result.achieved_sparsity < 0.3 and result.params_after < result.params_before

    # saved: a smaller model that loads with stock transformers
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in pruned.parameters()) == result.params_after
    with torch.no_grad():
        assert torch.isfinite(pruned(input_ids=torch.tensor([[1, 2, 3, 4]])).logits).all()

    # carded: its display name and citation, from its declaration
    card = (out / "README.md").read_text()
    assert "Weight-norm example plug-in" in card
    assert "An example plug-in (Doe, 2099)" in card and "@misc{doe2099weightnorm," in card
    assert "without a dedicated paper" not in card

    # `shear-hub card` in a process that never imported the plug-in: the name and citation prune recorded
    (out / "README.md").unlink()
    res = subprocess.run([sys.executable, "-m", "shear_hub", "card", str(out)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    card = (out / "README.md").read_text()
    assert "Weight-norm example plug-in" in card and "@misc{doe2099weightnorm," in card

    assert _package_fingerprint() == fingerprint  # no file in shear_hub/ changed for the plug-in


def test_plugin_memory_estimate_and_hint_reach_the_resource_check(plugin, tiny_folder, tmp_path, monkeypatch):
    from shear_hub.pruning import prune

    monkeypatch.setenv("SHEAR_HUB_MEMORY_LIMIT_BYTES", "1000")
    with pytest.raises(ShearHubError) as err:
        prune(str(tiny_folder), tmp_path / "out", method="weight-norm", progress=False)
    message = str(err.value)
    assert "not enough memory" in message and "weight-norm prune" in message
    assert "norm buffers" in message and "--option power=1 (example hint)" in message
    assert not (tmp_path / "out").exists()


def test_register_method_checks_the_contract(plugin):
    from dataclasses import dataclass, field

    @dataclass
    class NoHelp:
        k: int = 1

    @dataclass
    class WithHelp:
        k: int = field(default=1, metadata={"help": "a setting"})

    def method(name, config, **attrs):
        body = {"name": name, "display_name": "X", "config_class": config, "score": lambda self, ctx: None, **attrs}
        return type("Example", (ScoringMethod,), body)

    with pytest.raises(TypeError, match="k have no help"):
        register_method(method("no-help", NoHelp))
    with pytest.raises(TypeError, match="not a lowercase word"):
        register_method(method("Bad Name", WithHelp))
    with pytest.raises(TypeError, match="Citation"):
        register_method(method("bad-citation", WithHelp, citation=("a", "b", "c")))
    with pytest.raises(ValueError, match="taken"):
        register_method(method("weight-norm", WithHelp))
    with pytest.raises(TypeError, match="abstract"):
        register_method(type("Abstract", (PruningMethod,), {"name": "abstract", "display_name": "A",
                                                               "config_class": WithHelp}))
    assert set(METHODS) >= {"weight-norm"} and "no-help" not in METHODS
    register_method(plugin)  # the same class again (a module imported twice) is fine
    assert isinstance(plugin.citation, Citation)
