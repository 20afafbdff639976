"""One exception root for the whole package.

Every class says whether retrying the same operation later can succeed (``retriable``), so that
callers decide by flag rather than by class name. Bad *data* never raises out of the pipeline:
it becomes a ``Rejected`` record (see ``schema.py``) and goes to the dead-letter topic.
"""

from __future__ import annotations


class StreamDetectorError(Exception):
    """Root of all errors raised by stream-detector."""

    retriable: bool = False


class ConfigError(StreamDetectorError):
    """Settings or CLI input are invalid; the message says what to change."""


class ModelError(StreamDetectorError):
    """A model bundle is missing, corrupt (sha256 mismatch) or incompatible."""


class NoActiveModel(ModelError):
    """Redis holds no active model yet: run ``stream-detector publish DIR`` first."""

    retriable = True


class ThresholdUnavailable(StreamDetectorError):
    """The threshold could not be read from Redis and no fresh cached value exists."""

    retriable = True


class EntityStateUnavailable(StreamDetectorError):
    """Per-entity feature state could not be read or written in Redis; the batch is held and retried."""

    retriable = True


class TransportError(StreamDetectorError):
    """A Kafka client call failed (``stream_detector.transport``: any adapter, any client library).

    ``retriable`` is per instance: True when the same call can succeed later (broker unreachable,
    coordinator moving), False when it cannot (authorisation, configuration, a fatal client state).
    """

    def __init__(self, message: str = "", retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class DeliveryError(TransportError):
    """Alerts or dead-letter records were not acknowledged by Kafka, or the offsets of a batch could
    not be committed; offsets must not move.

    Always ``retriable`` for the batch: the worker resets the producer, holds the batch and
    retries it (a fenced or refused transaction is settled by re-reading the batch).
    ``client_retriable`` keeps what the adapter said of the failed client call itself.
    """

    def __init__(self, message: str = "", retriable: bool = True) -> None:
        super().__init__(message, retriable=True)
        self.client_retriable = retriable


class InputError(StreamDetectorError):
    """An input file (CSV / JSON Lines) cannot be read as events."""


class TrainingError(StreamDetectorError):
    """Training cannot make a usable model from this input (too few rows, no feature, a threshold
    that is not finite, a model that flags its own normal rows); no bundle is written."""
