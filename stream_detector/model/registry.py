"""Registry policy: which versions to keep, which one a rollback goes to, and feature-spec checks.

Pure functions (no Redis): ``ControlPlane`` applies them. Versions are kept by recency; the
active version and the rollback target ("previous") are never deleted, whatever ``keep`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import ModelError
from .bundle import Bundle


def rollback_target(history: Sequence[str], exists: Callable[[str], bool]) -> str | None:
    """The version a rollback activates: the first still-stored entry below the top of the
    activation stack (newest first) that differs from the top."""
    if not history:
        return None
    top = history[0]
    for version in history[1:]:
        if version != top and exists(version):
            return version
    return None


def retention_victims(versions_oldest_first: Sequence[str], keep: int, protected: set[str]) -> list[str]:
    """Versions to delete so that at most ``keep`` remain, never touching ``protected``.

    The newest are kept; protected versions count towards ``keep`` but are kept even when that
    means keeping more than ``keep`` (both protected versions may be old after a rollback).
    """
    if keep < 0:
        raise ValueError("keep must be >= 0")
    n_protected = sum(1 for v in versions_oldest_first if v in protected)
    room = max(0, keep - n_protected)
    unprotected = [v for v in versions_oldest_first if v not in protected]
    survivors = set(unprotected[len(unprotected) - room:]) if room else set()
    return [v for v in unprotected if v not in survivors]


def check_compatible(bundle: Bundle) -> Bundle:
    """Refuse a bundle whose TorchScript head cannot take its own feature matrix.

    ``bundle_from_files`` already verified digests, the spec format and the spec fingerprint;
    here the spec's width must be the model's declared input width. (Warming the scorer then
    runs the head once on a matrix of that width, which catches a head that disagrees.)
    """
    declared = bundle.metadata.get("feature_columns")
    if bundle.spec.width == 0 or (declared is not None and int(declared) != bundle.spec.width):
        raise ModelError(f"model {bundle.version}: feature spec has {bundle.spec.width} columns, "
                         f"model expects {declared}")
    return bundle


def shadow_incompatibility(champion: Bundle, challenger: Bundle) -> str | None:
    """Why ``challenger`` cannot be shadow-scored beside ``champion`` (None when it can): workers
    decode and enrich once, with the champion's field schema and entity state, so the challenger
    must share both (another entity spec would need its own per-entity state)."""
    a, b = champion, challenger
    if (a.schema.fields if a.schema else None) != (b.schema.fields if b.schema else None):
        return "its field schema differs from the active model's"
    if a.entity != b.entity:
        return "its entity spec differs from the active model's (it would need its own entity state)"
    return None
