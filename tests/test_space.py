"""The Gradio Space (space/app.py) served on a local port with two tiny random Llama models.

One server per module: the Space folder is made by shear_hub.space.prepare_space_folder and started with
`python app.py` exactly like on a Space (config from shear_space.json, no SHEAR_* variables), offline.
Expected texts come from running the same models with transformers in the test process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub_server import serve as serve_hub  # tests/ is on sys.path (pythonpath in pyproject's pytest config)
from tiny_models import TinyPair, build_tiny_pair

from shear_hub.space import prepare_space_folder

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PROMPT = "Hello world"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def greedy(model_dir: Path, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """Reference: what the app must produce (greedy, no chat template for the tiny tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:]
    return tok.decode(new, skip_special_tokens=True), int(new.numel())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    return build_tiny_pair(tmp_path_factory.mktemp("models"))


@contextlib.contextmanager
def serve_space(folder: Path, **env_extra: str) -> Iterator[str]:
    """Run `python app.py` in a Space folder on a free local port; yield its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHEAR_", "HF_"))}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False",
               OMP_NUM_THREADS="1", **env_extra)
    log = folder / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Space exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Space not up after 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def space_url(tiny: TinyPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Configured only by the shear_space.json that prepare_space_folder writes (no SHEAR_* variables).
    folder = prepare_space_folder(tiny.pruned_dir, tmp_path_factory.mktemp("spaces") / "space")
    with serve_space(folder, HF_HUB_OFFLINE="1") as url:
        yield url


def test_compare_api_returns_both_generations_with_stats(space_url: str, tiny: TinyPair) -> None:
    from gradio_client import Client

    client = Client(space_url, verbose=False)
    assert "/compare" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    base_text, pruned_text, base_md, pruned_md, numbers = client.predict(PROMPT, 12, api_name="/compare")

    want_base, n_base = greedy(tiny.base_dir, PROMPT, 12)
    want_pruned, n_pruned = greedy(tiny.pruned_dir, PROMPT, 12)
    assert want_base != want_pruned  # the two columns are distinguishable
    assert base_text == want_base
    assert pruned_text == want_pruned

    base, pruned = numbers["base"], numbers["pruned"]
    assert base["model"] == str(tiny.base_dir.resolve())  # resolved from the pruned card's base_model
    assert (base["tokens"], pruned["tokens"]) == (n_base, n_pruned)
    assert base["params"] == tiny.report["params_before"]
    assert pruned["params"] == tiny.report["params_after"]
    assert base["file_bytes"] == (tiny.base_dir / "model.safetensors").stat().st_size
    assert pruned["file_bytes"] == (tiny.pruned_dir / "model.safetensors").stat().st_size
    assert base["tokens_per_s"] > 0 and pruned["tokens_per_s"] > 0
    assert numbers["speedup"] == pytest.approx(pruned["tokens_per_s"] / base["tokens_per_s"], rel=0.01)
    assert "tokens/s" in base_md and "params" in pruned_md


def test_compare_streams_base_then_pruned(space_url: str) -> None:
    from gradio_client import Client

    job = Client(space_url, verbose=False).submit(PROMPT, 20, api_name="/compare")
    final = job.result(timeout=60)
    updates = job.outputs()
    assert len(updates) > 4, "expected intermediate (streamed) updates"
    base_seen = [u[0] for u in updates]
    pruned_seen = [u[1] for u in updates]
    assert all(final[0].startswith(t) for t in base_seen)  # base text only grows
    assert all(final[1].startswith(t) for t in pruned_seen)
    first_pruned = next(i for i, t in enumerate(pruned_seen) if t)
    assert base_seen[first_pruned - 1] == final[0]  # the pruned model starts once the base is done
    assert updates[-1][0] == final[0] and updates[-1][1] == final[1]


def test_compare_rejects_empty_prompt(space_url: str) -> None:
    from gradio_client import Client

    with pytest.raises(Exception, match="Type a prompt"):
        Client(space_url, verbose=False).predict("   ", 8, api_name="/compare")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian chromium; .ci/setup_browser.sh)")
def test_browser_types_prompt_and_sees_both_outputs(space_url: str, tiny: TinyPair, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    prompt = "The pruned model"
    want_base, _ = greedy(tiny.base_dir, prompt, 64)  # 64: the slider's default
    want_pruned, _ = greedy(tiny.pruned_dir, prompt, 64)
    shot = tmp_path / "space.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(space_url, wait_until="networkidle")
            box = page.locator("#prompt textarea")
            box.fill(prompt)
            page.locator("#generate").click()
            expect(page.locator("#base_output textarea")).to_have_value(want_base, timeout=60_000)
            expect(page.locator("#pruned_output textarea")).to_have_value(want_pruned, timeout=60_000)
            expect(page.locator("#pruned_stats")).to_contain_text("tokens/s")
            expect(page.locator("#base_stats")).to_contain_text("tokens/s")
            expect(page.locator("#quality")).to_contain_text("wanda")
            expect(page.locator("#quality")).to_contain_text("301.50")  # pruned perplexity from the report
            plot = page.locator("#width_plot img")
            expect(plot).to_be_visible()
            assert plot.evaluate("img => img.naturalWidth") > 100  # the drawn PNG actually loaded
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_push_space_then_run_the_space_from_the_hub(tiny: TinyPair, tmp_path: Path) -> None:
    """`shear-hub push MODEL REPO --space SPACE` against a local Hub (tests/hub_server.py); the pushed Space,
    run as a Space runs, downloads both models from that Hub and answers /compare."""
    import argparse

    from gradio_client import Client

    from shear_hub.commands import push as push_cmd
    from shear_hub.errors import ShearHubError

    api_server, cdn_server = serve_hub(0, tmp_path / "hub", [])
    endpoint = f"http://127.0.0.1:{api_server.server_address[1]}"
    # A client in a subprocess: HF_* settings (Xet off: the test server speaks LFS) are read at import time.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "SHEAR_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPO))

    def run_py(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=120,
                              cwd=REPO)

    push = ["push", str(tiny.pruned_dir), "tester/tiny-pruned", "--space", "tester/tiny-demo"]
    try:
        done = run_py("-c", "import sys; from huggingface_hub import HfApi; a = HfApi(); "
                      "a.create_repo(sys.argv[2]); a.upload_folder(repo_id=sys.argv[2], folder_path=sys.argv[1])",
                      str(tiny.base_dir), "tester/tiny-base")
        assert done.returncode == 0, done.stderr
        # The tiny card's base_model is a local path: refused before anything is uploaded (no network needed).
        parser = argparse.ArgumentParser()
        push_cmd.add_parser(parser.add_subparsers(dest="command"))
        with pytest.raises(ShearHubError, match="--space-base-model"):
            push_cmd.run(parser.parse_args([*push, "--endpoint", endpoint]))

        done = run_py("-m", "shear_hub", *push, "--space-base-model", "tester/tiny-base")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[-2:] == [f"{endpoint}/tester/tiny-pruned", f"{endpoint}/spaces/tester/tiny-demo"]

        checkout = tmp_path / "space_checkout"
        done = run_py("-c", "import sys; from huggingface_hub import snapshot_download as d; "
                      "d('tester/tiny-demo', repo_type='space', local_dir=sys.argv[1])", str(checkout))
        assert done.returncode == 0, done.stderr
        assert json.loads((checkout / "shear_space.json").read_text()) == {
            "model": "tester/tiny-pruned", "base_model": "tester/tiny-base"}
        with serve_space(checkout, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "space_home"),
                         HF_HUB_DISABLE_XET="1") as url:
            base_text, pruned_text, *_, numbers = Client(url, verbose=False).predict(PROMPT, 6, api_name="/compare")
        assert base_text == greedy(tiny.base_dir, PROMPT, 6)[0]
        assert pruned_text == greedy(tiny.pruned_dir, PROMPT, 6)[0]
        assert (numbers["base"]["model"], numbers["pruned"]["model"]) == ("tester/tiny-base", "tester/tiny-pruned")
        assert numbers["pruned"]["file_bytes"] == (tiny.pruned_dir / "model.safetensors").stat().st_size
    finally:
        api_server.shutdown()
        cdn_server.shutdown()


PER_LAYER_IN_SPACE = """
import json, sys
class _Block:  # a Space has no shear_hub: the folder's own modeling code must do
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'shear_hub':
            raise ImportError('shear_hub must not be imported in the Space')
