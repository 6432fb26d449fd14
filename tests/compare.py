"""Comparing arrays, llm.c style: say where and by how much."""

from __future__ import annotations

import numpy as np


def assert_close(name, got, want, tol):
    """Fail with the largest |got - want|, where it is, and the first values of both."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    diff = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(diff), diff.shape) if diff.size else ()
    assert diff.max(initial=0) <= tol, (
        f"{name}: max |diff| {diff.max():.3g} > {tol:g} at {worst}: "
        f"got {got[worst]!r}, want {want[worst]!r}\n"
        f"  first values got  {got.ravel()[:4]}\n  first values want {want.ravel()[:4]}")
