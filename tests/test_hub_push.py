"""`shear-hub push` against tests/hub_server.py: the real huggingface_hub client over HTTP, no monkeypatching.

Every push and download runs in a subprocess with HF_ENDPOINT pointing at the server and a fresh HF_HOME, with
hf_xet installed and no HF_HUB_DISABLE_XET: push asks the server whether it stores large files in Xet (the LFS batch
answer), and this server speaks the LFS "basic" transfer only (test_hub_push_xet.py covers a server that offers Xet).
Remote state is checked against the server's own storage, independently of the client.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "hub_server.py"
TOKEN = "hf_testtokenSECRET0123456789abcdef"
REPORT_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ---------------------------------------------------------------- helpers --------------------------------------
class Server:
    def __init__(self, root: Path, proc: subprocess.Popen, port: int):
        self.root, self.proc, self.port = root, proc, port
        self.url = f"http://127.0.0.1:{port}"

    def meta(self, repo_id: str, repo_type: str = "model") -> dict:
        ns, name = repo_id.split("/")
        return json.loads((self.root / "repos" / repo_type / ns / f"{name}.json").read_text())

    def commit(self, oid: str) -> dict:
        return json.loads((self.root / "commits" / f"{oid}.json").read_text())

    def files(self, repo_id: str, ref: str = "main", repo_type: str = "model") -> dict:
        return self.commit(self.meta(repo_id, repo_type)["refs"][ref])["files"]

    def history(self, repo_id: str, ref: str = "main", repo_type: str = "model") -> list[str]:
        oid, out = self.meta(repo_id, repo_type)["refs"][ref], []
        while oid:
            out.append(oid)
            oid = self.commit(oid)["parent"]
        return out

    def content(self, entry: dict) -> bytes:
        return (self.root / "objects" / entry["sha256"]).read_bytes()


def start_server(root: Path, *extra: str) -> Server:
    port_file = root.parent / f"{root.name}.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0", "--root", str(root), "--token", TOKEN, "--port-file",
         str(port_file), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 20
    while not port_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"hub_server did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    return Server(root, proc, int(port_file.read_text()))


def stop_server(server: Server) -> None:
    server.proc.terminate()
    server.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("hub") / "root")
    yield server
    stop_server(server)


def client_env(server: Server, home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error")
    env.update(extra)
    return env


# Exactly what the `shear-hub` console script does.
CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'shear-hub'; from shear_hub.cli import main; sys.exit(main())"]


def cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def py(code: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def make_model(folder: Path, *, vocab: int = 128, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM saved with save_pretrained, plus a pruning_report.json."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    layer_before = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96}
    layer_after = {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 48}
    report = {
        "shear_hub_version": "0.1.0",
        "command": f"shear-hub prune {REPORT_BASE} --method wanda --sparsity 0.4 --out {folder.name}",
        "base_model": REPORT_BASE, "base_model_license": "apache-2.0", "method": "wanda", "method_config": {},
        "layout": "uniform", "structures": ["heads", "mlp"], "target_sparsity": 0.4, "achieved_sparsity": 0.4,
        "params_before": int(params * 1.6), "params_after": params,
        "architecture_before": "LlamaForCausalLM", "architecture_after": "LlamaForCausalLM",
        "dims_before": {"hidden_size": hidden, "layers": [layer_before, layer_before]},
        "dims_after": {"hidden_size": hidden, "layers": [layer_after, layer_after], "removed_layers": []},
        "removed_groups": {"mlp": 96, "heads": 4, "hidden": 0, "layers": 0},
        "calibration": {"spec": "builtin:pydocs", "samples": 4, "seq_len": 32, "datasets": []},
        "evaluation": {"perplexity": {"data": "pydocs_eval", "seq_len": 32, "windows": 2, "value": 130.5},
                       "base_perplexity": 120.25},
        "recovery": None, "timings_s": {},
    }
    (folder / "pruning_report.json").write_text(json.dumps(report, indent=2))
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_remote_equals(server: Server, repo_id: str, folder: Path, ref: str = "main", repo_type: str = "model"):
    """Server-side check, independent of the client: same paths, same bytes."""
    files = server.files(repo_id, ref, repo_type)
    local = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert set(files) - {".gitattributes"} == set(local)
    for path, entry in files.items():
        if path in local:
            assert entry["sha256"] == sha256(local[path]), path
            assert server.content(entry) == local[path].read_bytes(), path


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text


# ---------------------------------------------------------------- tests ----------------------------------------
def test_push_round_trip_from_pretrained_and_model_card(hub, tmp_path):
    folder = make_model(tmp_path / "tiny-pruned")
    repo = "shear-org/tiny-pruned"
    res = cli("push", str(folder), repo, "--token", TOKEN, env=client_env(hub, tmp_path / "home-push"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"{hub.url}/{repo}"
    # The push generated the card and the plot, and both went up in the same single commit.
    assert (folder / "README.md").is_file() and (folder / "width_per_layer.png").is_file()
    assert_remote_equals(hub, repo, folder)
    assert len(hub.history(repo)) == 2  # the repo's initial commit + exactly one push commit
    files = hub.files(repo)
    assert files["model.safetensors"]["lfs"] and files["width_per_layer.png"]["lfs"]
    assert not files["config.json"]["lfs"]
    assert_no_token(res.stdout, res.stderr, *(p.read_text(errors="replace") for p in folder.iterdir()))

    # A fresh cache, the stock loader, HF_ENDPOINT only: identical logits, and the card's metadata parses.
    code = f"""
