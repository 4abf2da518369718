"""--max-memory (issue 16): prune / eval with the weights dispatched under accelerate's max_memory, disk offload for
the rest. Capped and uncapped runs must remove the same groups and give the same model; bad caps are one line."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from shear_hub.cli import main
from shear_hub.memory_plan import header_plan, parse_max_memory
from shear_hub.pruning import prune

CLI = [sys.executable, "-m", "shear_hub"]
FAST = dict(calib_samples=8, seq_len=32, progress=False)  # the CLI defaults otherwise


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from model_factory import save_tiny_model_folder

    path = tmp_path_factory.mktemp("mm") / "dense"
    save_tiny_model_folder(path, layers=6, intermediate=128)
    return path


def _third(folder) -> int:
    return header_plan(folder, "float32").total_bytes // 3


def _tensors(folder) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _logits(folder) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.arange(2 * 24).reshape(2, 24) % model.config.vocab_size
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method, structures, options", [
    ("magnitude", "heads,mlp,hidden", {}), ("wanda", "heads,mlp,hidden", {}), ("wanda", "heads", {}),
    # gradients one decoder layer at a time (layer_stream.py); the surgeon's OBS updates staged on disk
    # (two shots: the second shot's passes see the first one's updates and zeroed groups, put back per layer)
    ("taylor", "heads,mlp", {}), ("surgeon", "heads,qheads", {"fisher": "sampled"}),
    ("surgeon", "heads,mlp", {"shots": 2}), ("surgeon", "heads,mlp", {"curvature": "layerwise", "shots": 2})])
def test_capped_prune_equals_uncapped(dense, tmp_path, method, structures, options, capsys):
    full = prune(str(dense), tmp_path / "full", method=method, sparsity=0.3, structures=structures,
                 method_options=options, **FAST)
    cap = _third(dense)
    rc = main(["prune", str(dense), "--output", str(tmp_path / "capped"), "--method", method, "--sparsity", "0.3",
               "--structures", structures, "--calib-samples", "8", "--seq-len", "32", "--no-progress",
               "--max-memory", f"cpu={cap}"] + [a for k, v in options.items() for a in ("--option", f"{k}={v}")])
    assert rc == 0, capsys.readouterr().err
    a = json.loads((tmp_path / "full" / "pruning_report.json").read_text())
    b = json.loads((tmp_path / "capped" / "pruning_report.json").read_text())
    assert b["max_memory"]["dense_placement"].get("disk"), "the cap must really push modules to disk"
    assert b["max_memory"]["pruned_placement"].get("disk")
    assert a["removed_groups"] == b["removed_groups"] and sum(a["removed_groups"].values()) > 0
    print(method, structures, a["removed_groups"])
    assert a["dims_after"] == b["dims_after"] and a["params_after"] == b["params_after"]
    assert a["evaluation"] == b["evaluation"]  # held-out perplexity before / after, capped model through the hooks
    ta, tb = _tensors(tmp_path / "full"), _tensors(tmp_path / "capped")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # the same channels kept
    la, lb = _logits(tmp_path / "full"), _logits(tmp_path / "capped")
    assert torch.allclose(la, lb, rtol=1e-5, atol=1e-5), (la - lb).abs().max()
    assert full.params_after == b["params_after"]
    assert not list(tmp_path.glob(".capped.offload-*")), "the staging folder is removed"


def test_smallest_cap_is_named_and_works(dense, tmp_path, capsys):
    rc = main(["prune", str(dense), "--output", str(tmp_path / "out"), "--method", "magnitude",
               "--max-memory", "cpu=10KiB"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("shear-hub: error: ")
    smallest = re.search(r"smallest cap that works is --max-memory (\S+)", err).group(1)
    assert parse_max_memory(smallest)["cpu"] >= header_plan(dense, "float32").min_cap_bytes
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
    # the named minimum really runs (every module on disk, onloaded one at a time)
    assert main(["prune", str(dense), "--output", str(tmp_path / "out"), "--method", "magnitude", "--no-progress",
                 "--no-eval", "--max-memory", smallest]) == 0
    assert (tmp_path / "out" / "config.json").is_file()


@pytest.mark.parametrize("value, words", [
    ("cpu=lots", "not a positive size"), ("cpu", "not DEVICE=SIZE"), ("gpu=1GiB", "unknown"),
    ("disk=1GiB", "no disk entry"), ("cpu=0", "not a positive size"), ("cpu=1GiB,cpu=2GiB", "twice"),
])
def test_malformed_cap_is_one_line(dense, tmp_path, capsys, value, words):
    rc = main(["prune", str(dense), "--output", str(tmp_path / "out"), "--method", "magnitude", "--max-memory", value])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and words in err and "--max-memory" in err, err
    assert not list(tmp_path.iterdir())
    rc = main(["eval", str(dense), "--no-speed", "--max-memory", value])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize("args, words", [
    (["--method", "lorashear"], "--max-memory supports --method magnitude or wanda or taylor or surgeon"),
    (["--method", "surgeon", "--option", "lora_rank=4"], "drop lora_rank=4"),
    (["--method", "surgeon", "--option", "mode=2:4"], "drop mode=2:4"),
    (["--method", "surgeon", "--option", "propagate=true"], "drop propagate=true"),
    (["--method", "taylor", "--structures", "mlp,hidden"], "drop 'hidden' from --structures")])
def test_settings_that_cannot_stream_are_refused_up_front(dense, tmp_path, args, words):
    done = subprocess.run(CLI + ["prune", str(dense), "--output", str(tmp_path / "out"), "--max-memory", "cpu=1GiB"]
                          + args, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert words in done.stderr
    assert not list(tmp_path.iterdir())


def test_eval_capped_perplexity_equals_uncapped(dense, capsys):
    cap = _third(dense)
    args = ["eval", str(dense), "--no-speed", "--no-write", "--json", "--seq-len", "32", "--windows", "4"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(args + ["--max-memory", f"cpu={cap}"]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["max_memory"]["placement"].get("disk")
    assert capped["params"] == full["params"]
    a, b = full["perplexity"]["value"], capped["perplexity"]["value"]
    assert abs(a - b) <= 1e-5 * a


RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import shear_hub.pruning as sp
    sp.prune(sys.argv[1], sys.argv[2], method="magnitude", sparsity=0.2, progress=False, evaluate=False,
             max_memory=sys.argv[3] or None)
    # VmHWM, not ru_maxrss: Linux carries the parent's (pytest's) high-water mark into ru_maxrss across exec
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss": int(hwm.split()[1]) * 1024}))
""")


