"""Step 3a, enrich: per-entity streaming features (docs/entity-features.md).

Between decode and features, each event gains numeric fields computed from the history of its
entities (``account_id`` and any configured key): decayed window counts/sums/means, the amount
relative to the entity's mean, seconds since the entity's previous event, distinct and first-seen
merchants/countries. One compiled kernel (``kernel``) computes them for a whole batch, in the
worker (state in Redis, binary records) and in training/offline scoring (state in memory or in
arrays), so both see exactly the same numbers; ``compute`` is the per-event reference it is
tested against.
"""

from ..entity_spec import EntitySpec, parse_windows
from .enrich import Enricher, enrich_history
from .history import enrich_columns
from .state import InMemoryState, RedisClusterState, RedisState, StateStore

__all__ = ["Enricher", "EntitySpec", "InMemoryState", "RedisClusterState", "RedisState", "StateStore", "enrich_columns",
           "enrich_history", "parse_windows"]
