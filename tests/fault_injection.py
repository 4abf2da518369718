"""Fault-injection helpers for the reliability suite: broken inputs, tree hashes, and a CLI runner that kills.

The runner (``run_cli_cases``) starts ONE helper interpreter that imports torch / transformers / shear_hub once
(they cost 5-15 s per process on a loaded 2-core machine) and then forks a fresh child per case. Each child is
exactly the console script: ``sys.argv[0] = 'shear-hub'; sys.exit(shear_hub.cli.main(argv))`` with its own cwd,
environment, stdout and stderr files, so exit code, output and side effects are those of a real CLI run. A case
may be SIGKILLed after a delay or as soon as a path pattern appears (interruption tests). The parent never runs a
torch operation before forking, so no thread pool is inherited half-initialised.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ERROR_PREFIX = "shear-hub: error:"


# ----------------------------------------------------------------- file-tree fingerprints -------------------------
def tree_digest(root: str | os.PathLike) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too) -> sha256 of its bytes, '<dir>' or '<link:target>'."""
    root = Path(root)
    out: dict[str, str] = {}
    if not root.exists() and not root.is_symlink():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = f"<link:{os.readlink(path)}>"
            elif path.is_dir():
                out[rel] = "<dir>"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ----------------------------------------------------------------- broken inputs -----------------------------------
def truncate(path: Path, keep: float) -> None:
    """Keep the first ``keep`` fraction of the file (a download cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_bytes(path: Path, start: int, count: int) -> None:
    """XOR 0xFF over ``count`` bytes from ``start`` (bit rot / a bad copy)."""
    data = bytearray(path.read_bytes())
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def safetensors_header_length(path: Path) -> int:
    with path.open("rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


class _MarkerOnUnpickle:
    """Unpickling this calls open(marker, 'w'): proof that a checkpoint was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle_checkpoint(path: Path, marker: Path) -> None:
    """A torch.save'd state dict whose unpickling creates ``marker`` (what a malicious .bin can do)."""
    import torch

    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "evil": _MarkerOnUnpickle(str(marker))}, path)


def unpickle_creates_marker(path: Path, marker: Path) -> bool:
    """Positive control: really unpickling the file does create the marker (so its absence means something)."""
    import torch

    marker.unlink(missing_ok=True)
    try:
        torch.load(path, weights_only=False)
    except Exception:
        pass
    created = marker.exists()
    marker.unlink(missing_ok=True)
    return created


def make_remote_code_folder(src: Path, dst: Path, marker: Path) -> Path:
    """Copy of a tiny Llama folder whose config needs custom code (auto_map) that writes ``marker`` on import."""
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = "evil_llama"
    cfg["architectures"] = ["EvilForCausalLM"]
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                       "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    payload = f"open({str(marker)!r}, 'w').write('remote code ran')\n"
    (dst / "configuration_evil.py").write_text(
        payload + "from transformers import LlamaConfig\n\n\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil_llama'\n")
    (dst / "modeling_evil.py").write_text(
        payload + "from transformers import LlamaForCausalLM\n\nfrom .configuration_evil import EvilConfig\n\n\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return dst


def make_tiny_foreign_folder(path: Path, kind: str) -> Path:
    """Tiny models of families shear-hub does not prune (gpt2: causal but no adapter; bert: not causal at all)
    or lacks a structure of (opt: no residual 'hidden' channels)."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

    from tiny_models import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64))
    elif kind == "bert":
        model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64))
    elif kind == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                         num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=32))
    else:
        raise ValueError(kind)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ----------------------------------------------------------------- the forking CLI runner --------------------------
@dataclass
class Case:
    id: str
    argv: list[str]
    cwd: str = str(ROOT)
    env: dict[str, str] = field(default_factory=dict)  # added to the runner's environment
    unset: list[str] = field(default_factory=list)
    kill_after: float | None = None  # SIGKILL after this many seconds
    kill_when: str | None = None  # SIGKILL as soon as this glob matches (checked every 2 ms)
    timeout: float = 240.0


@dataclass
class Result:
    id: str
    rc: int
    stdout: str
    stderr: str
    seconds: float
    killed: bool


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """No real Hub, no real credentials: a dead endpoint, a private HF_HOME, offline-friendly settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home / "hf"), HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ETAG_TIMEOUT="2",
               HF_HUB_DOWNLOAD_TIMEOUT="2", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), OMP_NUM_THREADS="1",
               SHEAR_HUB_CACHE=str(Path.home() / ".cache" / "shear_hub"))
    env.update(extra)
    return env


