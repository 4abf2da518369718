"""Width-per-layer plot for the model card: what fraction of each decoder layer's heads and MLP channels remains."""

from __future__ import annotations

from pathlib import Path


def layer_widths(report: dict) -> list[dict]:
    """Per decoder layer (original numbering): retained fractions of query heads, KV heads and MLP channels.

    A removed layer has every fraction 0. Missing dims (an older or partial report) count as unchanged.
    """
    before = report.get("dims_before", {}).get("layers") or []
    after_dims = report.get("dims_after", {}) or {}
    after = list(after_dims.get("layers") or [])
    removed = set(after_dims.get("removed_layers") or [])
    # dims_after lists surviving layers only when layers were dropped; map them back to original indices
    # (original_layer_index when the report has it, else the gaps left by removed_layers).
    index = after_dims.get("original_layer_index")
    if isinstance(index, list) and len(index) == len(after) and all(isinstance(i, int) for i in index):
        by_index = dict(zip(index, after))
        after = [by_index.get(i) for i in range(len(before))]
        removed |= {i for i in range(len(before)) if i not in by_index}
    elif removed and len(after) == len(before) - len(removed):
        it = iter(after)
        after = [None if i in removed else next(it) for i in range(len(before))]
    rows = []
    for i, b in enumerate(before):
        a = after[i] if i < len(after) else b
        if i in removed or a is None:
            rows.append({"layer": i, "removed": True, "heads": 0.0, "kv_heads": 0.0, "mlp": 0.0})
            continue

        def frac(key: str) -> float:
            den = b.get(key) or 0
            return float(a.get(key, den)) / den if den else 1.0

        rows.append({"layer": i, "removed": False, "heads": frac("num_attention_heads"),
                     "kv_heads": frac("num_key_value_heads"), "mlp": frac("intermediate_size")})
    return rows


def plot_width_per_layer(report: dict, out_path: str | Path) -> Path:
    """Write a grouped bar chart (PNG) of retained width per layer. Uses the Agg canvas directly: no pyplot
    global state, no display needed, safe in threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = layer_widths(report)
    n = max(len(rows), 1)
    fig = Figure(figsize=(min(max(6.0, 0.32 * n + 2.0), 16.0), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [r["layer"] for r in rows]
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [100 * r["heads"] for r in rows], width, label="attention heads",
           color="#4C72B0")
    ax.bar([x + width / 2 for x in xs], [100 * r["mlp"] for r in rows], width, label="MLP channels", color="#DD8452")
    for r in rows:
        if r["removed"]:
            ax.text(r["layer"], 4, "removed", rotation=90, ha="center", va="bottom", fontsize=7, color="#C44E52")
    hidden_b = report.get("dims_before", {}).get("hidden_size")
    hidden_a = (report.get("dims_after") or {}).get("hidden_size", hidden_b)
    title = "Retained width per decoder layer"
    if hidden_b and hidden_a and hidden_a != hidden_b:
        title += f" (hidden size {hidden_b} -> {hidden_a})"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("% of base kept")
    ax.set_ylim(0, 122)  # headroom for the legend above the 100% bars
    ax.set_yticks([0, 25, 50, 75, 100])
    ax.set_xlim(-0.7, n - 0.3)
    if n <= 40:
        ax.set_xticks(xs)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=2, frameon=False)
    fig.tight_layout()
    out = Path(out_path)
    # No date/software metadata: the same report gives the same bytes, so re-pushing uploads nothing new.
    fig.savefig(out, format="png", metadata={"Software": None})
    return out
