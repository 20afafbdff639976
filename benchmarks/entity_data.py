"""Seeded data for ``python -m benchmarks entity``: raw card transactions (no precomputed velocity
fields) with fraud that is only visible against the account's own history.

Background traffic is ``Simulator(raw=True)`` with no fraud of its own. Injected scenarios, each
on a random account at a random time, labelled ``fraud``:

* ``card_testing``: a burst of 6-15 online payments within ~10 minutes, each with an amount and a
  merchant category that are ordinary *for that account* — only the velocity gives it away;
* ``account_takeover``: 3-6 payments within a few hours from a country the account never used
  (one of the common ones), at a category it does not use, at 3-6× its usual amount;
* ``amount_spike``: one payment at a usual category and country, 5-10× the account's usual amount,
  on accounts whose usual amount is in the lowest 30 % (so the amount itself is unremarkable in the population).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_detector.simulate import CATEGORIES, COUNTRIES, Simulator

SCENARIOS = ("card_testing", "account_takeover", "amount_spike")
WEIGHTS = (0.08, 0.17, 0.75)  # about the same number of fraud *events* per scenario
MIN = 60_000


def make(n_events: int, accounts: int, span_days: float, fraud_share: float, seed: int,
         end_ms: int = 1_790_000_000_000) -> tuple[list[dict[str, Any]], list[str]]:
    """Time-ordered events and their label per event (``legit`` or a scenario name)."""
    sim = Simulator(seed=seed, accounts=accounts, run_id=f"ent{seed}", raw=True)
    span = int(span_days * 86_400_000)
    events, labels = sim.batch(n_events, 0.0, now_ms=end_ms, span_ms=span)
    rng = np.random.default_rng(seed + 100)
    injected: list[tuple[dict[str, Any], str]] = []
    budget = int(fraud_share * n_events)
    while len(injected) < budget:
        scenario = str(rng.choice(SCENARIOS, p=WEIGHTS))
        acct = int(rng.integers(0, accounts))
        # leave the first fifth of history for the account to build a profile
        start = end_ms - span + int(rng.uniform(0.2, 1.0) * span)
        injected += [(e, scenario) for e in _scenario(sim, rng, scenario, acct, start)]
    rows = list(zip(events, labels, strict=True)) + injected
    rows.sort(key=lambda r: r[0]["timestamp"])  # stable: arrival order is time order
    for i, (event, _) in enumerate(rows):
        event["event_id"] = f"ent{seed}-{i}"
    return [r[0] for r in rows], [r[1] for r in rows]


def _base(sim: Simulator, rng: np.random.Generator, acct: int, t: int) -> dict[str, Any]:
    home = str(sim.home[acct])
    return {"event_id": "", "account_id": f"acct-{acct:05d}", "timestamp": int(t),
            "amount": round(float(sim.level[acct] * rng.lognormal(0, 0.5)), 2),
            "merchant_category": str(CATEGORIES[sim.favs[acct, int(rng.integers(0, 3))]]),
            "country": home, "channel": "pos", "card_present": True, "device_new": False,
            "distance_from_home_km": round(float(rng.exponential(8)), 1)}


def _scenario(sim: Simulator, rng: np.random.Generator, scenario: str, acct: int, start: int) -> list[dict[str, Any]]:
    if scenario == "card_testing":
        times = np.sort(start + rng.integers(0, 10 * MIN, int(rng.integers(6, 16))))
        return [{**_base(sim, rng, acct, t), "channel": "online", "card_present": False} for t in times]
    if scenario == "account_takeover":
        abroad = str(rng.choice([c for c in COUNTRIES if c != sim.home[acct]]))
        unused = [c for i, c in enumerate(CATEGORIES) if i not in set(sim.favs[acct])]
        times = np.sort(start + rng.integers(0, 180 * MIN, int(rng.integers(3, 7))))
        return [{**_base(sim, rng, acct, t), "country": abroad, "merchant_category": str(rng.choice(unused)),
                 "amount": round(float(sim.level[acct] * rng.uniform(3, 6)), 2),
                 "distance_from_home_km": round(float(rng.uniform(300, 3000)), 1)} for t in times]
    low = np.flatnonzero(sim.level < np.quantile(sim.level, 0.3))
    acct = int(rng.choice(low))
    return [{**_base(sim, rng, acct, start), "amount": round(float(sim.level[acct] * rng.uniform(5, 10)), 2)}]
