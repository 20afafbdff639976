"""Integration tests: one real Kafka broker and one real Redis per test session (the ``services``
fixture of ``tests/fixtures.py``, shared with ``tests/contract``), started by the project's own
``deploy/services.sh`` on free ports (never the dev stack's)."""
