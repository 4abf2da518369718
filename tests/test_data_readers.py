"""Local data files and weight headers are read by the libraries (``datasets`` for JSON lines / parquet,
huggingface_hub for safetensors headers) with the behaviour shear-hub documents: which column is the text, how rows
are joined, the one-line errors for bad input, nothing written to the user's cache and no network."""

from __future__ import annotations

import json
import socket
import struct

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from shear_hub.data import load_text
from shear_hub.errors import ShearHubError
from shear_hub.resources_check import _safetensors_header, weights_info


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """A fresh HF_HOME that must stay empty, and sockets that refuse to connect."""
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a local data file must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield tmp_path
    assert not any(home.iterdir()), "reading a local file left something in the user's cache"


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_jsonl_text_column_order_and_joining(offline_home):
    d = offline_home
    assert load_text(_jsonl(d / "a.jsonl", [{"id": 1, "text": "één"}, {"id": 2, "text": ""}, {"id": 3, "text": 7}])) \
        == "één\n\n\n\n7"  # every row, empty ones too, values as str()
    # the first of text / content / document / instruction, per row
    assert load_text(_jsonl(d / "b.jsonl", [{"content": "c", "text": "t"}, {"content": "c2"}, {"instruction": "i"}])) \
        == "t\n\nc2\n\ni"
    (d / "c.jsonl").write_text('{"text": "x"}\n\n   \n{"text": "y"}\n')  # blank lines are no rows
    assert load_text(str(d / "c.jsonl")) == "x\n\ny"
    (d / "one.json").write_text('{"document": "whole"}')
    assert load_text(str(d / "one.json")) == "whole"
    _jsonl(d / "x1.jsonl", [{"text": "other file"}])  # a name is a file, not a glob pattern
    assert load_text(_jsonl(d / "x[1]*.jsonl", [{"text": "this file"}])) == "this file"


def test_parquet_text_column_skips_empty_values(offline_home):
    path = offline_home / "t.parquet"
    pq.write_table(pa.table({"n": [1, 2, 3, 4], "content": ["a", None, "", "b"]}), path)
    assert load_text(str(path)) == "a\n\nb"


@pytest.mark.parametrize("name, write, message", [
    ("blank.jsonl", lambda p: p.write_text("\n  \n"), "holds no text"),
    ("empty.jsonl", lambda p: p.write_text(""), "holds no text"),
    ("no_rows.parquet", lambda p: pq.write_table(pa.table({"text": pa.array([], pa.string())}), p), "holds no text"),
    ("notext.jsonl", lambda p: p.write_text('{"body": "x"}\n{"body": "y"}\n'), "has no 'text' column (columns: body)"),
    ("notext.parquet", lambda p: pq.write_table(pa.table({"body": ["x"]}), p), "has no 'text' column (columns: body)"),
    ("bad.jsonl", lambda p: p.write_text('{"text": "a"}\n{bad\n'), "give UTF-8 text, JSON lines or parquet"),
    ("bad.parquet", lambda p: p.write_bytes(b"PAR1 not parquet" * 10), "give UTF-8 text, JSON lines or parquet"),
])
def test_bad_files_are_one_line_errors(offline_home, name, write, message):
    path = offline_home / name
    write(path)
    with pytest.raises(ShearHubError) as info:
        load_text(str(path))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_safetensors_header_as_written(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = {"model.layers.0.mlp.up_proj.weight": torch.zeros(6, 4), "scalar": torch.tensor(1.0),
               "model.norm.weight": torch.zeros(4, dtype=torch.bfloat16)}
    save_file(tensors, str(path), metadata={"format": "pt"})
    with path.open("rb") as f:  # the format: 8-byte little-endian length, then the JSON header
        raw = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    header = _safetensors_header(path)
    assert header == raw and list(header) == list(raw)
    info = weights_info(tmp_path)
    assert info.params == 6 * 4 + 4 + 1 and info.layer_linears == {"model.layers.0": [(4, 6)]}
    path.write_bytes(path.read_bytes()[:20])  # cut inside the header
    with pytest.raises(ValueError):
        _safetensors_header(path)
    assert weights_info(tmp_path) is None
