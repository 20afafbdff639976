"""Steps 1, 6 and 7 behind one vocabulary (``base``): a source of batches, a sink of alerts and
dead letters, a committer of offsets. Adapters: ``kafka_python`` / ``kafka_python_out``,
``confluent`` / ``confluent_out`` (each imports only ``base``, ``eos`` and its own client) and
``memory`` (an in-process broker for tests); ``eos`` is exactly-once by composition; ``factory``
builds the configured adapter from ``Settings``."""
