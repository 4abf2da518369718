"""The shipped calibration texts: every built-in text loads by its spec name, the mixed-domain text mixes its
sources, has its provenance recorded, and shares no 20-word passage with the held-out evaluation texts."""

from __future__ import annotations

from importlib import resources

import pytest


def _shingles(text: str, n: int = 20) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_builtin_texts_load_by_name():
    from shear_hub.data import BUILTIN_CALIB, BUILTIN_TEXTS, builtin_calibration_text, load_text
    from shear_hub.errors import ShearHubError

    assert BUILTIN_CALIB in BUILTIN_TEXTS and {"builtin:pydocs", "builtin:mixed"} <= set(BUILTIN_TEXTS)
    for spec in BUILTIN_TEXTS:
        assert load_text(spec) == builtin_calibration_text(spec) and len(load_text(spec).split()) > 40_000
    assert load_text(None) == load_text("builtin") == load_text(BUILTIN_CALIB)
    with pytest.raises(ShearHubError, match="built-in"):
        load_text("builtin:nope")


def test_mixed_calibration_text_is_held_out_from_the_eval_texts():
    from shear_hub.data import builtin_calibration_text
    from shear_hub.evaluation.domains import domain_texts

    mixed = builtin_calibration_text("builtin:mixed")
    assert 300_000 <= len(mixed.encode("utf-8")) <= 600_000
    assert sum(not c.isascii() for c in mixed) < 0.01 * len(mixed)  # English (curly quotes, dashes aside)
    shingles = _shingles(mixed)
    for name, text in domain_texts().items():
        assert not shingles & _shingles(text), f"mixed_calib.txt shares a 20-word passage with {name}"
    # It keeps part of the Python documentation text, but is not mostly that.
    pydocs = _shingles(builtin_calibration_text("builtin:pydocs"))
    share = len(shingles & pydocs) / len(shingles)
    assert 0.1 < share < 0.5, share
    notice = resources.files("shear_hub.resources").joinpath("NOTICE.md").read_text(encoding="utf-8")
    assert "mixed_calib.txt" in notice
