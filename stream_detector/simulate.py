"""Synthetic card transactions with labelled, injected fraud patterns (seeded, vectorised).

Each account has a home country, a spending level and a few favourite merchant categories.
Normal traffic follows those profiles. Injected fraud (``fraud_rate``) uses four patterns:

* ``card_testing``: tiny online amounts in a rapid burst (high 1-hour count, seconds apart);
* ``account_takeover``: new device, foreign country, far from home, large online amounts;
* ``unusual_merchant_country``: rare merchant category in a foreign country, card not present;
* ``amount_spike``: amount 8-40× the account's usual, at a usual merchant.

Velocity fields (``tx_count_1h``, ``seconds_since_last``, ``amount_to_avg``) are the enriched
fields an issuer's authorisation stream typically carries. ``raw=True`` leaves them out, so the
worker's own entity features (docs/entity-features.md) have to find the history themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone

import numpy as np

CATEGORIES = np.array(["grocery", "restaurant", "fuel", "retail", "travel", "online_services",
                       "electronics", "pharmacy", "entertainment", "utilities"])
RARE_CATEGORIES = np.array(["jewelry", "gambling", "crypto_exchange", "money_transfer"])
COUNTRIES = np.array(["US", "GB", "DE", "FR", "ES", "IT", "NL", "CA"])
FOREIGN = np.array(["NG", "RU", "BR", "VN", "ID", "UA", "RO", "PH"])
CHANNELS = np.array(["pos", "online", "atm"])
PATTERNS = ("card_testing", "account_takeover", "unusual_merchant_country", "amount_spike")
VELOCITY_FIELDS = ("seconds_since_last", "tx_count_1h", "amount_to_avg")


@dataclass
class Simulator:
    seed: int = 0
    accounts: int = 2000
    run_id: str = "sim"
    raw: bool = False  # True: no precomputed velocity fields (tx_count_1h, seconds_since_last, amount_to_avg)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.rng = np.random.default_rng(self.seed + 1)
        self.home = rng.choice(COUNTRIES, self.accounts, p=[.4, .15, .1, .1, .07, .07, .06, .05])
        self.level = rng.lognormal(3.4, 0.6, self.accounts)  # typical spend per account (~$30)
        self.favs = np.stack([rng.choice(len(CATEGORIES), 3, replace=False) for _ in range(self.accounts)])
        self.online_share = rng.beta(2, 5, self.accounts)
        self.counter = 0

    def batch(self, n: int, fraud_rate: float, now_ms: int | None = None,
              span_ms: int = 0) -> tuple[list[dict[str, object]], list[str]]:
        """``n`` events and their pattern label (``"legit"`` or a fraud pattern name).

        Timestamps are ``now_ms`` (default: the wall clock) for live traffic, or spread in time
        order over the ``span_ms`` before it for history files.
        """
        rng = self.rng
        acct = rng.integers(0, self.accounts, n)
        online = rng.random(n) < self.online_share[acct]
        channel = np.where(online, "online", np.where(rng.random(n) < 0.08, "atm", "pos"))
        category = CATEGORIES[self.favs[acct, rng.integers(0, 3, n)]]
        category = np.where(rng.random(n) < 0.1, CATEGORIES[rng.integers(0, len(CATEGORIES), n)], category)
        amount = np.round(self.level[acct] * rng.lognormal(0, 0.5, n), 2)
        country = np.where(rng.random(n) < 0.03, COUNTRIES[rng.integers(0, len(COUNTRIES), n)], self.home[acct])
        travel = country != self.home[acct]
        distance = np.round(np.where(travel, rng.uniform(300, 3000, n), rng.exponential(8, n)), 1)
        since_last = np.round(rng.exponential(14_400, n) + 60, 0)
        count_1h = rng.poisson(0.4, n)
        device_new = rng.random(n) < 0.01
        labels = np.full(n, "legit", dtype=object)
        fraud = np.flatnonzero(rng.random(n) < fraud_rate)
        kinds = rng.integers(0, len(PATTERNS), fraud.size)
        for k, pattern in enumerate(PATTERNS):
            rows = fraud[kinds == k]
            labels[rows] = pattern
            m = rows.size
            if pattern == "card_testing":
                amount[rows] = np.round(rng.uniform(0.5, 3.0, m), 2)
                channel[rows] = "online"
                category[rows] = "online_services"
                count_1h[rows] = rng.integers(12, 40, m)
                since_last[rows] = rng.integers(3, 60, m)
            elif pattern == "account_takeover":
                device_new[rows] = True
                country[rows] = FOREIGN[rng.integers(0, len(FOREIGN), m)]
                distance[rows] = np.round(rng.uniform(2000, 12000, m), 1)
                amount[rows] = np.round(self.level[acct[rows]] * rng.uniform(6, 20, m), 2)
                channel[rows] = "online"
                count_1h[rows] = rng.integers(3, 9, m)
            elif pattern == "unusual_merchant_country":
                category[rows] = RARE_CATEGORIES[rng.integers(0, len(RARE_CATEGORIES), m)]
                country[rows] = FOREIGN[rng.integers(0, len(FOREIGN), m)]
                distance[rows] = np.round(rng.uniform(1500, 12000, m), 1)
                channel[rows] = "online"
            else:  # amount_spike
                amount[rows] = np.round(self.level[acct[rows]] * rng.uniform(8, 40, m), 2)
        card_present = channel != "online"
        ratio = np.round(amount / self.level[acct], 3)
        base_ms = now_ms if now_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
        times = np.sort(base_ms - rng.integers(0, span_ms, n)) if span_ms > 0 else np.full(n, base_ms)
        events = []
        for i in range(n):
            self.counter += 1
            events.append({
                "event_id": f"{self.run_id}-{self.counter}",
                "account_id": f"acct-{acct[i]:05d}",
                "timestamp": int(times[i]),
                "amount": float(amount[i]),
                "merchant_category": str(category[i]),
                "country": str(country[i]),
                "channel": str(channel[i]),
                "card_present": bool(card_present[i]),
                "device_new": bool(device_new[i]),
                "distance_from_home_km": float(distance[i]),
                "seconds_since_last": float(since_last[i]),
                "tx_count_1h": int(count_1h[i]),
                "amount_to_avg": float(ratio[i]),
            })
        if self.raw:
            for event in events:
                for name in VELOCITY_FIELDS:
                    del event[name]
        return events, [str(x) for x in labels]


# ---- the Fraud Detection Handbook's simulator (Le Borgne et al., chapter 3.2) ------------------

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
HANDBOOK_PATTERNS = ("legit", "large_amount", "compromised_terminal", "compromised_card")
MERCHANT_CATEGORIES = np.array(["grocery", "restaurant", "fuel", "retail", "pharmacy", "electronics",
                                "travel", "entertainment", "utilities", "online_services"])
_CATEGORY_WEIGHTS = np.array([.22, .16, .10, .16, .07, .06, .05, .07, .04, .07])


@dataclass(frozen=True)
class Scenarios:
    """The Handbook's three fraud scenarios, with its parameters as defaults.

    1. an amount above ``large_amount`` is fraud;
    2. each day ``terminals_per_day`` random terminals are compromised: every transaction at
       them on that day and the ``terminal_days - 1`` following ones is fraud;
    3. each day ``cards_per_day`` random customers (cards) are compromised: for that day and the
       ``card_days - 1`` following ones, a share ``card_share`` of their transactions is fraud,
       with the amount multiplied by ``card_factor``.
    """

    large_amount: float = 220.0
    terminals_per_day: int = 2
    terminal_days: int = 28
    cards_per_day: int = 3
    card_days: int = 14
    card_share: float = 1 / 3
    card_factor: float = 5.0


@dataclass(frozen=True)
class LabelDelays:
    """When labels arrive. Every fraud gets a ``chargeback`` uniformly ``chargeback_days`` after
    its event; a share ``analyst_share`` of all events (both classes) gets an ``analyst`` verdict
    uniformly ``analyst_hours`` after, wrong (the other class) at rate ``analyst_error``. Every
    delay is multiplied by ``scale`` (e.g. 0.0001 for a demo that should see chargebacks)."""

    chargeback_days: tuple[float, float] = (1.0, 7.0)
    analyst_share: float = 0.05
    analyst_hours: tuple[float, float] = (1.0, 12.0)
    analyst_error: float = 0.02
    scale: float = 1.0

    def problems(self) -> list[str]:
        out = []
        for name in ("chargeback_days", "analyst_hours"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                out.append(f"{name} must be 0 <= min <= max, got {low}, {high}")
        for name in ("analyst_share", "analyst_error"):
            if not 0 <= getattr(self, name) <= 1:
                out.append(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if not self.scale >= 0:
            out.append(f"scale must be >= 0, got {self.scale}")
        return out


def label_record(event_id: str, fraud: bool, chargeback: bool, labelled_at: int) -> dict[str, object]:
    """One record of the feedback contract (docs/simulator.md)."""
    return {"event_id": event_id, "label": "fraud" if fraud else "legit",
            "source": "chargeback" if chargeback else "analyst", "labelled_at": labelled_at}


@dataclass
class HandbookBatch:
    """One batch as columns (row ``i`` is one event), the label draws kept for ``labels()``."""

    run_id: str
    first: int  # counter of the first event: event ids are ``{run_id}-{first + i}``
    account: np.ndarray
    terminal: np.ndarray
    timestamp: np.ndarray  # epoch ms, int64, ascending
    amount: np.ndarray
    category: np.ndarray
    channel: np.ndarray
    card_present: np.ndarray
    pattern: np.ndarray  # index into HANDBOOK_PATTERNS
    draws: np.ndarray  # (n, 4) uniforms: analyst picked, analyst wrong, analyst delay, chargeback delay

    def __len__(self) -> int:
        return int(self.timestamp.size)

    def rows(self, start: int, stop: int) -> HandbookBatch:
        """Rows ``start:stop`` as a batch (views of these columns; ids keep their numbers)."""
        columns = {f.name: getattr(self, f.name)[start:stop] for f in fields(self) if f.name not in ("run_id", "first")}
        return HandbookBatch(self.run_id, self.first + start, **columns)

    @staticmethod
    def concat(batches: Sequence[HandbookBatch]) -> HandbookBatch:
        """Consecutive batches (ids following on) as one; ``batches`` must not be empty."""
        if len(batches) == 1:
            return batches[0]
        columns = {f.name: np.concatenate([getattr(b, f.name) for b in batches])
                   for f in fields(HandbookBatch) if f.name not in ("run_id", "first")}
        return HandbookBatch(batches[0].run_id, batches[0].first, **columns)

    @property
    def fraud(self) -> np.ndarray:
        return self.pattern > 0

    def patterns(self) -> list[str]:
        return [HANDBOOK_PATTERNS[k] for k in self.pattern.tolist()]

    def event_ids(self, start: int = 0, stop: int | None = None) -> list[str]:
        stop = len(self) if stop is None else min(stop, len(self))
        return [f"{self.run_id}-{k}" for k in range(self.first + start, self.first + stop)]

    def events(self, start: int = 0, stop: int | None = None) -> list[dict[str, object]]:
        """Raw events (no label, no history fields), rows ``start:stop``."""
        sl = slice(start, len(self) if stop is None else stop)
        columns = zip(self.event_ids(start, stop), self.account[sl].tolist(), self.terminal[sl].tolist(),
                      self.timestamp[sl].tolist(), self.amount[sl].tolist(), self.category[sl].tolist(),
                      self.channel[sl].tolist(), self.card_present[sl].tolist(), strict=True)
        return [{"event_id": e, "account_id": f"card-{a:05d}", "terminal_id": f"term-{t:05d}", "timestamp": ts,
                 "amount": am, "merchant_category": cat, "channel": ch, "card_present": cp}
                for e, a, t, ts, am, cat, ch, cp in columns]

    def labels(self, delays: LabelDelays = LabelDelays()) -> list[dict[str, object]]:
        """Delayed label records ``{event_id, label, source, labelled_at}`` sorted by ``labelled_at``
        (then chargebacks after analyst verdicts at the same millisecond, then event order)."""
        rows, fraud, chargeback, at = (c.tolist() for c in self.label_columns(delays))
        ids = self.event_ids()
        return [label_record(ids[i], f, cb, t) for i, f, cb, t in zip(rows, fraud, chargeback, at, strict=True)]

    def label_columns(self, delays: LabelDelays) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(row, is fraud, is chargeback, labelled_at) of every label, sorted as ``labels()``."""
        fraud = self.fraud
        picked, wrong, u_analyst, u_chargeback = self.draws.T
        analyst = np.flatnonzero(picked < delays.analyst_share)
        low, high = delays.analyst_hours
        a_at = self.timestamp[analyst] + np.ceil((low + (high - low) * u_analyst[analyst]) * HOUR_MS * delays.scale)
        a_label = fraud[analyst] ^ (wrong[analyst] < delays.analyst_error)
        chargeback = np.flatnonzero(fraud)
        low, high = delays.chargeback_days
        c_at = self.timestamp[chargeback] + np.ceil(
            (low + (high - low) * u_chargeback[chargeback]) * DAY_MS * delays.scale)
        row = np.concatenate([analyst, chargeback])
        is_fraud = np.concatenate([a_label, np.ones(chargeback.size, dtype=bool)])
        is_cb = np.concatenate([np.zeros(analyst.size, dtype=bool), np.ones(chargeback.size, dtype=bool)])
        at = np.concatenate([a_at, c_at]).astype(np.int64)
        order = np.lexsort((row, is_cb, at))
        return row[order], is_fraud[order], is_cb[order], at[order]