import json, torch
from transformers import AutoModelForCausalLM
from huggingface_hub import ModelCard
ids = torch.arange(0, 96).reshape(2, 48) % 128
remote = AutoModelForCausalLM.from_pretrained({repo!r}).eval()
local = AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval()
with torch.no_grad():
    same = torch.equal(remote(ids).logits, local(ids).logits)
card = ModelCard.load({repo!r})
print(json.dumps({{"same": same, "base_model": card.data.base_model, "tags": card.data.tags,
                   "library": card.data.library_name, "ppl": card.data.eval_results[0].metric_value}}))
"""
    res = py(code, env=client_env(hub, tmp_path / "home-pull"))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["same"] is True
    assert out["base_model"] == REPORT_BASE and out["library"] == "transformers"
    assert {"pruned", "shear-hub", "wanda"} <= set(out["tags"])
    assert out["ppl"] == 130.5
    # It really came over HTTP into the fresh cache.
    assert list((tmp_path / "home-pull" / "hub").glob("models--shear-org--tiny-pruned/snapshots/*/model.safetensors"))


def test_repush_is_idempotent_and_mirrors_deletions(hub, tmp_path):
    folder = make_model(tmp_path / "m")
    repo = "shear-org/mirror"
    env = client_env(hub, tmp_path / "home", HF_TOKEN=TOKEN)  # token from the environment
    assert cli("push", str(folder), repo, env=env).returncode == 0
    history = hub.history(repo)
    res = cli("push", str(folder), repo, env=env)
    assert res.returncode == 0, res.stderr
    assert hub.history(repo) == history  # nothing changed -> no new (empty or duplicate) commit
    (folder / "notes.txt").write_text("second version\n")
    (folder / "width_per_layer.png").unlink()
    res = cli("push", str(folder), repo, "--no-card", "--commit-message", "v2", env=env)
    assert res.returncode == 0, res.stderr
    assert len(hub.history(repo)) == len(history) + 1
    assert hub.commit(hub.history(repo)[0])["title"] == "v2"
    assert_remote_equals(hub, repo, folder)  # notes.txt added, the PNG deleted remotely too
    assert_no_token(res.stdout, res.stderr)


def test_interrupted_push_resumes_without_partial_commit(tmp_path):
    # A slow large-file host so the upload is still running when the push is killed.
    server = start_server(tmp_path / "root", "--upload-delay", "0.03")
    try:
        folder = make_model(tmp_path / "big", vocab=8192, hidden=64)  # ~2 MB of weights
        repo = "shear-org/resumable"
        env = client_env(server, tmp_path / "home", HF_TOKEN=TOKEN)
        proc = subprocess.Popen([*CLI, "push", str(folder), repo], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        deadline = time.time() + 60
        while not any(p.stat().st_size > 0 for p in (server.root / "tmp").glob("upload-*.part")):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "upload never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10  # the server notices the dropped connection and discards the partial file
        while list((server.root / "tmp").glob("upload-*.part")) and time.time() < deadline:
            time.sleep(0.05)
        # The repo exists but holds only its initial commit; the half-sent object never became visible.
        assert len(server.history(repo)) == 1
        assert set(server.files(repo)) == {".gitattributes"}
        # Bytes already in the socket buffers may still arrive in full, but an object only exists when it is
        # complete: every stored object hashes to its name, and no partial file is left behind.
        for obj in (server.root / "objects").iterdir():
            assert sha256(obj) == obj.name
        assert not list((server.root / "tmp").glob("upload-*.part"))

        res = cli("push", str(folder), repo, env=env)
        assert res.returncode == 0, res.stderr
        assert len(server.history(repo)) == 2  # one complete commit, no duplicate
        assert_remote_equals(server, repo, folder)
    finally:
        stop_server(server)


def test_bad_token_is_one_line_error_and_never_printed(hub, tmp_path):
    folder = make_model(tmp_path / "m")
    bad = "hf_wrongTOKENvalue9876543210zyxw"
    res = cli("push", str(folder), "shear-org/denied", "--token", bad, env=client_env(hub, tmp_path / "home"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "401" in lines[0] and "--token" in lines[0]
    assert bad not in res.stdout + res.stderr
    assert not (hub.root / "repos" / "model" / "shear-org" / "denied.json").exists()


def test_branch_pull_request_and_private_repo(hub, tmp_path):
    folder = make_model(tmp_path / "m")
    repo = "shear-org/branches"
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(TOKEN)  # where `hf auth login` stores the token
    env = client_env(hub, home)
    res = cli("push", str(folder), repo, "--private", "--revision", "dev", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"{hub.url}/{repo}/tree/dev"
    meta = hub.meta(repo)
    assert meta["private"] is True
    assert set(hub.files(repo, "main")) == {".gitattributes"}  # main untouched
    assert_remote_equals(hub, repo, folder, ref="dev")

    (folder / "extra.txt").write_text("proposed change\n")
    res = cli("push", str(folder), repo, "--create-pr", "--no-card", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"{hub.url}/{repo}/discussions/1"
    assert set(hub.files(repo, "main")) == {".gitattributes"}
    assert_remote_equals(hub, repo, folder, ref="refs/pr/1")

    # Private: anonymous readers cannot see it; the token holder can download from the PR ref.
    code = f"""
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
try:
    HfApi(token=False).model_info({repo!r}); print("visible")