def run_cli_cases(cases: list[Case], env: dict[str, str], jobs: int = 2, timeout: float = 900) -> dict[str, Result]:
    """Run every case through the CLI in forked children of one warm interpreter; results by case id."""
    with tempfile.TemporaryDirectory(prefix="shear-runner-") as work:
        spec, answer = Path(work) / "cases.json", Path(work) / "results.json"
        spec.write_text(json.dumps({"jobs": jobs, "cases": [c.__dict__ for c in cases]}))
        done = subprocess.run([sys.executable, __file__, "--serve", str(spec), str(answer)], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if done.returncode != 0 or not answer.exists():
            raise RuntimeError(f"runner failed ({done.returncode}): {done.stderr[-3000:]}")
        return {r["id"]: Result(**r) for r in json.loads(answer.read_text())}


def _child(case: dict, out: str, err: str) -> None:
    """In the forked child: become `shear-hub ARGV` and never return."""
    try:
        os.chdir(case["cwd"])
        for key in case["unset"]:
            os.environ.pop(key, None)
        os.environ.update(case["env"])
        fd_out = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fd_err = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        sys.argv = ["shear-hub", *case["argv"]]
        import torch

        torch.set_num_threads(1)
        from shear_hub.cli import main

        try:
            rc = int(main(case["argv"]) or 0)
        except SystemExit as exc:  # argparse --help/--version, or an explicit exit
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # what the console script shows when main() itself raises (--debug)
            import traceback

            traceback.print_exc()
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    except BaseException:
        os._exit(99)


def _serve(spec_path: str, answer_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    # Warm up: every heavy import a command will need, without running any tensor operation.
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import shear_hub.cli
    import shear_hub.pruning  # noqa: F401

    shear_hub.cli.build_parser()  # imports every command module
    for optional in ("shear_hub.recovery", "shear_hub.evaluation.report", "shear_hub.hub.push", "shear_hub.hub.card",
                     "shear_hub.onnx", "huggingface_hub", "peft", "accelerate", "safetensors.torch"):
        try:
            __import__(optional)
        except Exception:
            pass
    work = Path(tempfile.mkdtemp(prefix="shear-cases-"))
    pending = list(spec["cases"])
    running: dict[int, tuple[dict, float, str, str]] = {}
    results = []
    while pending or running:
        while pending and len(running) < spec["jobs"]:
            case = pending.pop(0)
            out, err = str(work / f"{len(results) + len(running)}-{os.getpid()}-{time.time_ns()}.out"), None
            err = out[:-4] + ".err"
            Path(out).touch()  # a child killed before it opens them still leaves (empty) files to read
            Path(err).touch()
            pid = os.fork()
            if pid == 0:
                _child(case, out, err)
            running[pid] = (case, time.time(), out, err)
        for pid, (case, started, out, err) in list(running.items()):
            elapsed = time.time() - started
            kill = (case["kill_after"] is not None and elapsed >= case["kill_after"]) or elapsed > case["timeout"]
            if case["kill_when"] and glob.glob(case["kill_when"]):
                kill = True
            done_pid, status = os.waitpid(pid, os.WNOHANG)
            if done_pid == 0 and kill:
                os.kill(pid, signal.SIGKILL)
                done_pid, status = os.waitpid(pid, 0)
            if done_pid:
                del running[pid]
                rc = os.waitstatus_to_exitcode(status)
                results.append({"id": case["id"], "rc": rc, "stdout": Path(out).read_text(errors="replace"),
                                "stderr": Path(err).read_text(errors="replace"), "seconds": round(elapsed, 3),
                                "killed": rc == -signal.SIGKILL})
        time.sleep(0.002)
    Path(answer_path).write_text(json.dumps(results))
    return 0


def one_line_error(result: Result) -> str:
    """The single stderr line of a failed run (asserting there is exactly one, with the prefix)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{result.id}: expected one stderr line, got {len(lines)}:\n{result.stderr[-3000:]}"
    assert lines[0].startswith(ERROR_PREFIX), f"{result.id}: {lines[0]}"
    return lines[0]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        sys.exit(_serve(sys.argv[2], sys.argv[3]))
    sys.exit("usage: fault_injection.py --serve CASES.json RESULTS.json")
