"""``score`` on a big input: chunk by chunk, bounded memory, the same output as the in-memory ``score``.

Each chunk is read and typed with the bundle's schema (``big/source.py``), scored by
``offline.OfflineScorer`` (the worker's steps 2-4; entity state carried from chunk to chunk, so
the scores equal those of the whole file at once) and its lines written before the next chunk
is read. What grows with the input is the entity state only (one entry per entity, not per row).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..entity.columns import unsorted_error, unsorted_warning
from ..errors import ConfigError, InputError
from ..events_io import ReaderOptions, ScoresCsv
from ..inputs import FIELDS_AT, DriftCounts, absent_warnings, did_you_mean, file_warnings
from ..model.bundle import Bundle
from ..offline import OfflineScorer, OfflineScores
from .prepare import Say, known_rows
from .source import DEFAULT_CHUNK_ROWS, GeneratedIds, RawChunk, prepare_chunk, raw_chunks, type_prepared


@dataclass
class StreamedScores:
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    flagged: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)  # rejected rows per reason
    first_problem: tuple[str, str, str | None] | None = None  # ("<file name> row N", reason, message)
    # with a label column: every scored row's score, probability (a supervised head) and label text ("" none),
    # in input order, for the in-memory ``score``'s evaluation (about 16 bytes a scored row)
    labelled: OfflineScores | None = None
    labels: list[str] = field(default_factory=list)


def score_stream(bundle: Bundle, files: Sequence[Path], out: Path, *, reader: ReaderOptions | None = None,
                 threshold: float | None = None, device: str = "cpu", id_column: str | None = None,
                 label_column: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 say: Say = lambda _m: None, redacted: Container[str] = (), file_order: bool = False) -> StreamedScores:
    """Score every row of ``files`` into the CSV ``out`` (``events_io.write_scores``'s columns, one
    line per input row in input order). ``threshold``: the bundle's unless given. The lines go to a
    hidden file beside ``out``, renamed to ``out`` only when every row is written. ``say`` gets the
    in-memory ``score``'s warnings, from the first chunk (``redacted``: fields whose values they never
    show).

    With ``label_column``, the scored rows' scores and labels are kept (``StreamedScores.labelled``,
    ``labels``) for the caller to evaluate, as the in-memory ``score`` does.

    Raises ``InputError`` for an input that cannot be read (a bad row is that row's line, never an error),
    and for a ``label_column`` no row has (no file is written then). A model with history: rows late
    within their entities (the kernel's flags, as the in-memory ``score`` counts them) over
    ``LATE_SHARE_REFUSED`` of the scored rows raise ``ConfigError`` before ``out`` is written, unless
    ``file_order`` or ``out`` is written as it goes (standard output: then warned). A trial: a
    directory whose files sort in the wrong order, and a shuffled file, were scored (90 % flagged).
    """
    scorer = OfflineScorer(bundle, device)
    limit = bundle.threshold if threshold is None else threshold
    head = bundle.head_threshold
    done = StreamedScores()
    started = last = time.monotonic()
    files_ids = GeneratedIds(id_column, reader, chunk_rows)
    warned = labelled = False
    names: set[str] = set()  # the first chunk's column names (a misspelt --label-column's hint)
    total = known_rows(files)
    hashes: list[np.ndarray] = []  # of every event id, for the repeated-ids warning (8 bytes a row)
    sample = DriftCounts.of(bundle.spec, bundle.schema)  # DRIFT_SAMPLE valid rows of every chunk: late_warnings
    said = (False, False)  # the first chunk's missing-value and new-value warnings
    chunks = 0
    kept_scores: list[np.ndarray] = []
    kept_probability: list[np.ndarray] = []
    target, atomic = written_as(out)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}") if atomic else target  # renamed once complete
    try:
        handle = partial.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror}") from None
    try:
        writer = ScoresCsv(handle, bundle.supervised is not None)
        for chunk in raw_chunks(files, reader, chunk_rows):
            if not warned:
                warned = True
                _warn_absent(bundle, chunk, say)
            if label_column is not None and not labelled:
                labelled = (label_column in chunk.table.column_names if chunk.table is not None
                            else any(row is not None and label_column in row for row in chunk.rows))
                if not names:
                    names = set(chunk.table.column_names if chunk.table is not None else
                                (name for row in chunk.rows[:1000] if row is not None for name in row))
            stem = chunk.stem
            prepared = prepare_chunk(chunk, id_column=id_column, label_column=label_column,
                                     generate_ids=files_ids.of(chunk), require_labels=False)
            ids = [chunk.rejected_ids.get(chunk.first_row + i, f"{stem}-{chunk.file_row + i + 1}") if row is None
                   else str(row.get("event_id") or f"{stem}-{chunk.file_row + i + 1}")
                   for i, row in enumerate(chunk.rows)]
            typed = type_prepared(prepared, bundle.schema, False) if bundle.schema is not None else None
            events = typed.events if typed is not None else prepared.present
            if done.rows == 0:  # the first chunk's valid events, counted as the in-memory ``score`` counts them
                early = file_warnings(bundle.spec, bundle.schema, events, "valid rows of its first chunk", redacted,
                                      FIELDS_AT)
                for warning in early:
                    if warning:
                        say(f"warning: {warning}")
                said = (early[0] is not None, early[1] is not None)
            sample.add(events[k] for k in range(min(len(events), DRIFT_SAMPLE)))
            chunks += 1
            rows = typed.rows if typed is not None else prepared.positions
            scored = scorer.score(events)
            n = len(chunk.rows)
            lines: list[tuple[str, float, str | None, str | None]] = [(i, float("nan"), None, None) for i in ids]
            probability = np.full(n, np.nan) if scored.probability is not None else None
            for k, row in enumerate(rows):
                at = row - chunk.first_row
                lines[at] = (ids[at], float(scored.scores[k]), scored.rejected[k], scored.messages[k])
                if probability is not None and scored.probability is not None:
                    probability[at] = scored.probability[k]
            for rej in (typed.rejected if typed is not None else chunk.rejected):
                at = rej.index - chunk.first_row
                lines[at] = (ids[at], float("nan"), rej.reason.value, rej.message)
            writer.write(lines, limit, None if probability is None else probability.tolist(), head)
            if label_column is not None:
                kept_scores.append(scored.scores[scored.valid])
                if scored.probability is not None:
                    kept_probability.append(scored.probability[scored.valid])
                done.labels += [prepared.labels.get(row, "") for row, ok in zip(rows, scored.valid.tolist(),
                                                                                 strict=True) if ok]
            valid = int(scored.valid.sum())
            if valid < n:
                done.reasons.update(why for _, _, why, _ in lines if why)
                if done.first_problem is None:
                    at, (_, _, why, text) = next((at, line) for at, line in enumerate(lines) if line[2])
                    done.first_problem = (f"{chunk.path.name} row {chunk.file_row + at + 1}", str(why), text)
            hashes.append(np.fromiter(map(hash, ids), np.int64, len(ids)))
            done.rows += n
            done.scored += valid
            done.flagged += int(scored.flagged(limit, head).sum())
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                rate = done.rows / (last - started)
                left = f" of {total:,}, ~{(total - done.rows) / rate:.0f} s left" if total else ""
                say(f"score: {done.rows:,} rows{left}, {rate:,.0f} rows/s")
        if done.rows == 0:  # as ``score``: an input without a row is an error, not an empty result
            raise InputError(f"{files[0] if len(files) == 1 else 'the input'}: no rows")
        if label_column is not None and not labelled:  # as ``inputs.load_events`` (a misspelled one; a trial)
            raise InputError(f"{files[0] if len(files) == 1 else 'the input'}: --label-column {label_column}: "
                             "no row has this column; check its spelling" + did_you_mean(label_column, names))
        handle.close()
        keys = tuple(dict.fromkeys((*bundle.entity.keys, *bundle.entity.label_keys))) if bundle.entity else ()
        late = scorer.state.late if scorer.state is not None else 0
        refused = unsorted_error(late, done.scored, keys) if bundle.entity is not None and not file_order else None
        if refused and atomic:  # nothing written: the partial file goes (finally)
            raise ConfigError(refused)
        if atomic:
            partial.replace(target)
        for warning in late_warnings(sample, chunks, said, redacted):
            say(f"warning: {warning}")
    finally:
        handle.close()
        if atomic:
            partial.unlink(missing_ok=True)  # an interrupted run leaves no file that looks complete
    ids_hashed = np.concatenate(hashes) if hashes else np.zeros(0, np.int64)
    repeated = len(ids_hashed) - len(np.unique(ids_hashed))
    if repeated:
        say(f"warning: {repeated:,} rows repeat an event_id of an earlier row (ids should be unique)")
    warning = unsorted_warning(late, done.scored, keys) if bundle.entity is not None else None
    if warning:
        say(warning)
    done.rejected = done.rows - done.scored
    done.seconds = time.monotonic() - started
    if label_column is not None:
        n = len(done.labels)
        done.labelled = OfflineScores(np.concatenate(kept_scores) if kept_scores else np.zeros(0), [None] * n,
                                      probability=np.concatenate(kept_probability) if kept_probability else None)
    return done


DRIFT_SAMPLE = 1024  # valid rows of each chunk counted for the drift warnings at the end


def late_warnings(sample: DriftCounts, chunks: int, said: tuple[bool, bool], redacted: Container[str]) -> list[str]:
    """The in-memory ``score``'s missing- and new-value warnings from ``sample`` (the first
    ``DRIFT_SAMPLE`` valid rows of each of ``chunks`` chunks), said at the end where the first
    chunk's own (``said``: missing, new) did not already say it, and not for one chunk (its own
    counted all of it). A trial: a drift starting after the first chunk was never said, where the
    in-memory ``score`` of the same file said it."""
    if sample.looked == 0 or chunks < 2:
        return []
    of = f"the {sample.looked:,} valid rows sampled (the first {DRIFT_SAMPLE:,} of each chunk)"
    out = (None if said[0] else sample.missing_warning(of, sample.everywhere(), FIELDS_AT),
           None if said[1] else sample.novel_warning(of, redacted))
    return [w for w in out if w]


def written_as(out: Path) -> tuple[Path, bool]:
    """Where ``score_stream`` writes ``out``'s lines, and whether through a hidden file beside it
    renamed over it once complete (True) or straight into it (False). A symbolic link is written
    through, its target replaced and the link kept; a device or FIFO (``--out -`` is
    ``/dev/stdout``; ``/dev/null``), or any path under ``/dev`` or ``/proc``, is written as it is,
    never replaced (a trial as root: ``score --streamed --out -`` renamed its file over the
    ``/dev/stdout`` link and printed nothing)."""
    text = str(out)
    if text.startswith(("/dev/", "/proc/")) or (os.path.exists(out) and not os.path.isfile(out)):
        return out, False
    if out.is_symlink():
        return Path(os.path.realpath(out)), True
    return out, True


def _warn_absent(bundle: Bundle, chunk: RawChunk, say: Say) -> None:
    """The in-memory ``score``'s warnings, from the first chunk: what the input lacks that the model reads."""
    if bundle.schema is None:
        return
    filled = {name for row in chunk.rows if row for name, value in row.items() if value not in (None, "")}
    if not any(row is not None for row in chunk.rows):  # every row rejected when read: their reasons say why
        return
    for warning in absent_warnings(bundle.schema, bundle.entity, filled):  # a column empty in every row too
        say(f"warning: {warning}")
