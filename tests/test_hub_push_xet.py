"""Xet or LFS is decided from the server's answer, not from what is installed: with hf_xet installed and no
HF_HUB_DISABLE_XET, a server without Xet storage gets an LFS upload; a server that answers "xet" to the LFS batch
request gets a Xet upload attempt (tests/hub_server.py --xet advertises Xet but stores nothing there)."""

from __future__ import annotations

import pytest
from test_hub_push import TOKEN, cli, client_env, make_model, start_server, stop_server

pytest.importorskip("hf_xet")


def _env(server, home):
    env = client_env(server, home, HF_TOKEN=TOKEN)
    assert "HF_HUB_DISABLE_XET" not in env
    return env


@pytest.fixture
def servers(tmp_path):
    plain, xet = start_server(tmp_path / "plain"), start_server(tmp_path / "xet", "--xet")
    yield plain, xet
    stop_server(plain)
    stop_server(xet)


def test_server_answer_decides(servers, tmp_path):
    from huggingface_hub import HfApi

    from shear_hub.hub.push import LocalFile, server_offers_xet

    sample = tmp_path / "config.json"
    sample.write_text("{}")
    probe = LocalFile("config.json", sample, 2)
    for server, offers in zip(servers, (False, True)):
        HfApi(endpoint=server.url, token=TOKEN).create_repo("user/probe")
        assert server_offers_xet("user/probe", repo_type="model", revision="main", endpoint=server.url, token=TOKEN,
                                 sample=probe) is offers


def test_push_without_env_flag_uses_lfs_when_server_has_no_xet(servers, tmp_path):
    plain, _ = servers
    folder = make_model(tmp_path / "model")
    done = cli("push", str(folder), "user/plain", env=_env(plain, tmp_path / "home"))
    assert done.returncode == 0, done.stderr[-2000:]
    entry = plain.files("user/plain")["model.safetensors"]
    assert entry["lfs"] and plain.content(entry) == (folder / "model.safetensors").read_bytes()
    assert not (plain.root / "xet_requests.log").exists(), "the client must not ask a server without Xet for Xet"


def test_push_tries_xet_when_the_server_offers_it(servers, tmp_path):
    _, xet = servers
    folder = make_model(tmp_path / "model")
    done = cli("push", str(folder), "user/xet", env=_env(xet, tmp_path / "home"), timeout=120)
    # This server advertises Xet but has no Xet storage: the push fails, after asking for a Xet write token.
    assert done.returncode == 2, done.stdout + done.stderr
    assert "xet-write-token" in (xet.root / "xet_requests.log").read_text()
    err = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert err[-1].startswith("shear-hub: error: ") and "Traceback" not in done.stderr
    assert "Xet storage" in err[-1] and "HF_HUB_DISABLE_XET=1" in err[-1]
    weights = (folder / "model.safetensors").read_bytes()
    assert not any(p.read_bytes() == weights for p in (xet.root / "objects").iterdir()), "no LFS fallback upload"
