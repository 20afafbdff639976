"""Compiled kernels' decorator, shared by every layer that has one (``entity/kernel.py``,
``entity/records.py``, ``pipeline/align.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit


def jit(fn: Callable[..., Any]) -> Any:
    """``njit(cache=True)``; plain ``njit`` where numba finds no writable cache location (a
    read-only root filesystem without a writable home, as in deploy/k8s): then the first call
    compiles at start-up in every process (about a second) instead of loading the on-disk cache.
    Set ``NUMBA_CACHE_DIR`` to a writable volume to keep the cache there."""
    try:
        return njit(cache=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(fn)
