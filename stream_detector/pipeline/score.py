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

import numpy as np
import torch

from ..model.bundle import Bundle

MIN_ROWS = 8  # on CPU, a call's rows are padded to a multiple of this: the same kernels and blocks as a batch's


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

    def head_attributions(self, x: np.ndarray) -> np.ndarray:
        """Each input field's part in the supervised head's verdict on the rows ``x`` (float32,
        k × width; the alerted rows): gradient × input of the head's logit (before Platt scaling)
        with respect to the feature row, through both of the head's inputs (the row itself and the
        autoencoder's errors of it), summed per field like ``field_errors``. Positive values pushed
        towards fraud. The baseline is the zero row: each numeric feature at its training median
        (robust scaling), no category. Method: gradient × input (Shrikumar et al., 2016, "Not just
        a black box"). Returns float64, k × n_fields; raises ``ValueError`` without a head."""
        if self._explain is None:
            raise ValueError("the bundle has no supervised head")
        if x.shape[0] == 0:
            return np.zeros((0, len(self.fields)))
        with torch.enable_grad():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device).requires_grad_(True)
            logit = self._explain.supervised.logit(t, self._explain.errors(t))
            (grad,) = torch.autograd.grad(logit.sum(), t)
        per_column = (grad * t).detach().cpu().numpy().astype(np.float64)
        summed: np.ndarray = np.add.reduceat(per_column, self.group_starts, axis=1)
        return summed

    def field_errors(self, per_feature: np.ndarray) -> np.ndarray:
        """Sum one-hot / indicator columns into their input field: n × n_fields."""
        summed: np.ndarray = np.add.reduceat(per_feature, self.group_starts, axis=1)
        return summed


def scores_of(per_feature: np.ndarray) -> np.ndarray:
    """The anomaly score: mean per-feature error (float64 for stable comparisons)."""
    scores: np.ndarray = per_feature.mean(axis=1, dtype=np.float64)
    return scores
