"""A model bundle: TorchScript scoring head + feature spec + calibration + metadata, checksummed.

On disk a bundle is a directory of four files, plus the optional ``schema.json`` (the field
schema: how each input field is typed, ``fieldschema.py``) and ``entity.json`` (an entity spec);
optional so older bundles stay loadable (a bundle without a schema types nothing: as before).
``metadata.json`` lists the sha256 of the others and an overall ``sha256`` (of the sorted
per-file digests); the model version is derived from creation time and that digest, so equal
content never hides behind one name. Loading verifies every digest, so a truncated or edited
file is refused (``ModelError``) and never scored.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .. import __version__
from ..entity_spec import EntitySpec
from ..errors import ModelError
from ..features import FeatureSpec
from ..fieldschema import FieldSchema
from ..settings import DEVICE_NAME

if TYPE_CHECKING:  # torch is imported where a module is loaded or built: the registry and threshold
    import torch  # commands and the console read bundles' metadata without it (3.5 s of a CLI call)

MODEL_FILE = "model.pt"
SPEC_FILE = "spec.json"
CALIBRATION_FILE = "calibration.json"
# calibration.json's per-column mean and median over the validation rows (model.train.typical_columns), from which
# pipeline.score.typical_row makes the typical values an alert's why gives its fields
COLUMN_MEANS, COLUMN_MEDIANS = "column_means", "column_medians"
METADATA_FILE = "metadata.json"
ENTITY_FILE = "entity.json"
SCHEMA_FILE = "schema.json"
CONTENT_FILES = (MODEL_FILE, SPEC_FILE, CALIBRATION_FILE)
OPTIONAL_FILES = (ENTITY_FILE, SCHEMA_FILE)  # checksummed like the others when present


@contextmanager
def _torchscript() -> Iterator[None]:
    """TorchScript is deprecated upstream in favour of torch.export, but it is the deployable,
    Python-free format this project promises; silence only those deprecation notices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit.*")
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        yield


@dataclass(frozen=True)
class Bundle:
    """A verified bundle in memory: raw file bytes plus parsed spec, calibration and metadata."""

    files: dict[str, bytes]
    spec: FeatureSpec
    calibration: dict[str, Any]
    metadata: dict[str, Any]
    entity: EntitySpec | None = None  # step 3a: per-entity features; None = none (older bundles)
    schema: FieldSchema | None = None  # step 2: how input fields are typed; None = untyped (older bundles)

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def threshold(self) -> float:
        return float(self.calibration["threshold"])

    @property
    def sha256(self) -> str:
        return str(self.metadata["sha256"])

    @property
    def supervised(self) -> dict[str, Any] | None:
        """The supervised head's calibration entry (``model/supervised.py``), or None: the module
        then returns only the per-feature errors (n × d), else (n × (d + 1)), probability last."""
        entry = self.calibration.get("supervised")
        return entry if isinstance(entry, dict) else None

    @property
    def head_threshold(self) -> float | None:
        """The supervised head's calibrated probability threshold (None without a head)."""
        entry = self.supervised
        return None if entry is None else float(entry["threshold"])

    def load_module(self, device: str = "cpu", frozen: bool = True) -> torch.jit.ScriptModule:
        """Deserialize the TorchScript head onto ``device``, eval mode, frozen for inference
        (``frozen=False`` keeps the submodules and their methods, e.g. for gradients)."""
        import torch

        with _torchscript():
            module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
                io.BytesIO(self.files[MODEL_FILE]), map_location=device)
            module.eval()
            return torch.jit.freeze(module) if frozen else module


