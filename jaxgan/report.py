"""Pictures and pages for people: sample grids during training, the results page after it."""

from __future__ import annotations

import html
import pathlib
import shutil
from collections.abc import Mapping, Sequence

import numpy as np

from jaxgan import image_io

GRID_COLUMNS = ("real A", "G(A)", "F(G(A))", "real B", "F(B)", "G(F(B))")


def sample_grid(columns: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Tile ``columns`` (each ``float[N, H, W, 3]`` in [-1, 1]) into ``uint8[N*(H+gap)-gap, C*(W+gap)-gap, 3]``.

    Row i shows example i; the training loop passes
    real A | G(A) | F(G(A)) | real B | F(B) | G(F(B)) (:data:`GRID_COLUMNS`). Columns of
    different lengths give as many rows as the shortest.
    """
    _, h, w, _ = columns[0].shape
    n = min(len(col) for col in columns)
    grid = np.full((n * (h + gap) - gap, len(columns) * (w + gap) - gap, 3), 255, np.uint8)
    for c, col in enumerate(columns):
        tiles = image_io.to_uint8(col)
        for r in range(n):
            grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[r]
    return grid


def write_results_page(
    out_dir: str | pathlib.Path,
    sections: Mapping[str, Mapping[str, object]],
    summary: Mapping[str, str] | None = None,
    title: str = "jaxgan results",
) -> pathlib.Path:
    """Write ``out_dir/index.html`` and its images, as the official results page.

    Args:
      out_dir: results folder (created).
      sections: per direction (e.g. ``"A→B"``) a dict with ``names`` (list of
        str), ``input``, ``translated``, ``reconstructed`` (each
        ``float[N, H, W, 3]`` in [-1, 1]) and optionally ``truth`` (paired ground
        truth) and ``errors`` (per-image strings).
      summary: lines of ``label -> value`` shown at the top (e.g. L1 vs truth).
    Returns:
      The path of ``index.html``.
    """
    out_dir = pathlib.Path(out_dir)
    img_dir = out_dir / "images"
    if img_dir.is_dir():  # a page rewritten for other (or fewer) images keeps none of the old ones
        shutil.rmtree(img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif} td{text-align:center;padding:4px} "
        "img{width:192px;image-rendering:pixelated} table{border-collapse:collapse}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    if summary:
        parts.append("<table border=1>")
        for k, v in summary.items():
            parts.append(f"<tr><th align=left>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>")
        parts.append("</table>")
    for label, sec in sections.items():
        slug = "".join(ch if ch.isalnum() else "_" for ch in label)
        kinds = ["input", "translated", "reconstructed"] + (["truth"] if sec.get("truth") is not None else [])
        parts.append(f"<h2>{html.escape(label)}</h2><table border=1><tr><th>name</th>")
        parts += [f"<th>{k}</th>" for k in kinds]
        parts.append("<th>note</th></tr>" if sec.get("errors") else "</tr>")
        for i, name in enumerate(sec["names"]):
            shown = _printable(str(name))
            stem = pathlib.Path(shown).stem[:MAX_STEM]
            parts.append(f"<tr><td>{html.escape(shown)}</td>")
            for k in kinds:
                file = f"{slug}_{i:04d}_{stem}_{k}.png"
                image_io.save_image(img_dir / file, image_io.to_uint8(sec[k][i]))
                parts.append(f"<td><img src='images/{html.escape(file)}'></td>")
            if sec.get("errors"):
                parts.append(f"<td>{html.escape(str(sec['errors'][i]))}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index


MAX_STEM = 80  # characters of a test image's name kept in its page files' names (a name's limit: 255 bytes)


def _printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (a name from another system) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
