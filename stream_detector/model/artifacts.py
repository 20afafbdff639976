"""Where model bundle bytes live: Redis (default, small models) or a directory (large models).

The registry index (versions, active pointer, thresholds, gate records) always lives in Redis;
only the bundle's bytes are pluggable. Every version's Redis hash ``{p}:model:{version}`` holds
``metadata.json`` (the digests are the authority), plus either the three content files (Redis
store) or a ``_location`` field naming the directory that holds them (directory store). Readers
therefore need no configuration: they follow the recorded location, which must be the same path
on every pod (a shared volume mounted identically).

Writers store the artifact first and flip the active pointer last (``ControlPlane.publish``), so
a reader never sees a pointer to bytes that are not there yet.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from ..errors import ModelError
from .bundle import CONTENT_FILES, METADATA_FILE, OPTIONAL_FILES, Bundle, save_bundle

LOCATION_FIELD = "_location"


class ArtifactStore(Protocol):
    """Writes a bundle's bytes; returns the fields to put in the version's Redis hash."""

    kind: str

    def put(self, bundle: Bundle) -> dict[str, bytes]: ...


class RedisArtifacts:
    """All files inside the version's Redis hash (the original layout)."""

    kind = "redis"

    def put(self, bundle: Bundle) -> dict[str, bytes]:
        return dict(bundle.files)


class DirArtifacts:
    """Files under ``root/{version}/`` (written through a temp dir, renamed into place)."""

    kind = "dir"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def put(self, bundle: Bundle) -> dict[str, bytes]:
        target = self.root / bundle.version
        if not target.is_dir():
            tmp = self.root / f".{bundle.version}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_bundle(bundle, tmp)
            tmp.replace(target)
        return {METADATA_FILE: bundle.files[METADATA_FILE], LOCATION_FIELD: str(target).encode()}


def delete_artifact(version: str, fields: dict[str, bytes]) -> None:
    """Remove bytes stored outside Redis (a directory named after the version), if any."""
    location = fields.get(LOCATION_FIELD)
    if location is not None and Path(location.decode()).name == version:
        shutil.rmtree(location.decode(), ignore_errors=True)


def resolve_files(fields: dict[str, bytes]) -> dict[str, bytes]:
    """The bundle files of a version hash: inline, or read from its recorded directory.

    ``metadata.json`` always comes from Redis, so editing the directory copy cannot make
    tampered content files verify.
    """
    location = fields.get(LOCATION_FIELD)
    if location is None:
        return fields
    directory = Path(location.decode())
    try:
        files = {name: (directory / name).read_bytes() for name in CONTENT_FILES}
        files.update({name: (directory / name).read_bytes() for name in OPTIONAL_FILES
                      if (directory / name).is_file()})
    except OSError as exc:
        raise ModelError(f"model artifact at {directory} is not readable: {exc}") from exc
    files[METADATA_FILE] = fields[METADATA_FILE]
    return files