def watched_fields(bundle: Bundle) -> tuple[str, ...]:
    """The input fields a model reads that events must carry (the worker's ``AbsentFields`` watches
    them, the retrainer counts its training events lacking them) for ``bundle``: ``FieldSchema.input_fields`` but
    those training saw missing — the numeric features trained with a missing indicator, and the
    category fields without an imputed value in a spec that records it (``CategoricalColumn``:
    ``impute`` None beside an ``other_share``; an older spec does not say, so its category fields
    are watched), and ``timestamp`` for a model with entity features."""
    if bundle.schema is None:
        return ()
    seen_missing = {num.name for num in bundle.spec.numeric if num.missing_indicator}
    seen_missing |= {cat.name for cat in bundle.spec.categorical
                     if cat.impute is None and cat.other_share is not None and cat.categories}
    fields = [name for name in bundle.schema.input_fields if name not in seen_missing]
    if bundle.entity is not None and "timestamp" not in fields:
        # the history windows run on event time: without it every event is taken at its entity's last
        # time (a trial: events whose time was TX_DATETIME alerted 90 % in the worker, nothing said)
        fields.append("timestamp")
    return tuple(fields)


def device_problem(device: str) -> str | None:
    """Why a model cannot be loaded onto torch ``device`` here (one line), or None: a name other
    than cpu, cuda or cuda:N (``settings.DEVICE_NAME``; torch's ``cpu:N`` too: torch ignores a CPU
    index), or a CUDA device this machine's torch does not see. A trial: `score --device tpu` failed
    after reading the whole file and `--device cuda` on a CPU machine deserialising the model, both
    with torch's RuntimeError and exit 1."""
    import re

    if not re.fullmatch(DEVICE_NAME, device):
        return "expected cpu, cpu:N, cuda or cuda:N"
    if device.startswith("cpu"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device on this machine (use cpu)"
    index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        return f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    return None


def _digest(files: dict[str, bytes], listed: dict[str, str] | None = None) -> dict[str, str]:
    """Digests of the content files, plus each optional file that is present or that the
    metadata lists (so removing ``entity.json`` from a bundle that had one is a mismatch)."""
    names = [*CONTENT_FILES, *(n for n in OPTIONAL_FILES if n in files or n in (listed or {}))]
    return {name: hashlib.sha256(files[name]).hexdigest() if name in files else "missing" for name in names}


def _overall(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{n}:{digests[n]}\n" for n in sorted(digests)).encode()).hexdigest()


class _Architecture(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class Trained(Protocol):
    """What ``build_bundle`` needs of a training result (``model.train.TrainResult`` is one); a
    Protocol so that loading a bundle never imports the training code."""

    @property
    def spec(self) -> FeatureSpec: ...
    @property
    def head(self) -> torch.nn.Module: ...
    @property
    def arch(self) -> _Architecture: ...
    @property
    def calibration(self) -> dict[str, Any]: ...
    @property
    def metrics(self) -> dict[str, Any]: ...
    @property
    def entity(self) -> EntitySpec | None: ...
    @property
    def schema(self) -> FieldSchema | None: ...


def build_bundle(result: Trained, extra_metadata: dict[str, Any] | None = None) -> Bundle:
    """Serialize a training result into a bundle (TorchScript export happens here)."""
    import torch

    buf = io.BytesIO()
    with _torchscript():
        torch.jit.save(torch.jit.script(result.head.cpu().eval()), buf)
    files = {
        MODEL_FILE: buf.getvalue(),
        SPEC_FILE: result.spec.to_json(),
        CALIBRATION_FILE: orjson.dumps(result.calibration, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
    }
    if result.entity is not None:
        files[ENTITY_FILE] = result.entity.to_json()
    if result.schema is not None:
        files[SCHEMA_FILE] = result.schema.to_json()
    digests = _digest(files)
    sha = _overall(digests)
    created = datetime.now(timezone.utc)
    metadata = {
        "version": f"{created:%Y%m%dT%H%M%S}Z-{sha[:8]}",
        "created_at": created.isoformat(timespec="seconds"),
        "sha256": sha,
        "files": digests,
        "spec_fingerprint": result.spec.fingerprint,
        "feature_columns": result.spec.width,
        **({"entity_fingerprint": result.entity.fingerprint} if result.entity is not None else {}),
        **({"schema_fingerprint": result.schema.fingerprint} if result.schema is not None else {}),
        "architecture": result.arch.to_dict(),
        "metrics": result.metrics,
        "stream_detector_version": __version__,
        "torch_version": torch.__version__,
        **(extra_metadata or {}),
    }
    files[METADATA_FILE] = orjson.dumps(metadata, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return Bundle(files, result.spec, result.calibration, metadata, result.entity,
                  _reading(result.schema, result.spec, result.entity))


def bundle_from_files(files: dict[str, bytes]) -> Bundle:
    """Verify digests and parse; raises ``ModelError`` on anything missing or altered."""
    missing = [n for n in (*CONTENT_FILES, METADATA_FILE) if n not in files]
    if missing:
        raise ModelError(f"bundle is missing {', '.join(missing)}")
    try:
        metadata = orjson.loads(files[METADATA_FILE])
        digests = _digest(files, metadata["files"])
        if digests != metadata["files"] or _overall(digests) != metadata["sha256"]:
            bad = [n for n in digests if digests[n] != metadata["files"].get(n)]
            raise ModelError(f"bundle {metadata.get('version')}: sha256 mismatch in {', '.join(bad) or 'metadata'}")
        spec = FeatureSpec.from_json(files[SPEC_FILE])
        calibration = orjson.loads(files[CALIBRATION_FILE])
        entity = EntitySpec.from_json(files[ENTITY_FILE]) if ENTITY_FILE in files else None
        schema = FieldSchema.from_json(files[SCHEMA_FILE]) if SCHEMA_FILE in files else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"bundle is not readable: {exc}") from exc
    if spec.fingerprint != metadata.get("spec_fingerprint"):
        raise ModelError("bundle feature spec does not match its metadata fingerprint")
    if entity is not None and entity.fingerprint != metadata.get("entity_fingerprint"):
        raise ModelError("bundle entity spec does not match its metadata fingerprint")
    if schema is not None and schema.fingerprint != metadata.get("schema_fingerprint"):
        raise ModelError("bundle field schema does not match its metadata fingerprint")
    return Bundle(files, spec, calibration, metadata, entity, _reading(schema, spec, entity))


def _reading(schema: FieldSchema | None, spec: FeatureSpec, entity: EntitySpec | None) -> FieldSchema | None:
    """``schema`` with the model's input fields (``FieldSchema.input_fields``: an event with a value
    in none of them is ``no_features``): the fields its features are computed from — the spec's
    numeric and categorical fields (a field training dropped, having no value in it, is none), less
    the entity and label features the product computes, plus the entity spec's keys, amount and
    distinct fields. Derived here, not stored: every bundle, older ones too, gets them alike."""
    if schema is None:
        return None
    computed = set(entity.all_fields) if entity is not None else set()
    names = {name for name in [*(c.name for c in spec.numeric), *(c.name for c in spec.categorical)]
             if name not in computed}
    names.update(entity.input_fields if entity is not None else ())
    in_order = [rule.name for rule in schema.fields if rule.name in names]  # the schema's order, for messages
    return schema.reading([*in_order, *sorted(names - set(in_order))])


def save_bundle(bundle: Bundle, directory: Path) -> Path:
    """Write the bundle files; metadata last, so a half-written directory never verifies. Into the
    folder of an earlier bundle, the optional files this one has not (``entity.json`` of a model
    with entity features) are removed first: left there, the folder failed to load ("sha256
    mismatch in entity.json", a new-user trial retraining into the same ``--out``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in OPTIONAL_FILES:
        if name not in bundle.files:
            (directory / name).unlink(missing_ok=True)
    for name in (*CONTENT_FILES, *(n for n in OPTIONAL_FILES if n in bundle.files), METADATA_FILE):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(bundle.files[name])
        tmp.replace(directory / name)
    return directory


def load_bundle(directory: Path) -> Bundle:
    """The bundle ``train`` wrote to ``directory``, verified (``bundle_from_files``); raises
    ``ModelError`` naming the directory when it is none, or lacks or alters a file."""
    if not directory.is_dir():
        raise ModelError(f"no model bundle at {directory}")
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")}
    try:
        return bundle_from_files(files)
    except ModelError as exc:  # a trial: `publish /tmp` said "bundle is missing model.pt, …", naming no folder
        if str(directory) in str(exc):
            raise
        raise ModelError(f"{directory}: {exc}") from exc