sys.meta_path.insert(0, _Block())
import importlib.util, torch
spec = importlib.util.spec_from_file_location('space_app', sys.argv[1])
app = importlib.util.module_from_spec(spec); sys.modules['space_app'] = app; spec.loader.exec_module(app)
try:
    app.load_model('pruned', sys.argv[2], 'cpu', torch.float32, allow_remote_code=False)
    refused = ''
except app.SpaceConfigError as exc:
    refused = str(exc)
lm = app.load_model('pruned', sys.argv[2], 'cpu', torch.float32, allow_remote_code=True)
*_, (text, stats) = app.stream_generate(lm, sys.argv[3], 8, 'auto')
print('RESULT:' + json.dumps({'remote_code': lm.remote_code, 'params': lm.params, 'text': text,
                              'arch': type(lm.model).__name__, 'refused': refused}))
"""


def test_per_layer_model_runs_in_the_space_with_its_shipped_code(tiny: TinyPair, tmp_path: Path) -> None:
    """A per-layer pruned folder (auto_map + modeling_shear.py) loads in the app without shear_hub installed,
    only because the app passes trust_remote_code=True for such folders; with SHEAR_TRUST_REMOTE_CODE=0 it refuses."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shear_hub.export import write_model_files
    from shear_hub.structures import build_graph
    from shear_hub.surgery import build_pruned_model

    base = AutoModelForCausalLM.from_pretrained(tiny.base_dir, use_safetensors=True).eval()
    graph = build_graph(base, ["heads", "mlp"])
    removed = [g for g in graph.groups if (g.kind == "mlp" and g.layer == 0 and g.index < 40)
               or (g.kind == "heads" and g.layer == 1 and g.index == 0)]
    pruned, _ = build_pruned_model(graph, removed, "per-layer")
    folder = tmp_path / "per_layer"
    write_model_files(pruned, AutoTokenizer.from_pretrained(tiny.base_dir), folder)
    assert "auto_map" in json.loads((folder / "config.json").read_text())

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SHEAR_"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH="")
    done = subprocess.run([sys.executable, "-c", PER_LAYER_IN_SPACE, str(REPO / "space" / "app.py"), str(folder),
                           PROMPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.rsplit("RESULT:", 1)[1])
    assert "SHEAR_TRUST_REMOTE_CODE=1" in out["refused"]
    assert out["remote_code"] is True
    assert out["params"] == sum(p.numel() for p in pruned.parameters())
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        ids = pruned.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out["text"] == tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


# ------------------------------------------------------------------ app helpers, in process


@pytest.fixture(scope="module")
def app_module():
    spec = importlib.util.spec_from_file_location("shear_space_app", REPO / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_width_plot_drawn_from_report_when_png_absent(app_module, tiny: TinyPair, tmp_path: Path) -> None:
    assert not (tiny.pruned_dir / "width_per_layer.png").exists()
    png = app_module.width_plot_path(tiny.pruned_dir, tiny.report, tmp_path)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A shipped picture wins over drawing one.
    shipped = tmp_path / "card"
    shipped.mkdir()
    (shipped / "width_per_layer.png").write_bytes(png.read_bytes())
    assert app_module.width_plot_path(shipped, tiny.report, tmp_path) == shipped / "width_per_layer.png"


def test_per_layer_widths_handle_removed_layers(app_module) -> None:
    layer = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 100}
    report = {
        "dims_before": {"layers": [layer] * 3},
        # dims_after lists the surviving layers only; layer 1 was removed
        "dims_after": {"layers": [dict(layer, intermediate_size=50), dict(layer, num_attention_heads=2)],
                       "removed_layers": [1]},
    }
    idx, mlp, heads = app_module._per_layer_widths(report)
    assert idx == [0, 1, 2]
    assert mlp == [50.0, 0.0, 100.0]
    assert heads == [100.0, 0.0, 50.0]


def test_base_model_default_from_card_then_report(app_module, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nbase_model:\n- org/base-a\n---\n# card\n")
    assert app_module.default_base_model(tmp_path) == "org/base-a"
    (tmp_path / "README.md").write_text("# card without front matter\n")
    (tmp_path / "pruning_report.json").write_text('{"base_model": "org/base-b"}')
    assert app_module.default_base_model(tmp_path) == "org/base-b"


def test_missing_model_setting_is_a_clear_error(app_module, tmp_path: Path) -> None:
    with pytest.raises(app_module.SpaceConfigError, match="SHEAR_MODEL"):
        app_module.Comparer({"model": None})
    with pytest.raises(app_module.SpaceConfigError, match="not an existing folder"):
        app_module.resolve_local(str(tmp_path / "missing"))