@dataclass
class HandbookSimulator:
    """Card transactions as the Fraud Detection Handbook simulates them (chapter 3.2), raw.

    Customers and terminals lie uniformly on a 100×100 grid; a customer pays at the terminals
    within ``radius``, uniformly, ``mean_tx_per_day`` ~ U(0, 4) times a day on average, amounts
    ~ N(mean, mean/2) with mean ~ U(5, 100) per customer, times of day ~ N(noon, 20,000 s).
    Each terminal has a merchant category and a channel (``pos`` or ``online``).

    Fraud follows ``scenarios`` and depends only on the seed and the event's time: the terminals
    and cards compromised on day ``d`` (UTC days since the epoch) come from an rng seeded by
    ``(seed, d)``. History files (``span_ms``) and live batches (``now_ms``) therefore follow the
    same rules, and consecutive batches continue the same compromises.
    """

    seed: int = 0
    customers: int = 5000
    terminals: int = 10000
    radius: float = 5.0
    run_id: str = "sim"
    scenarios: Scenarios = Scenarios()

    def __post_init__(self) -> None:
        if self.seed < 0 or self.customers < 1 or self.terminals < 1 or self.radius <= 0:
            raise ValueError("seed must be >= 0, customers and terminals >= 1, radius > 0")
        rng = np.random.default_rng([self.seed, 1])
        cust_xy = rng.uniform(0, 100, (self.customers, 2))
        self.mean_amount = rng.uniform(5, 100, self.customers)
        self.std_amount = self.mean_amount / 2
        self.tx_per_day = rng.uniform(0, 4, self.customers)
        term_xy = rng.uniform(0, 100, (self.terminals, 2))
        self.term_category = MERCHANT_CATEGORIES[rng.choice(len(MERCHANT_CATEGORIES), self.terminals,
                                                            p=_CATEGORY_WEIGHTS)]
        online = (rng.random(self.terminals) < 0.15) | (self.term_category == "online_services")
        self.term_channel = np.where(online, "online", "pos")
        # the terminals within radius of each customer, as CSR (indptr, indices), in chunks of customers
        indices, counts = [], []
        for start in range(0, self.customers, 512):
            cx, cy = cust_xy[start:start + 512, :1], cust_xy[start:start + 512, 1:]
            rows, cols = np.nonzero((cx - term_xy[:, 0]) ** 2 + (cy - term_xy[:, 1]) ** 2 < self.radius ** 2)
            indices.append(cols)
            counts.append(np.bincount(rows, minlength=min(512, self.customers - start)))
        self.near = np.concatenate(indices).astype(np.int64)
        self.near_count = np.concatenate(counts)
        self.near_start = np.concatenate([[0], np.cumsum(self.near_count)[:-1]])
        weight = np.where(self.near_count > 0, self.tx_per_day, 0.0)  # no terminal in reach: no payments
        if weight.sum() <= 0:
            raise ValueError("no customer has a terminal within the radius")
        self.customer_p = weight / weight.sum()
        self.customer_cdf = self.customer_p.cumsum()  # as Generator.choice(p=...) computes it
        self.customer_cdf /= self.customer_cdf[-1]
        self.rng = np.random.default_rng([self.seed, 2])
        self.counter = 0
        self.histories = 0  # history() calls so far: each call draws its own events
        self._picks: dict[tuple[int, int], np.ndarray] = {}

    @property
    def events_per_day(self) -> float:
        """The world's own pace: expected events per simulated day (float64, > 0), the sum of the
        customers' ``mean_tx_per_day`` (those with a terminal within ``radius``; Handbook 3.2.2)."""
        return float(self.tx_per_day[self.near_count > 0].sum())

    def world_span_ms(self, n: int) -> int:
        """The simulated time (ms, >= 1) that ``n`` events take at the world's own pace
        (``events_per_day``): a live run stamped with it shows each card and terminal paying as
        often as in a history file."""
        return max(1, round(n / self.events_per_day * DAY_MS))

    # the scenarios: functions of (seed, day) only

    def compromised_terminals(self, day: int) -> np.ndarray:
        return self._pick(3, day, self.terminals, self.scenarios.terminals_per_day)

    def compromised_cards(self, day: int) -> np.ndarray:
        return self._pick(4, day, self.customers, self.scenarios.cards_per_day)

    def _pick(self, stream: int, day: int, size: int, per_day: int) -> np.ndarray:
        """The entities compromised on ``day``, from an rng seeded by (seed, stream, day); cached, read-only."""
        picked = self._picks.get((stream, day))
        if picked is None:
            if len(self._picks) >= 4096:
                self._picks.clear()
            picked = np.random.default_rng([self.seed, stream, day]).choice(size, min(per_day, size), replace=False)
            picked.flags.writeable = False
            self._picks[(stream, day)] = picked
        return picked

    def _compromised(self, ids: np.ndarray, days: np.ndarray, window: int, draw: str) -> np.ndarray:
        """Whether entity ``ids[i]`` is compromised on day ``days[i]`` (drawn on one of the
        ``window`` days up to and including it)."""
        if ids.size == 0 or window <= 0:
            return np.zeros(ids.size, dtype=bool)
        pick = self.compromised_terminals if draw == "terminal" else self.compromised_cards
        first, last = int(days.min()), int(days.max())
        keys = []
        for d in range(first - window + 1, last + 1):
            if d >= 0:
                covered = np.arange(max(d, first), min(d + window, last + 1), dtype=np.int64)
                keys.append((pick(d).astype(np.int64)[:, None] << 32 | covered[None, :]).ravel())
        if not keys:
            return np.zeros(ids.size, dtype=bool)
        return np.isin(ids.astype(np.int64) << 32 | days, np.concatenate(keys))

    def generate(self, n: int, now_ms: int | None = None, span_ms: int = 0) -> HandbookBatch:
        """``n`` events at ``now_ms`` (default: the wall clock) for live traffic, or spread in
        time order over the ``span_ms`` before it (following the daily profile) for history files."""
        rng = self.rng
        base_ms = now_ms if now_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
        if span_ms > 0:
            times = np.empty(0, dtype=np.int64)
            while times.size < n:  # rejection sampling of the daily profile, ~55 % accepted
                t = base_ms - rng.integers(0, span_ms, 2 * (n - times.size) + 16)
                tod = (t % DAY_MS) / 1000.0
                keep = rng.random(t.size) < np.exp(-0.5 * ((tod - 43_200) / 20_000) ** 2)
                times = np.concatenate([times, t[keep]])
            times = np.sort(times[:n])
        else:
            times = np.full(n, base_ms, dtype=np.int64)
        generated = self.events_at(rng, times, self.counter + 1)
        self.counter += n
        return generated

    def history(self, n: int, span_ms: int, end_ms: int | None = None,
                chunk: int = 100_000) -> Iterator[HandbookBatch]:
        """A history file's ``n`` events over the ``span_ms`` up to ``end_ms`` (epoch ms, default: the
        wall clock; times in ``(end_ms - span_ms, end_ms]``, ``span_ms`` 0 counts as 1), as time-ordered
        batches of ``chunk`` rows (the last one shorter): memory is bounded by ``chunk``, whatever ``n``.

        The events do not depend on ``chunk``; they are not ``generate``'s (another random stream) but
        follow the same distributions and scenarios (``history_files.history``: how). Ids are reserved
        at the call (``counter`` grows by ``n``); each call on a simulator draws other events.
        Raises ``ValueError`` for ``n < 0``, ``span_ms < 0`` or ``chunk < 1``.
        """
        from .history_files import history

        end = end_ms if end_ms is not None else int(datetime.now(timezone.utc).timestamp() * 1000)
        return history(self, n, span_ms, end, chunk)

    def events_at(self, rng: np.random.Generator, times: np.ndarray, first: int) -> HandbookBatch:
        """Events at ``times`` (int64 epoch ms, ascending), ids from ``first`` on, everything else drawn
        from ``rng`` (``generate``'s draws after its times, in its order); ``counter`` is left alone."""
        sc, n = self.scenarios, times.size
        account = self.customer_cdf.searchsorted(rng.random(n), side="right")  # = rng.choice(p=customer_p)
        terminal = self.near[self.near_start[account] + (rng.random(n) * self.near_count[account]).astype(np.int64)]
        amount = rng.normal(self.mean_amount[account], self.std_amount[account])
        negative = amount < 0
        amount[negative] = rng.uniform(0, 2 * self.mean_amount[account[negative]])
        amount = np.round(amount, 2)
        channel = self.term_channel[terminal]
        card_present = (channel == "pos") & (rng.random(n) >= 0.03)  # a few keyed-in (card absent) at a till
        day = times // DAY_MS
        pattern = np.zeros(n, dtype=np.int8)
        pattern[amount > sc.large_amount] = 1
        pattern[self._compromised(terminal, day, sc.terminal_days, "terminal")] = 2
        card = self._compromised(account, day, sc.card_days, "card") & (rng.random(n) < sc.card_share)
        pattern[card] = 3
        amount[card] = np.round(amount[card] * sc.card_factor, 2)
        draws = rng.random((n, 4))
        return HandbookBatch(self.run_id, first, account, terminal, times, amount, self.term_category[terminal],
                             channel, card_present, pattern, draws)

    def batch(self, n: int, now_ms: int | None = None,
              span_ms: int = 0) -> tuple[list[dict[str, object]], list[str]]:
        """``n`` raw events and their pattern (one of ``HANDBOOK_PATTERNS``), like ``Simulator.batch``."""
        generated = self.generate(n, now_ms, span_ms)
        return generated.events(), generated.patterns()
