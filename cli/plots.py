"""Pictures for `gpt2sql inspect -o FILE`: attention heatmaps and the logit-lens grid.

matplotlib (the 'plot' extra) with its non-interactive Agg canvas, no pyplot (no global state,
no display). Sizes follow the token count n: a figure grows with n up to a limit, then cells
shrink; fonts shrink with n; tick labels are thinned so that they never overlap.
"""

from __future__ import annotations

import functools
import math

from gpt2sql.errors import Gpt2SqlError

MISSING = "drawing a picture needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib)"
FONT = "DejaVu Sans"  # ships with matplotlib, has '␣'
STYLE = {"text.parse_math": False, "font.family": FONT}  # subtle: a token such as '$' must not start mathtext
DPI = 100


def check_output(path: str) -> None:
    """A one-line error, before any work, unless matplotlib is there and can write PATH's format."""
    from pathlib import Path

    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        raise Gpt2SqlError(MISSING) from None
    formats = FigureCanvasAgg.get_supported_filetypes()
    if Path(path).suffix.lstrip(".").lower() not in formats:
        raise Gpt2SqlError(f"cannot tell the picture's format from {path!r}: end it in .png, .svg or .pdf")
    if not Path(path).absolute().parent.is_dir():
        raise Gpt2SqlError(f"cannot write {path!r}: no directory {str(Path(path).absolute().parent)!r}")


@functools.lru_cache(maxsize=1)
def _glyphs() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_manager.findfont(FONT)).get_charmap())


def _drawable(text: str, most: int = 12) -> str:
    """A label (tables.label) with the characters the font lacks (CJK, emoji) as \\uXXXX, cut
    to MOST characters at a whole escape or character, then '…'."""
    from gpt2sql.tables import units

    glyphs = _glyphs()
    parts = [u if len(u) > 1 or ord(u) in glyphs else f"\\u{ord(u):04x}" if ord(u) <= 0xFFFF else f"\\U{ord(u):08x}"
             for u in units(text)]
    if sum(map(len, parts)) <= most:
        return "".join(parts)
    kept, size = [], 0
    for part in parts:
        if size + len(part) > most - 1:
            break
        kept.append(part)
        size += len(part)
    return "".join(kept) + "…"


def _ticks(axis, labels: list[str], inches: float, rotation: int = 0, largest: float = 10) -> None:
    """Label the n ticks of an axis INCHES long: the font as large as the spacing allows (5 to
    LARGEST points), and when even 5 points do not fit, every k-th label, numbered."""
    n = len(labels)
    spacing = inches * 72 / n  # points per tick
    size = max(5.0, min(largest, spacing / 1.4))
    k = max(1, math.ceil(1.4 * size / spacing))
    shown = [labels[i] if k == 1 else f"{labels[i]} {i}" for i in range(0, n, k)]
    axis.set_ticks(range(0, n, k), shown, fontsize=size, rotation=rotation)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str, dpi: float = DPI) -> None:
    try:
        fig.savefig(path, dpi=dpi, **({"pil_kwargs": {"optimize": True}} if path.lower().endswith(".png") else {}))
    except OSError as e:
        raise Gpt2SqlError(f"cannot write {path!r}: {e.strerror or e}") from None


def attention(path: str, weights, labels: list[str], layer: int, heads: list[int], model: str) -> None:
    """weights [len(heads), n, n] of one layer: one heatmap, or a grid of one per head."""
    import numpy as np
    from matplotlib import rc_context

    n = len(labels)
    with rc_context(STYLE):
        labels = [_drawable(t) for t in labels]
        cols = math.ceil(math.sqrt(len(heads)))
        rows = math.ceil(len(heads) / cols)
        side = min(max(0.22 * n, 3.5), 13) if len(heads) == 1 else min(max(0.2 * n, 2.2), 5)  # inches per panel
        fig = _figure(cols * side + 2.6, rows * side + 2.0)
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
        causal = np.tril(np.ones((n, n), dtype=bool))
        for i, ax in enumerate(axes.flat):
            if i >= len(heads):
                ax.set_visible(False)
                continue
            image = ax.imshow(np.ma.masked_where(~causal, weights[i]), cmap="viridis", vmin=0, vmax=1,
                              interpolation="nearest")
            if len(heads) > 1:
                ax.set_title(f"head {heads[i]}", fontsize=10)
            if i % cols == 0:
                _ticks(ax.yaxis, labels, side)
            if i + cols >= len(heads):  # the lowest panel of its column
                _ticks(ax.xaxis, labels, side, rotation=90)
                ax.xaxis.set_tick_params(labelbottom=True)  # (sharex shows labels on the last row only)
        what = f"head {heads[0]}" if len(heads) == 1 else f"all {len(heads)} heads"
        fig.suptitle(f"Attention weights: model {model}, layer {layer}, {what}\n"
                     "row: query (the token attending), column: key (the token attended to)", fontsize=11)
        fig.colorbar(image, ax=axes, shrink=min(1.0, 4 / (rows * side)), label="attention weight")
        _save(fig, path, dpi=min(300, max(DPI, 1.5 * n / side)))  # at least 1.5 pixels a token