except RepositoryNotFoundError:
    print("hidden")
print(open(hf_hub_download({repo!r}, "extra.txt", revision="refs/pr/1")).read().strip())
"""
    res = py(code, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["hidden", "proposed", "change"]


@pytest.mark.parametrize("repo_type", ["space", "dataset"])
def test_space_and_dataset_repos_use_the_same_code(hub, tmp_path, repo_type):
    folder = tmp_path / repo_type
    folder.mkdir()
    (folder / "README.md").write_text("---\ntitle: demo\nsdk: gradio\nlicense: apache-2.0\n---\n# demo\n")
    (folder / "app.py").write_text("print('hello')\n")
    (folder / "data").mkdir()
    (folder / "data" / "table.parquet").write_bytes(os.urandom(50_000))
    repo = f"shear-org/demo-{repo_type}"
    res = cli("push", str(folder), repo, "--repo-type", repo_type, "--token", TOKEN,
              env=client_env(hub, tmp_path / "home"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"{hub.url}/{repo_type}s/{repo}"
    assert_remote_equals(hub, repo, folder, repo_type=repo_type)
    assert hub.files(repo, repo_type=repo_type)["data/table.parquet"]["lfs"]
    if repo_type == "space":
        assert hub.meta(repo, "space")["sdk"] == "gradio"


def test_verify_remote_detects_differences(hub, tmp_path):
    """verify_remote compares hashes, not just names: a remote edit made after the push is caught."""
    from huggingface_hub import HfApi

    from shear_hub.errors import ShearHubError
    from shear_hub.hub.push import verify_remote

    folder = make_model(tmp_path / "m")
    repo = "shear-org/verify"
    assert cli("push", str(folder), repo, "--token", TOKEN, env=client_env(hub, tmp_path / "home")).returncode == 0
    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert verify_remote(api, folder, repo, repo_type="model", revision="main") == len(list(folder.iterdir()))
    # Someone else changes one small file and adds another (regular files: no large-file transfer involved).
    api.upload_file(path_or_fileobj=b'{"changed": true}\n', path_in_repo="config.json", repo_id=repo)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="stray.txt", repo_id=repo)
    with pytest.raises(ShearHubError) as err:
        verify_remote(api, folder, repo, repo_type="model", revision="main")
    assert "content differs: config.json" in str(err.value) and "only remote: stray.txt" in str(err.value)


def test_push_folder_python_api_and_input_errors(hub, tmp_path):
    folder = make_model(tmp_path / "api-model")
    code = f"""
