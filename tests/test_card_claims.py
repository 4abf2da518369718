"""The model card says only what is true of the folder: readable names for every removed kind, no general promise of
speed (speed only from `shear-hub eval`), and a loading snippet that runs silently for per-layer folders."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from test_card import model_folder

from shear_hub.hub import render_card


def _card(tmp_path, **over) -> str:
    return render_card(model_folder(tmp_path, **over), repo_id="me/smol").read_text()


def test_removed_table_names_every_kind(tmp_path):
    text = _card(tmp_path, layout="per-layer",
                 removed_groups={"heads": 3, "qheads": 1, "mlp": 10, "hidden": 4, "layers": 1, "attn-blocks": 2,
                                 "mlp-blocks": 1})
    table = text.split("| Removed | Count |", 1)[1].split("\n\n", 1)[0]
    for row in ("| whole attention blocks | 2 |", "| whole MLP blocks | 1 |", "| MLP channels | 10 |",
                "| whole decoder layers | 1 |", "| query heads | 1 |"):
        assert row in table
    assert not re.search(r"\| (heads|qheads|mlp|hidden|layers|attn-blocks|mlp-blocks) \|", table), table


def test_no_general_promise_and_speed_only_when_measured(tmp_path):
    unmeasured = _card(tmp_path, evaluation={"perplexity": {"data": "pydocs_eval", "value": 30.1},
                                             "base_perplexity": 23.83})
    measured = render_card(model_folder(tmp_path, name="measured"), repo_id="me/smol").read_text()
    for text in (unmeasured, measured):
        lowered = text.lower()
        assert "any hardware" not in lowered and "faster" not in lowered and "smaller and" not in lowered
    assert "Speed versus the base was not measured" in unmeasured and "tok" not in unmeasured.split("## How")[0]
    assert "Speed below is what `shear-hub eval` measured" in measured and "| 141 | 120 | +17.5% |" in measured


_GUARD = textwrap.dedent("""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] == 'shear_hub':
                raise ImportError('shear_hub must not be imported here')
    sys.meta_path.insert(0, _Block())
""")


def test_per_layer_card_snippet_loads_silently_without_shear_hub(tiny_folder, tmp_path):
    from shear_hub.pruning import prune

    out = tmp_path / "pl"
    prune(str(tiny_folder), out, method="magnitude", sparsity=0.3, layout="per-layer", progress=False)
    card = (out / "README.md").read_text()
    snippet = re.search(r"```python\n(from transformers import AutoModelForCausalLM, AutoTokenizer\n.*?)```", card,
                        re.S).group(1)
    assert "trust_remote_code=True" in snippet
    snippet = snippet.replace("<namespace>/pl", str(out))
    code = _GUARD + snippet + "print('LOADED', type(model).__name__, type(tokenizer).__name__)\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED ShearLlamaForCausalLM" in done.stdout
    said = done.stdout + done.stderr
    for text in ("custom code", "[y/N]", "model of type", "trust_remote_code"):
        assert text not in said, said[-2000:]


def test_per_layer_folder_plain_auto_tokenizer_and_config_are_silent(tiny_folder, tmp_path):
    """Stock `AutoTokenizer.from_pretrained(folder)` / `AutoConfig` with no flag, shear_hub blocked, stdin closed:
    no prompt, no model-type warning (config.json names the stock family), and the stock model class refuses the
    ragged weights instead of loading them."""
    from shear_hub.pruning import prune

    out = tmp_path / "pl"
    prune(str(tiny_folder), out, method="magnitude", sparsity=0.3, layout="per-layer", progress=False)
    code = _GUARD + textwrap.dedent(f"""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
        config = AutoConfig.from_pretrained({str(out)!r})
        print('LOADED', type(tokenizer).__name__, config.model_type, len(config.layer_dims))
        try:
            AutoModelForCausalLM.from_pretrained({str(out)!r})
        except Exception as exc:
            print('REFUSED', type(exc).__name__)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    first = done.stdout.split("REFUSED")[0] + done.stderr.split("LOAD REPORT")[0]
    assert "LOADED" in done.stdout and " llama " in done.stdout and "REFUSED" in done.stdout
    for text in ("custom code", "[y/N]", "model of type", "trust_remote_code"):
        assert text not in first, first[-2000:]
