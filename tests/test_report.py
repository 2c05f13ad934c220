"""jaxgan.report: the sample grid's layout and the results page's files, whatever the test images are called."""

from __future__ import annotations

import numpy as np

from jaxgan import report


def _images(n: int, value: float) -> np.ndarray:
    return np.full((n, 8, 8, 3), value, np.float32)


def test_sample_grid_puts_each_column_side_by_side():
    grid = report.sample_grid([_images(2, -1.0), _images(3, 1.0)], gap=2)
    assert grid.shape == (2 * 10 - 2, 2 * 10 - 2, 3)  # as many rows as the shortest column
    assert (grid[:8, :8] == 0).all() and (grid[:8, 10:] == 255).all() and (grid[8:10] == 255).all()


def test_results_page_takes_names_from_other_systems_and_very_long_ones(tmp_path):
    names = ["caf\udce9.jpg", "horse_" + "x" * 240 + ".jpg", "plain.png"]  # Latin-1 bytes unpacked on Linux
    section = {"names": names, "input": _images(3, 0.0), "translated": _images(3, 0.5), "reconstructed": _images(3, 1)}
    index = report.write_results_page(tmp_path / "results", {"A → B": section}, {"FID": "12.3"})
    page = index.read_text(encoding="utf-8")
    assert "caf\ufffd.jpg" in page and "plain.png" in page and "FID" in page
    files = sorted(p.name for p in (tmp_path / "results" / "images").iterdir())
    assert len(files) == 9 and all(len(f.encode()) <= 255 for f in files)
    for f in files:  # every image the page shows exists
        assert f"images/{f}" in page
    assert any(f.startswith("A___B_0001_horse_xxx") and f.endswith("_reconstructed.png") for f in files)
