"""Step 4, score: one TorchScript call per batch → per-feature errors; the score is their mean.

The scorer only measures; deciding is ``threshold.py``'s job. On CUDA the batch is copied from
pinned memory asynchronously; on CPU ``torch.from_numpy`` shares the numpy buffer (no copy).

One event, one score, whatever the batch: on CPU every call is padded with copies of its last
row to a multiple of ``MIN_ROWS`` rows. torch's ``linear`` takes another kernel for a matrix of one
or two rows (a matrix-vector product: its sums in another order), so an event scored alone, as a
live event often is, or in a stage-2 batch that the alignment released one or two at a time,
scored a few float32 units apart from the same event in a batch (measured 2026-12-05 on the
trial model of 22 entity fields and its 9,271 events: every row of 1- and 2-row calls differed,
by up to 5.9e-5). A new-user trial of two stages found it as alert scores 1e-6 off offline
``score``'s. Padding to 8 rows was enough on an Intel Xeon; on an AMD EPYC with two intra-op
threads, calls of 9, 10, 11, 15, 18, 22, … rows (not a multiple of 8) gave their last rows other
bits than a call of all rows (its row blocks split otherwise between the threads); padded to a
multiple of 8, every call size from 1 to 69 and 100 to 999 gave the same bits (measured
2026-12-05, ``tests/unit/test_compute.py``). At most 7 rows are added to a call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.bundle import COLUMN_MEANS, COLUMN_MEDIANS, Bundle

WHY_CANDIDATES = 10  # Scorer.why: the fields tried, those with the largest errors
WHY_LATER = 3  # Scorer.why: the fields tried after the first step, the first step's runners-up
WHY_NOISE = 1e-6  # Scorer.why: a later field must lower the score by more than this share of it to be named
MIN_ROWS = 8  # on CPU, a call's rows are padded to a multiple of this: the same kernels and blocks as a batch's


@dataclass(frozen=True)
class Why:
    """``Scorer.why`` for k alerted rows: ``named`` (int64, k × top_n) the units named, indices
    into ``units``, -1 past the last; ``parts`` (float64, k × top_n) what each took off the score
    at its step, score units; ``after`` (float64, k × top_n) the score with it and the units
    before it at their typical values (NaN past the last); ``errors`` (float64, k × len(units))
    each unit's reconstruction error, its columns' per-column errors summed; ``fields`` each
    unit's fields (indices into ``Scorer.fields``, in the model's order)."""

    named: np.ndarray
    parts: np.ndarray
    after: np.ndarray
    units: list[str]
    errors: np.ndarray
    fields: list[list[int]]


def typical_row(bundle: Bundle) -> np.ndarray | None:
    """The feature row (float32[width]) of typical values ``Scorer.why`` gives a field: each
    column's median over the model's validation rows, and for a categorical field's one-hot
    columns the most frequent category's column 1 and the others 0 (their means are the
    categories' shares: a row of shares is no category at all, and a trial's never-seen country
    made "typical" that way still scored twice the threshold). None for a bundle without
    ``column_medians`` and ``column_means`` (trained before 2026-12-07)."""
    width = bundle.spec.width
    medians, means = bundle.calibration.get(COLUMN_MEDIANS), bundle.calibration.get(COLUMN_MEANS)
    if not (isinstance(medians, list) and isinstance(means, list) and len(medians) == len(means) == width):
        return None
    row = np.asarray(medians, dtype=np.float32).copy()
    shares = np.asarray(means, dtype=np.float64)
    sources, names = bundle.spec.sources, bundle.spec.columns
    for column in bundle.spec.categorical:
        group = [j for j, (source, name) in enumerate(zip(sources, names, strict=True))
                 if source == column.name and name.startswith(f"{column.name}=")]
        if group:
            row[group] = 0.0
            row[group[int(np.argmax(shares[group]))]] = 1.0
    return row


def _units(bundle: Bundle, fields: list[str],
           column_field: np.ndarray) -> tuple[list[str], np.ndarray, list[list[int]]]:
    """``Scorer.why``'s units, each column's unit (int64[width]) and each unit's fields (indices
    into ``fields``): the input fields, but an entity feature computed from an input field's own
    value in this event (``EntitySpec.derived_from``) joins that field's unit when the model reads
    the field, and the other entity features of a key are two units, its history before the event
    and its known frauds (``EntitySpec.history_units``: ``k__history``, ``k__frauds``)."""
    spec = bundle.entity
    derived = spec.derived_from() if spec is not None else {}
    history = spec.history_units() if spec is not None else {}
    owner = [derived[f] if f in derived and derived[f] in fields else history.get(f, f) for f in fields]
    units = list(dict.fromkeys(owner))
    unit_of_field = np.array([units.index(o) for o in owner], dtype=np.int64)
    members: list[list[int]] = [[] for _ in units]
    for f, u in enumerate(unit_of_field.tolist()):
        members[u].append(f)
    return units, unit_of_field[column_field], members


class Scorer:
    def __init__(self, bundle: Bundle, device: str = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.module = bundle.load_module(device)
        sources = bundle.spec.sources
        self.fields: list[str] = []
        starts: list[int] = []
        for i, name in enumerate(sources):
            if not self.fields or self.fields[-1] != name:
                self.fields.append(name)
                starts.append(i)
        self.group_starts = np.asarray(starts, dtype=np.int64)
        # each feature column's field (an index into self.fields)
        self.column_field = np.cumsum(np.isin(np.arange(bundle.spec.width), self.group_starts)) - 1
        self.typical = typical_row(bundle)  # the columns' typical values (Scorer.why); None: a model without them
        # why's units: each input field with the entity features computed from its own value in this event
        # (an amount's ratios to the history: made typical alone, the amount left them unusual, trial K)
        self.units, self.column_unit, self.unit_fields = _units(bundle, self.fields, self.column_field)
        self._unit_matrix = np.zeros((bundle.spec.width, len(self.units)), dtype=np.float64)
        self._unit_matrix[np.arange(bundle.spec.width), self.column_unit] = 1.0
        self.supervised = bundle.supervised is not None  # the module's last output column: a probability
        # the unfrozen module, whose submodules give the head's gradients (alerts' head attributions)
        self._explain = bundle.load_module(device, frozen=False) if self.supervised else None

    @property
    def version(self) -> str:
        return self.bundle.version

    def warm(self) -> None:
        """Run once on a dummy batch so the first real batch pays no JIT/alloc cost."""
        self.errors(np.zeros((8, self.bundle.spec.width), dtype=np.float32))

    def errors(self, x: np.ndarray) -> np.ndarray:
        """Per-feature weighted squared errors, float32, n × d."""
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One TorchScript call: the per-feature errors (float32, n × d) and, with a supervised
        head, the calibrated fraud probability (float64, n; else None)."""
        n = x.shape[0]
        if n == 0:
            return (np.zeros((0, x.shape[1]), dtype=np.float32),
                    np.zeros(0) if self.supervised else None)
        if n % MIN_ROWS and self.device.type == "cpu":  # the batch's kernel and row blocks
            x = np.concatenate([x, np.repeat(x[-1:], MIN_ROWS - n % MIN_ROWS, axis=0)])
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if self.device.type == "cuda":
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
                out: np.ndarray = self.module(tensor).cpu().numpy()
            else:
                out = self.module(tensor).numpy()
        out = out[:n]
        if not self.supervised:
            return out, None
        return out[:, :-1], out[:, -1].astype(np.float64)

    def head_attributions(self, x: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Each unit's part in the supervised head's verdict on the rows ``x`` (float32, k × width;
        the alerted rows): the head's calibrated log-odds of the row less those of the row with
        the unit at its typical value (occlusion, the units and typical values of ``why``: an
        input field with the entity features computed from its value, a key's history, a key's
        known frauds). Positive: the unit pushed towards fraud; made typical, the odds fall by
        that much. Returns ``(names, values)``: the units' names and float64 k × len(names).
        Cost: one scoring of each row per unit (about ten for a model with account and terminal
        history and labels). A bundle without typical values (trained before 2026-12-07): gradient
        × input of the head's logit per field, from the zero row (Shrikumar et al., 2016), which a
        trial found reaching 246 log-odds on an event of probability 0.04: a first-order reading
        far from its baseline, whose terms cancel. Raises ``ValueError`` without a head."""
        if self._explain is None:
            raise ValueError("the bundle has no supervised head")
        if self.typical is None:
            return self.fields, self._gradient_times_input(x)
        k, n_units = x.shape[0], len(self.units)
        if k == 0:
            return self.units, np.zeros((0, n_units))
        own = _log_odds(self.outputs(x)[1])
        out = np.empty((k, n_units))
        step = max(1, 65_536 // max(n_units, 1))
        every = np.arange(n_units)[None, :]
        for start in range(0, k, step):
            part = x[start:start + step]
            occluded = np.repeat(part, n_units, axis=0)  # row i * n_units + u: row i, unit u typical
            which = np.repeat(every, len(part), axis=0).reshape(-1, 1)
            occluded = np.where(self.column_unit[None, :] == which, self.typical[None, :], occluded)
            out[start:start + len(part)] = (own[start:start + len(part), None]
                                            - _log_odds(self.outputs(occluded)[1]).reshape(len(part), n_units))
        return self.units, out

    def _gradient_times_input(self, x: np.ndarray) -> np.ndarray:
        """``head_attributions`` of a bundle without typical values: gradient × input of the head's
        logit (before Platt scaling) per field, from the zero row, float64 k × n_fields."""
        assert self._explain is not None
        if x.shape[0] == 0:
            return np.zeros((0, len(self.fields)))
        with torch.enable_grad():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device).requires_grad_(True)
            logit = self._explain.supervised.logit(t, self._explain.errors(t))
            (grad,) = torch.autograd.grad(logit.sum(), t)
        per_column = (grad * t).detach().cpu().numpy().astype(np.float64)
        summed: np.ndarray = np.add.reduceat(per_column, self.group_starts, axis=1)
        return summed

    def why(self, x: np.ndarray, scores: np.ndarray, threshold: float, top_n: int,
            per_column: np.ndarray | None = None, candidates: int = WHY_CANDIDATES,
            rows_per_call: int = 65_536) -> Why | None:
        """Why the rows ``x`` (float32, k × width; the alerted rows, whose scores are ``scores``,
        float64[k]) scored high: the input fields which, given their typical values, lower the
        score most, chosen one at a time (greedy occlusion): first the one whose typical value
        alone lowers the score most, then, with it typical, the next, until the score is at or
        under ``threshold``, or ``top_n`` are named, or none lowers it further (the first is
        always named). ``Why.after`` says where each step left the score: above ``threshold``
        after the last, the fields named do not clear the alert.

        A field's **typical value**: its columns' medians over the model's validation rows, and
        for a categorical field the one-hot of its most frequent category (``typical_row``). An
        input field the model's entity features read (the amount, a distinct field) is made
        typical together with the features computed from its value in this event
        (``EntitySpec.derived_from``: an amount with its ratios to the entity's history, a value
        with its first-seen flag): ``Why.units`` names the pair after the field. The
        features that describe a key's history before the event are made typical together, one
        unit per key (``k__history``), and its label features another (``k__frauds``):
        ``EntitySpec.history_units``.

        The units tried first are each row's ``candidates`` with the largest errors
        (``per_column``: the rows' per-column errors, float32 k × width; computed when not
        given): the unusual field is seldom far down that ranking, only often not first, and a
        model with entity features has dozens of fields (69 in the entity benchmarks: every one
        tried cost ~250 µs per alert on random rows). The later steps try the first step's
        ``WHY_LATER`` runners-up only. Cost: ``candidates`` scorings of each alerted row, then
        one fewer each further step (those not yet typical: ``WHY_LATER``, then ``WHY_LATER`` − 1, …)
        while it is above ``threshold``. None for a bundle without
        the typical values (``column_medians``, ``column_means``: trained before 2026-12-07).

        Why not the fields' own reconstruction errors: an autoencoder reconstructs an unusual
        value partly into the other columns, so the largest errors were often on ordinary fields
        (trial J: an event whose only unusual field was ``tx_count_1h`` alerted with three other
        fields named). Method: occlusion (Zeiler & Fergus, 2014, "Visualizing and understanding
        convolutional networks"), made greedy so that the fields named are the ones that clear
        the alert; measured in ``benchmarks/why.py`` (RESULTS, *Why an alert fired*)."""
        if self.typical is None:
            return None
        k, n_units = x.shape[0], len(self.units)
        named = np.full((k, top_n), -1, dtype=np.int64)
        parts = np.full((k, top_n), np.nan)
        if per_column is None:
            per_column = self.errors(x)
        errors = self.unit_errors(per_column)
        if k == 0 or n_units == 0:
            return Why(named, parts, parts.copy(), self.units, errors, self.unit_fields)
        width = min(candidates, n_units)
        tried = np.argsort(-errors, axis=1, kind="stable")[:, :width]  # k × width unit indices
        current = np.array(x, dtype=np.float32, copy=True)
        now = np.asarray(scores, dtype=np.float64).copy()
        after = np.full((k, top_n), np.nan)
        typical = np.zeros((k, width), dtype=bool)  # by candidate position
        active = np.arange(k)
        for step in range(min(top_n, width)):
            if not active.size:
                break
            # each active row has ``step`` candidates already typical: only the others are scored (their
            # drops -inf, never picked), in the same order, so the pick and its ties are the same
            drop = np.full(typical[active].shape, -np.inf)
            left = ~typical[active]
            units = tried[active][left].reshape(active.size, -1)
            drop[left] = (now[active][:, None] - self._occluded_scores(current[active], units, rows_per_call)).ravel()
            pick = drop.argmax(axis=1)
            took = drop[np.arange(active.size), pick]
            best = tried[active, pick]
            # a field already typical lowers it by float noise only (trial L: tx_count_1h named for 3.6e-15)
            chosen = (took > WHY_NOISE * np.maximum(now[active], 1.0)) | (step == 0)
            rows, best, took = active[chosen], best[chosen], took[chosen]
            named[rows, step], parts[rows, step] = best, took
            typical[rows, pick[chosen]] = True
            if step == 0 and width > 1 + WHY_LATER:  # later steps try the first step's runners-up only
                order = np.argsort(-drop, axis=1, kind="stable")[:, :1 + WHY_LATER]  # [:, 0] is pick
                tried, typical = np.take_along_axis(tried, order, axis=1), typical[:, :1 + WHY_LATER]
                typical[:] = False
                typical[rows, 0] = True
            columns = self.column_unit[None, :] == best[:, None]  # len(rows) × width
            current[rows] = np.where(columns, self.typical[None, :], current[rows])
            now[rows] -= took
            after[rows, step] = now[rows]
            active = rows[now[rows] > threshold]
        return Why(named, parts, after, self.units, errors, self.unit_fields)

    def unit_errors(self, per_column: np.ndarray) -> np.ndarray:
        """Each of ``units``' error (float64, n × n_units): its columns' per-column errors summed."""
        summed: np.ndarray = np.asarray(per_column, dtype=np.float64) @ self._unit_matrix
        return summed

    def _occluded_scores(self, block: np.ndarray, units: np.ndarray, rows_per_call: int) -> np.ndarray:
        """The scores (float64, len(block) × m) of each row ``i`` of ``block`` with the columns of
        unit ``units[i, j]`` at their typical values, for each ``j`` in turn (``units``: int,
        len(block) × m)."""
        assert self.typical is not None
        m = units.shape[1]
        out = np.empty((block.shape[0], m))
        step = max(1, rows_per_call // max(m, 1))
        for start in range(0, block.shape[0], step):
            part, which = block[start:start + step], units[start:start + step].reshape(-1, 1)
            occluded = np.repeat(part, m, axis=0)  # row i * m + j: row i, its j-th unit typical
            occluded = np.where(self.column_unit[None, :] == which, self.typical[None, :], occluded)
            scored = self.outputs(occluded)[0].mean(axis=1, dtype=np.float64)
            out[start:start + len(part)] = scored.reshape(len(part), m)
        return out

    def field_errors(self, per_feature: np.ndarray) -> np.ndarray:
        """Sum one-hot / indicator columns into their input field: n × n_fields."""
        summed: np.ndarray = np.add.reduceat(per_feature, self.group_starts, axis=1)
        return summed


def _log_odds(probability: np.ndarray | None) -> np.ndarray:
    """log(p / (1 - p)), float64, p clipped to [1e-7, 1 - 1e-7] (the head's float32 output)."""
    assert probability is not None
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-7, 1 - 1e-7)
    odds: np.ndarray = np.log(p) - np.log1p(-p)
    return odds


def scores_of(per_feature: np.ndarray) -> np.ndarray:
    """The anomaly score: mean per-feature error (float64 for stable comparisons)."""
    scores: np.ndarray = per_feature.mean(axis=1, dtype=np.float64)
    return scores
