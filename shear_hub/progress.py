"""What a run shows while it works: one progress bar per stage of shear-hub's own work, library bars kept quiet.

transformers draws its own bars ("Loading weights", "Writing model shards", the GGUF dequantization), one or more
per load and save; ``library_progress(False)`` silences them for the duration of a job (the CLI keeps them only with
``--debug``), and the stage bars of ``stage()`` say what shear-hub itself is doing and for how long.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

from tqdm.auto import tqdm

# A stage bar is drawn only after this long, so that input the loader rejects at once prints only its error line.
STAGE_BAR_DELAY_S = 1.0
BAR_FORMAT = "{desc:<32} {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"


def bar(desc: str, total: int, *, enabled: bool = True, leave: bool = True, unit: str = "it",
        delay: float = 0.0) -> tqdm:
    """A shear-hub progress bar (stderr); ``leave=False`` for the inner loops of a stage (they vanish when done);
    ``delay``: seconds before it is first drawn."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=leave, unit=unit, bar_format=BAR_FORMAT,
                dynamic_ncols=True, delay=delay)


@contextlib.contextmanager
def stage(desc: str, *, enabled: bool = True, total: int = 1, timings: dict | None = None,
          key: str | None = None) -> Iterator[tqdm]:
    """One bar for one stage: advanced by the caller (``total`` steps) or completed when the block ends; the block's
    wall time goes to ``timings[key]``. A stage that raises before its bar was drawn prints nothing."""
    t = time.perf_counter()
    b = bar(desc, total, enabled=enabled, delay=STAGE_BAR_DELAY_S)  # drawn once the stage has run this long

    done = False
    try:
        yield b
        if b.n < total:
            b.update(total - b.n)
        done = True
    finally:
        if done:
            b.delay = 0  # a stage that ended before its bar was drawn still reports that it ran
        else:
            b.leave = False  # a failed stage leaves no bar: the error stays the only line
        b.close()
        if timings is not None and key is not None:
            timings[key] = time.perf_counter() - t


def write(message: str) -> None:
    """A log line on stderr that does not tear an open progress bar."""
    import sys

    tqdm.write(message, file=sys.stderr)


def route_gguf_progress() -> None:
    """transformers' GGUF loader draws its dequantization bar with plain tqdm; point it at transformers' own tqdm so
    that it obeys ``transformers.utils.logging.disable_progress_bar()`` like the loading and saving bars."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
        from transformers.utils import logging as tf_logging
    except Exception:  # an older or newer layout: the bar simply stays
        return
    if hasattr(gguf_utils, "tqdm") and gguf_utils.tqdm is not tf_logging.tqdm:
        gguf_utils.tqdm = tf_logging.tqdm


@contextlib.contextmanager
def library_progress(enabled: bool) -> Iterator[None]:
    """With ``enabled=False``, transformers' and huggingface_hub's progress bars are off inside the block and put back
    as they were afterwards."""
    if enabled:
        yield
        return
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as tf_logging

    transformers_was = tf_logging.is_progress_bar_enabled()
    hub_was = not hub_utils.are_progress_bars_disabled()
    with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=0 makes huggingface_hub warn and keep its bars
        warnings.simplefilter("ignore")
        tf_logging.disable_progress_bar()  # also huggingface_hub's
        route_gguf_progress()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if transformers_was:
                tf_logging.enable_progress_bar()  # also enables huggingface_hub's: set below as it was
            if hub_was and hub_utils.are_progress_bars_disabled():
                hub_utils.enable_progress_bars()
            elif not hub_was and not hub_utils.are_progress_bars_disabled():
                hub_utils.disable_progress_bars()


@contextlib.contextmanager
def hub_download_progress(enabled: bool) -> Iterator[None]:
    """Inside ``library_progress(False)``: let huggingface_hub show its download bars again (fetching a Hub model can
    take minutes, and those bars are its only progress); no-op when the user's environment turned them off."""
    import os

    if not enabled or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None:
        yield
        return
    import huggingface_hub.utils as hub_utils

    was_disabled = hub_utils.are_progress_bars_disabled()
    if was_disabled:
        hub_utils.enable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            hub_utils.disable_progress_bars()


def quiet_library_bars(func):
    """Decorator: run ``func`` with library progress bars off unless it is called with ``library_bars=True``."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with library_progress(bool(kwargs.get("library_bars", False))):
            return func(*args, **kwargs)

    return wrapper
