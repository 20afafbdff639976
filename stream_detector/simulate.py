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

from dataclasses import dataclass
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