from shear_hub.hub import push_folder
from shear_hub.errors import ShearHubError
print(push_folder({str(folder)!r}, "api-model"))  # bare name -> the token owner's namespace
for kwargs in ({{"repo_type": "bucket"}}, {{}}):
    target = {str(folder)!r} if kwargs else {str(tmp_path / "missing")!r}
    try:
        push_folder(target, "shear-org/x", **kwargs)
    except ShearHubError as e:
        print("ERR", e)
"""
    res = py(code, env=client_env(hub, tmp_path / "home", HF_TOKEN=TOKEN))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0] == f"{hub.url}/shear-tester/api-model"
    assert "unknown repo type 'bucket'" in lines[1] and "is not a folder" in lines[2]
    # The Python API pushes the folder as it is: no card was generated.
    assert set(hub.files("shear-tester/api-model")) - {".gitattributes"} == {"config.json", "generation_config.json",
                                                                           "model.safetensors", "pruning_report.json"}


def test_per_layer_model_from_a_real_prune_round_trips(hub, tmp_path):
    """A per-layer model made by the core prune API (card rendered by the export) loads back from the Hub with
    trust_remote_code=True, and with `import shear_hub` instead of remote code."""
    from model_factory import save_tiny_model_folder

    from shear_hub.pruning import prune

    save_tiny_model_folder(tmp_path / "base")
    out = tmp_path / "tiny-per-layer"
    prune(str(tmp_path / "base"), out, method="magnitude", sparsity=0.3, layout="per-layer", progress=False)
    assert (out / "modeling_shear.py").is_file() and (out / "width_per_layer.png").is_file()
    repo = "shear-org/tiny-per-layer"
    res = cli("push", str(out), repo, "--token", TOKEN, env=client_env(hub, tmp_path / "home-push"))
    assert res.returncode == 0, res.stderr
    assert_remote_equals(hub, repo, out)
    code = f"""
import json, torch
from transformers import AutoModelForCausalLM
from huggingface_hub import ModelCard
ids = torch.arange(0, 60).reshape(2, 30) % 97
remote = AutoModelForCausalLM.from_pretrained({repo!r}, trust_remote_code=True).eval()
import shear_hub  # its own per-layer classes: no remote code needed
local = shear_hub.from_pretrained({str(out)!r}).eval()
plain = shear_hub.from_pretrained({repo!r}).eval()
with torch.no_grad():
    ref = local(ids).logits
    same = [torch.equal(remote(ids).logits, ref), torch.equal(plain(ids).logits, ref)]
card = ModelCard.load({repo!r})
print(json.dumps({{"same": same, "tags": card.data.tags, "code": "trust_remote_code=True" in card.text}}))
"""
    res = py(code, env=client_env(hub, tmp_path / "home-pull"))
    assert res.returncode == 0, res.stderr
    out_json = json.loads(res.stdout.strip().splitlines()[-1])
    assert out_json["same"] == [True, True]
    assert {"pruned", "shear-hub", "magnitude", "custom_code"} <= set(out_json["tags"]) and out_json["code"]