def test_peak_rss_under_the_cap(dense, tmp_path):
    """A 120 MB (fp32) model: the capped prune's peak RSS stays well below the uncapped one (each in a fresh
    process, VmHWM), each measured above the runtime: the same prune of the 0.6 MB model (python, torch,
    transformers, accelerate loaded and used the same way)."""
    from model_factory import tiny_llama

    model = tiny_llama(layers=8, hidden=384, heads=6, kv_heads=2, head_dim=64, intermediate=1536, vocab=4000,
                       tied=False)
    tiny, big = dense, tmp_path / "big"
    model.save_pretrained(big)
    from tiny_models import build_tokenizer

    build_tokenizer().save_pretrained(big)
    del model
    weights = header_plan(big, "float32").total_bytes
    peaks = {}
    runs = (("runtime", tiny, ""), ("full", big, ""), ("capped", big, f"cpu={weights // 3}"))
    for name, folder, cap in runs:
        done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(folder), str(tmp_path / name), cap],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[name] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"]
    base = peaks["runtime"]
    print(f"weights {weights / 2**20:.0f} MiB, peak RSS: runtime (tiny-model prune) {base / 2**20:.0f} MiB, full "
          f"+{(peaks['full'] - base) / 2**20:.0f} MiB, capped (cap {weights // 3 / 2**20:.0f} MiB) "
          f"+{(peaks['capped'] - base) / 2**20:.0f} MiB")
    # the runtime line is for the reader; the claim compares the two big runs, which share everything but the cap
    assert peaks["full"] - peaks["capped"] > 0.5 * weights, peaks
    assert _tensors(tmp_path / "full").keys() == _tensors(tmp_path / "capped").keys()
