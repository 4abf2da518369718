"""Text sources for calibration, recovery and evaluation, and their tokenized windows."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .errors import ShearHubError

# The default calibration text: four genres mixed, because pruning calibrated on one domain (Python docs) tripled
# held-out perplexity on others while this one kept them near 2x (benchmarks/README.md, "Calibration text").
BUILTIN_CALIB = "builtin:mixed"
# Texts shipped in shear_hub/resources (sources and licenses in its NOTICE.md), by spec name.
BUILTIN_TEXTS = {"builtin:pydocs": "pydocs_calib.txt", "builtin:mixed": "mixed_calib.txt"}


def builtin_calibration_text(spec: str = BUILTIN_CALIB) -> str:
    """A shipped text: the default calibration text, or another one named in BUILTIN_TEXTS."""
    if spec not in BUILTIN_TEXTS:
        raise ShearHubError(f"no built-in text {spec}; built-in texts: {', '.join(BUILTIN_TEXTS)}")
    return resources.files("shear_hub.resources").joinpath(BUILTIN_TEXTS[spec]).read_text(encoding="utf-8")


def load_text(spec: str | None) -> str:
    """Text of a source: None / 'builtin' (the default shipped text, BUILTIN_CALIB), 'builtin:pydocs' /
    'builtin:mixed' (shipped), a .txt/.jsonl/.parquet file, or a Hub dataset ``name[:config[:split]]`` loaded with
    ``datasets``."""
    if spec in (None, "", "builtin"):
        return builtin_calibration_text()
    if str(spec).startswith("builtin:"):
        return builtin_calibration_text(spec)
    path = Path(spec).expanduser()
    if path.suffix in (".txt", ".jsonl", ".json", ".parquet") or path.exists():
        if not path.is_file():
            raise ShearHubError(f"data file {spec} not found; give an existing .txt/.jsonl/.parquet file or a Hub dataset id")
        text = _read_file(path)
    else:
        text = _read_hub_dataset(spec)
    if not text.strip():
        raise ShearHubError(f"data source {spec} holds no text; give a file or dataset with a 'text' column")
    return text


def _read_file(path: Path) -> str:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            if pq.read_metadata(path).num_rows == 0:
                return ""  # no rows (datasets refuses an empty split)
            table = _read_table("parquet", path)
            return "\n\n".join(str(t) for t in table[_text_column(table.column_names, path)] if t)
        if path.suffix in (".jsonl", ".json"):
            if _blank(path):
                return ""  # no rows (datasets refuses an empty split)
            return "\n\n".join(_row_text(row, path) for row in _read_table("json", path).to_list())
        return path.read_text(encoding="utf-8")
    except ShearHubError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ShearHubError(f"cannot read data file {path} ({exc}); give UTF-8 text, JSON lines or parquet") from exc
    except Exception as exc:  # other reader errors (pyarrow, datasets)
        raise ShearHubError(f"cannot read data file {path} ({exc}); is it a valid file of that type?") from exc


def _blank(path: Path) -> bool:
    """Nothing but white space in the file (read until the first other byte)."""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.strip():
                return False
    return True


def _read_table(kind: str, path: Path):
    """The rows of a local JSON-lines / parquet file as a ``datasets.Dataset`` held in memory. The builder's cache is
    a throwaway folder (nothing is left in the user's cache), nothing is fetched from the Hub, and its progress bars
    and log lines stay off; a reader's error is raised as itself (ValueError for bad JSON or parquet)."""
    import glob
    import logging
    import tempfile

    import datasets
    from datasets.exceptions import DatasetGenerationError

    bars, logger = datasets.is_progress_bar_enabled(), logging.getLogger("datasets")
    level = logger.level
    datasets.disable_progress_bars()
    logger.setLevel(logging.CRITICAL)
    try:
        with tempfile.TemporaryDirectory(prefix="shear-hub-data-") as cache:
            # data_files is a glob pattern: escaped, a name with [ ] * ? is this one file
            return datasets.load_dataset(kind, data_files=glob.escape(str(path.absolute())), split="train",
                                         cache_dir=cache, keep_in_memory=True)
    except DatasetGenerationError as exc:
        raise (exc.__cause__ or exc) from None
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _text_column(columns: list[str], where: object) -> str:
    for name in ("text", "content", "document", "instruction"):
        if name in columns:
            return name
    raise ShearHubError(f"{where} has no 'text' column (columns: {', '.join(columns)}); add one or pick another source")


def _row_text(row: dict, where: Path) -> str:
    """A JSON line's text: the first of the text columns that the line has (a key it lacks reads as None)."""
    return str(row[_text_column([key for key, value in row.items() if value is not None], where)])


def _read_hub_dataset(spec: str) -> str:
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ShearHubError(f"bad data spec {spec!r}; use a file path or name[:config[:split]]")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), (parts[2] if len(parts) > 2 else "train")
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise ShearHubError(f"could not load dataset {spec!r} ({' '.join(str(exc).split())[:200]}); check the name, network or use a local file") from exc
    return "\n\n".join(str(t) for t in ds[_text_column(ds.column_names, spec)] if t)


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """One long stream of token ids (no special tokens: windows are cut from the middle of text)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(tokens: torch.Tensor, n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens at random offsets of the stream ``tokens`` (longer than ``seq_len``)."""
    starts = torch.randint(0, tokens.numel() - seq_len, (n,), generator=generator)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])