def logit_lens(path: str, rows, token_labels: dict[int, str], labels: list[str], n_layer: int, model: str) -> None:
    """rows (layer, pos, rank, token, prob) with rank 1 only: a position x layer grid of the
    top token, coloured by its probability; input tokens on the left, the next ones on the right."""
    import numpy as np
    from matplotlib import colormaps, rc_context

    n = len(labels)
    prob = np.zeros((n, n_layer + 1))
    top = [[""] * (n_layer + 1) for _ in range(n)]
    for layer, pos, _rank, token, p in rows:
        prob[pos, layer], top[pos][layer] = p, token_labels[token]
    with rc_context(STYLE):
        size, cell_h = (8.0, 0.3) if n <= 100 else (6.5, 0.2) if n <= 300 else (5.0, 0.13)  # a row per token
        cell_w = min(max(10 / (n_layer + 1), 0.55), 0.85)
        fig = _figure(max((n_layer + 1) * cell_w + 4.2, 7), n * cell_h + 1.8)
        ax = fig.subplots()
        cmap = colormaps["viridis"]
        image = ax.imshow(prob, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        for pos in range(n):
            for layer in range(n_layer + 1):
                dark = sum(cmap(prob[pos, layer])[:3]) < 1.5
                ax.text(layer, pos, _drawable(top[pos][layer], 10), ha="center", va="center", fontsize=size,
                        color="white" if dark else "black")
        shown = [_drawable(t) for t in labels]
        _ticks(ax.yaxis, [f"{t}  {i}" for i, t in enumerate(shown)], n * cell_h, largest=size + 1)
        ax.set_ylabel("input token (position)")
        after = ax.secondary_yaxis("right")
        _ticks(after.yaxis, shown[1:] + ["(end)"], n * cell_h, largest=size + 1)
        after.set_ylabel("the next input token")
        ax.set_xticks(range(n_layer + 1), ["emb"] + [str(i) for i in range(1, n_layer)] + ["out"], fontsize=size + 1)
        ax.tick_params(axis="x", labeltop=n > 30)
        ax.set_xlabel(f"layer (emb: the embeddings, out: after all {n_layer} blocks, the model's output)")
        ax.set_title(f"Logit lens: model {model}\neach cell: the top token of softmax(ln_f(residual) @ wte)", fontsize=11)
        fig.colorbar(image, ax=ax, shrink=min(1.0, 5 / (n * cell_h)), pad=0.02, label="its probability")
        _save(fig, path)


def loss_curve(path: str, log: list[tuple[int, float, float]], model: str, held_out=None, baselines=None) -> None:
    """A training run's loss per step (gpt2.train_log rows: step, loss, lr), the learning rate
    beneath it; held_out: optional (step, loss) points; baselines: {label: loss} drawn as lines."""
    from matplotlib import rc_context

    check_output(path)
    steps, losses, lrs = zip(*log) if log else ((), (), ())
    with rc_context(STYLE):
        fig = _figure(8, 5)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        top.plot(steps, losses, color="tab:blue", linewidth=1.2, label="training loss (each step's batch)")
        if held_out:
            top.plot(*zip(*held_out), "o-", color="tab:orange", markersize=4, label="held-out loss")
        for (label, value), style in zip((baselines or {}).items(), ("--", ":", "-.")):
            top.axhline(value, color="gray", linestyle=style, linewidth=1, label=label)
        top.set_ylabel("loss (nats per token)")
        top.set_title(f"{model}: training in SQL")
        top.legend(fontsize=8)
        top.grid(alpha=0.3)
        bottom.plot(steps, lrs, color="tab:green", linewidth=1)
        bottom.set_ylabel("learning rate")
        bottom.set_xlabel("step")
        bottom.grid(alpha=0.3)
        _save(fig, path)


def diverging(path: str, values, columns: list[str], rows: list[str], title: str, xlabel: str, ylabel: str,
              label: str, split: int | None = None) -> None:
    """values [rows][columns] (layer x position, layer x head) as interpretability papers draw
    patching and attribution results: a diverging colormap centred on 0 (blue above, red
    below, white at 0), COLUMNS (tokens, heads) along the bottom, ROWS (layers) down the side
    from the top, the values written in the cells while they are big enough to read; split:
    a line after that many columns (columns of another kind before it)."""
    import numpy as np
    from matplotlib import colormaps, rc_context

    values = np.asarray(values, dtype=float)
    n_rows, n_cols = values.shape
    with rc_context(STYLE):
        cell_w = min(max(11 / n_cols, 0.12), 0.7)                       # inches: the grid 11 inches wide at most ...
        cell_h = min(max(6 / n_rows, 0.12), 0.45, cell_w * 1.2)          # ... and 6 high (longer prompts: smaller cells)
        labels = [_drawable(c) for c in columns]
        longest = max((len(t) for t in labels), default=1)
        fig = _figure(max(n_cols * cell_w + 2.6, 6.5), n_rows * cell_h + 2.2 + 0.07 * min(longest, 12))
        ax = fig.subplots()
        bound = float(np.abs(values).max()) or 1.0
        cmap = colormaps["RdBu"]
        image = ax.imshow(values, cmap=cmap, vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
        size = min(9.0, cell_w * 72 / 4.2, cell_h * 72 / 1.6)         # four characters a cell ('-1.2')
        if size >= 5:
            for r in range(n_rows):
                for c in range(n_cols):
                    dark = abs(values[r, c]) > 0.6 * bound
                    ax.text(c, r, f"{values[r, c]:.1f}".replace("-0.0", "0.0"), ha="center", va="center", fontsize=size,
                            color="white" if dark else "black")
        if split:
            ax.axvline(split - 0.5, color="black", linewidth=2)
        _ticks(ax.xaxis, labels, n_cols * cell_w, rotation=90 if longest > 3 else 0)
        _ticks(ax.yaxis, rows, n_rows * cell_h)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, shrink=min(1.0, 4 / (n_rows * cell_h)), pad=0.02, label=label)
        _save(fig, path)
