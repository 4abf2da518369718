"""The screenful `shear-hub prune` prints when it ends, and the held-out perplexity record behind it.

Quality right after pruning is measured on a held-out slice of the calibration text: windows that overlap none of
the calibration windows (``shear_hub.data.split_calibration``), dense model before and pruned model after. It lands
in ``pruning_report.json["evaluation"]["heldout_perplexity"]`` (the card shows it); ``shear-hub eval`` measures
perplexity on a separate text with its own protocol and writes ``evaluation["perplexity"]`` beside it.
"""

from __future__ import annotations

from .report import format_bytes

HELDOUT_KEY = "heldout_perplexity"
HELDOUT_WHAT = "held-out slice of the calibration text"


def heldout_record(data: str, windows: int, seq_len: int, before: float | None, after: float | None,
                   skipped: str | None = None) -> dict:
    """The ``evaluation["heldout_perplexity"]`` entry."""
    record = {"what": HELDOUT_WHAT, "data": data, "windows": windows, "seq_len": seq_len}
    if skipped or before is None or after is None:
        record["skipped"] = skipped or "not measured"
        return record
    record.update({"value": round(after, 4), "base": round(before, 4),
                   "note": "windows overlap none of the calibration windows; a different text and protocol than "
                           "`shear-hub eval` perplexity"})
    return record


def _change(before, after) -> str:
    return f"{100 * (after / before - 1):+.1f}%" if before else ""


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def prune_summary(report: dict, output: str, base: str | None = None) -> list[str]:
    """About ten lines: sizes and held-out perplexity before / after, where the folder is, what to run next."""
    rows: list[tuple[str, str, str, str]] = []
    p0, p1 = report.get("params_before"), report.get("params_after")
    if isinstance(p0, int) and isinstance(p1, int):
        rows.append(("parameters", f"{p0:,}", f"{p1:,}", _change(p0, p1)))
    w0, w1 = report.get("weights_bytes_before"), report.get("weights_bytes_after")
    if isinstance(w0, int) and isinstance(w1, int) and w0 > 0 and w1 > 0:
        d0, d1 = report.get("base_dtype"), report.get("save_dtype")
        label = "weights on disk" + (f" ({d0} -> {d1})" if d0 and d1 and d0 != d1 else f" ({d1})" if d1 else "")
        rows.append((label, format_bytes(w0), format_bytes(w1), _change(w0, w1)))
    held = (report.get("evaluation") or {}).get(HELDOUT_KEY)
    footnote = None
    if isinstance(held, dict) and isinstance(held.get("value"), (int, float)) and isinstance(held.get("base"), (int, float)):
        rows.append(("perplexity *", f"{held['base']:.2f}", f"{held['value']:.2f}", _change(held["base"], held["value"])))
        footnote = (f"* on a {held['what']} ({held['data']}, {held['windows']} x {held['seq_len']} tokens, not used for "
                    "calibration; lower is better)")
    elif isinstance(held, dict) and held.get("skipped"):
        footnote = f"perplexity not measured: {held['skipped']}"
    lines = []
    if rows:
        width = max(len(r[0]) for r in rows)
        cols = [max(len(r[i]) for r in rows + [("", "before", "after", "change")]) for i in (1, 2, 3)]
        lines.append(f"{'':<{width}}  {'before':>{cols[0]}}  {'after':>{cols[1]}}  {'change':>{cols[2]}}")
        lines += [f"{a:<{width}}  {b:>{cols[0]}}  {c:>{cols[1]}}  {d:>{cols[2]}}" for a, b, c, d in rows]
    if footnote:
        lines.append(footnote)
    timings = report.get("timings_s") or {}
    if timings:
        total = sum(v for v in timings.values() if isinstance(v, (int, float)))
        top = sorted(((v, k) for k, v in timings.items() if isinstance(v, (int, float))), reverse=True)[:3]
        lines.append(f"took {_duration(total)} (" + ", ".join(f"{k.replace('_', ' ')} {_duration(v)}" for v, k in top)
                     + ")")
    import shlex

    base = base or report.get("base_model") or "BASE"
    lines.append(f"next: shear-hub eval {shlex.quote(str(output))} --base {shlex.quote(str(base))}  "
                 "(perplexity on a separate text, speed; updates the card)")
    return lines