def random_windows(tokens: torch.Tensor, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens at random offsets (fixed by ``seed``)."""
    if tokens.numel() < seq_len + 1:
        raise ShearHubError(f"calibration text has {tokens.numel()} tokens, fewer than --seq-len {seq_len}; give more text or a smaller --seq-len")
    return sample_windows(tokens, n, seq_len, torch.Generator().manual_seed(seed))


def sequential_windows(tokens: torch.Tensor, n: int | None, seq_len: int) -> torch.Tensor:
    """Consecutive non-overlapping windows from the start (the evaluation protocol)."""
    available = tokens.numel() // seq_len
    if available == 0:
        raise ShearHubError(f"evaluation text has {tokens.numel()} tokens, fewer than --seq-len {seq_len}")
    count = available if n is None else min(n, available)
    return tokens[: count * seq_len].view(count, seq_len)


def calibration_batches(tokenizer, spec: str | None, samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    return random_windows(tokenize_text(tokenizer, load_text(spec)), samples, seq_len, seed)


def random_window_starts(num_tokens: int, n: int, seq_len: int, seed: int) -> list[int]:
    """The offsets ``random_windows`` cuts its windows at (the same generator draws)."""
    if num_tokens < seq_len + 1:
        raise ShearHubError(f"calibration text has {num_tokens} tokens, fewer than --seq-len {seq_len}; give more text or a smaller --seq-len")
    return torch.randint(0, num_tokens - seq_len, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def held_out_windows(tokens: torch.Tensor, n: int, seq_len: int,
                     exclude: list[tuple[int, int]] = ()) -> tuple[torch.Tensor, list[int]]:
    """Up to ``n`` windows of ``seq_len`` tokens of the stream ``tokens`` that overlap none of the ``exclude`` token
    ranges ``[start, end)``, spread evenly over the stream; returns (windows [k, seq_len], their starts), k <= n.

    Each gap between excluded ranges is cut into whole windows from its start; when more than ``n`` fit, ``n`` are
    taken at evenly spaced ranks, so the held-out text samples the whole source, not one end of it."""
    total = tokens.numel()
    free = torch.ones(total, dtype=torch.bool)
    for start, end in exclude:
        free[max(0, start) : max(0, end)] = False
    candidates: list[int] = []
    if n > 0 and seq_len > 0 and total >= seq_len:
        edges = torch.diff(free.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8),
                           append=torch.zeros(1, dtype=torch.int8))
        run_starts = torch.nonzero(edges == 1).flatten().tolist()
        run_ends = torch.nonzero(edges == -1).flatten().tolist()
        for a, b in zip(run_starts, run_ends):
            candidates.extend(range(a, b - seq_len + 1, seq_len))
    if len(candidates) > n:
        picks = torch.linspace(0, len(candidates) - 1, n).round().long().unique().tolist()
        candidates = [candidates[i] for i in picks]
    if not candidates:
        return torch.zeros(0, max(seq_len, 0), dtype=tokens.dtype), []
    return torch.stack([tokens[s : s + seq_len] for s in candidates]), candidates


def split_calibration(tokens: torch.Tensor, samples: int, seq_len: int, seed: int, held_windows: int,
                      held_len: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, list[int]]:
    """Calibration windows, the stream methods may sample more windows from, and held-out evaluation windows.

    Returns (calibration, stream, held_out, held_out_starts): ``calibration`` is exactly ``random_windows(tokens,
    samples, seq_len, seed)`` (None when ``samples`` is 0); ``held_out`` holds up to ``held_windows`` windows of
    ``held_len`` tokens that overlap no calibration window; ``stream`` is ``tokens`` with the held-out windows cut
    out, so a method that trains on fresh windows of the text never sees them either."""
    calibration, exclude = None, []
    if samples > 0:
        starts = random_window_starts(tokens.numel(), samples, seq_len, seed)
        calibration = torch.stack([tokens[s : s + seq_len] for s in starts])
        exclude = [(s, s + seq_len) for s in starts]
    held, held_starts = held_out_windows(tokens, held_windows, held_len, exclude)
    stream = tokens
    if held_starts:
        keep = torch.ones(tokens.numel(), dtype=torch.bool)
        for s in held_starts:
            keep[s : s + held_len] = False
        stream = tokens[keep]
    return calibration, stream, held, held_starts
