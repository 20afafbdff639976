"""Command line: wiring only. ``stream-detector --help`` lists the subcommands."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import getpass
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from .errors import ConfigError, InputError, StreamDetectorError
from .settings import Settings, load_settings, unknown_settings
from .stopping import Stopping

log = logging.getLogger("stream_detector")


# fields notable log lines carry (``extra=``), kept as JSON keys with SD_LOG_JSON
_LOG_CONTEXT = ("topic", "partition", "offset", "group", "model_version", "previous_model_version",
                "failed_model_version", "threshold_version")


class _UtcFormatter(logging.Formatter):
    """Log times as RFC 3339 UTC with milliseconds (``2026-12-02T14:33:11.505Z``): a time without
    its zone is ambiguous across hosts (found by a new-user trial)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return utc_text(record.created)


class _JsonFormatter(_UtcFormatter):
    """``SD_LOG_JSON``: one JSON object per line (``ts``, ``level``, ``logger``, ``msg``, the record's
    context fields, and ``exc`` with a traceback); ``process``: fields every line carries (a
    worker's ``worker`` id and ``pid``)."""

    def __init__(self, process: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.process = process or {}

    def format(self, record: logging.LogRecord) -> str:
        context = {k: getattr(record, k) for k in _LOG_CONTEXT if hasattr(record, k)}
        if record.exc_info:
            context["exc"] = self.formatException(record.exc_info)
        return orjson.dumps({"ts": self.formatTime(record), "level": record.levelname, **self.process,
                             "logger": record.name, "msg": record.getMessage(), **context}).decode()


def utc_text(epoch_s: float) -> str:
    """``epoch_s`` (seconds) as RFC 3339 UTC with milliseconds."""
    ms = int(round(epoch_s * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


_JSON_LINES = False  # SD_LOG_JSON: the command's own lines (_say, errors) are JSON log lines too
_SPOOLED: dict[str, str] = {}  # a stream's temporary copy (``_spool_streams``) → the name the user gave
_ROOT: list[argparse.ArgumentParser] = []  # build_parser's parser (a usage error names the commands an option is of)
_ARGV: list[str] = []  # the command line being parsed (usage errors name an unknown option, and the command's --help)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` writing to ``sys.stderr`` as it is when a record is emitted (as the
    standard library's last-resort handler does), not as it was when logging was set up: a command
    run in-process (the tests) left the root logger writing to a stream closed since, and every
    later log line of the process printed "--- Logging error --- I/O operation on closed file"."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _setup_logging(settings: Settings | None, verbose: bool = False, one_shot: bool = False,
                   worker: bool = False) -> None:
    """The process's log: level, text or JSON (``SD_LOG_JSON``), kafka-python's noise filtered.
    ``worker``: every line names the worker (``SD_WORKER_ID``, the host name by default) and its
    process id, so that the lines of several workers in one terminal or log store can be told apart
    (a new-user trial scaling out could not tell whose "revoked"/"assigned" line was whose)."""
    global _JSON_LINES
    level = "DEBUG" if verbose else (settings.log_level if settings else "INFO")
    handler = _StderrHandler()
    _JSON_LINES = settings is not None and settings.log_json
    process = {"worker": settings.worker_id, "pid": os.getpid()} if worker and settings is not None else {}
    if _JSON_LINES:
        handler.setFormatter(_JsonFormatter(process))
    else:
        tag = f" [{process['worker']} pid {process['pid']}]".replace("%", "%%") if process else ""
        handler.setFormatter(_UtcFormatter(f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # kafka-python 3 warns of every slow task on its network thread ("Task ... ran for 0.268s ... It
    # is blocking the event loop"): on a busy machine that is noise that reads like a fault (a
    # user's trial of `retrain --once`); its real errors are still logged
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    selector = logging.getLogger("kafka.net.selector")
    if _closed_socket_noise not in selector.filters:
        selector.addFilter(_closed_socket_noise)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "generated new fontManager" on a first run's report
    # numba logs its compiler passes at DEBUG: thousands of lines for one short worker run under -v
    # (a new-user trial), which bury the project's own debug lines
    logging.getLogger("numba").setLevel(logging.WARNING)
    logging.getLogger("kafka.net.transport").addFilter(_closed_transport_noise)
    logging.getLogger("kafka.cluster").addFilter(_cancelled_refresh_noise)
    logging.getLogger("kafka.coordinator.consumer").addFilter(_unstable_offsets_noise)
    coordinator = logging.getLogger("kafka.coordinator")
    if _coordinator_moved_noise not in coordinator.filters:
        coordinator.addFilter(_coordinator_moved_noise)
    for name in _KAFKA_CONNECTION_LOGGERS:
        kafka_net = logging.getLogger(name)
        kafka_net.setLevel(logging.NOTSET)  # a previous call's (tests run many commands in one process)
        for old in [f for f in kafka_net.filters if isinstance(f, _OncePerMinute)]:
            kafka_net.removeFilter(old)
        if one_shot and not verbose:  # the command's own error line says it once, with the address
            kafka_net.setLevel(logging.CRITICAL)
        else:
            kafka_net.addFilter(_OncePerMinute())
    # a request timed out on a connection that a silent address accepted ("Abort (RequestTimedOutError)"):
    # a one-shot command's error line says it (a test found the line above the error)
    quiet = one_shot and not verbose
    logging.getLogger("kafka.net.transport").setLevel(logging.CRITICAL if quiet else logging.NOTSET)


# kafka-python 3's lines for each failed connection attempt: four per retry, every 0.1-1 s, while a
# broker is unreachable (20 lines before `tail`'s one-line error; a new-user trial)
_KAFKA_CONNECTION_LOGGERS = ("kafka.net.manager", "kafka.net.connection", "kafka.net.inet")  # inet: DNS lookups
_SERVICES = frozenset({"worker", "demo", "console", "retrain"})  # long-running: connection trouble is logged
PROBE_TIMEOUT_S = 5.0
_PROBE_HINT = " (is the broker running, and SD_KAFKA_BOOTSTRAP its address?)"  # every "cannot reach Kafka"


class _OncePerMinute(logging.Filter):
    """Passes a logger's record once per minute per message template (``record.msg``, before its
    arguments): a long-running service still says that a broker is unreachable, not four lines
    per reconnection attempt."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.levelno, str(record.msg)), time.monotonic()
        if now - self._last.get(key, -math.inf) < 60.0:
            return False
        self._last[key] = now
        return True


def _closed_transport_noise(record: logging.LogRecord) -> bool:
    """False for kafka-python 3's traceback from a read on a transport it has already closed
    ("<KafkaTCPTransport [none] (closed)>: Error receiving network data": its socket is gone, a
    race in its network thread at close; seen in the middle of `make demo`'s output by a new-user
    trial). Every other record passes."""
    return not (record.levelno >= logging.ERROR and "(closed)>" in record.getMessage())


def _closed_socket_noise(record: logging.LogRecord) -> bool:
    """False for kafka-python 3's "Unhandled exception in task" ERROR whose exception is a wait on a
    socket the client has already closed (``ValueError: Invalid file descriptor: -1``): a race in
    its network thread while the consumer closes, after the worker has revoked its partitions and
    committed. A 40-line traceback at the end of `make demo` (2026-12-07), and in 1 of 40 stops of
    a trial; the worker stops normally. Every other record passes."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (record.levelno >= logging.ERROR and isinstance(exc, ValueError)
                and "Invalid file descriptor: -1" in str(exc))


def _cancelled_refresh_noise(record: logging.LogRecord) -> bool:
    """False for kafka-python 3's "Metadata refresh: failed Cancelled" ERROR: a refresh its network
    thread cancels because the client is closing (printed by `tail` now and then, with the output
    right and exit 0; found by a new-user trial). Every other record passes."""
    return not (record.levelno >= logging.ERROR and "Cancelled" in record.getMessage()
                and "Metadata refresh" in record.getMessage())


def _coordinator_moved_noise(record: logging.LogRecord) -> bool:
    """kafka-python 3 WARNs "Marking the coordinator dead (node coordinator-1) for group g: [Error 16]
    NotCoordinatorError" when the broker it asked answers that another is the group's coordinator,
    or that none is ready yet: at the start of every new group, and when the coordinator moves (a
    new-user trial saw it at every worker's start). The client looks the coordinator up again by
    itself; the line passes at INFO. A coordinator that stays unreachable shows in the errors that
    follow (commits, joins). Every other record passes as it is."""
    message = record.getMessage()
    if record.levelno == logging.WARNING and message.startswith("Marking the coordinator dead") and (
            "NotCoordinator" in message or "CoordinatorNotAvailable" in message):
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


_UNSTABLE_SAID = [float("-inf")]  # when _unstable_offsets_noise last let its line through


def _unstable_offsets_noise(record: logging.LogRecord) -> bool:
    """kafka-python 3 logs an ERROR every ~100 ms while the group's offsets of a partition wait for
    a transaction of a worker that died (Kafka's UNSTABLE_OFFSET_COMMIT, until that transaction
    times out: SD_TRANSACTION_TIMEOUT_S): a new-user trial of two stages saw 338 such lines after
    killing a stage-1 worker. Normal and retried by the client: said once a minute, at INFO, with
    what it means. Every other record passes."""
    if "UnstableOffsetCommit" not in record.getMessage():
        return True
    now = time.monotonic()
    if now - _UNSTABLE_SAID[0] < 60.0:
        return False
    _UNSTABLE_SAID[0] = now
    record.msg, record.args = ("waiting for an open transaction of a worker that left the group to end (it "
                               "commits, or times out after SD_TRANSACTION_TIMEOUT_S): the client retries; "
                               "kafka-python said: %s", (record.getMessage(),))
    record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def _say(msg: str, level: str = "INFO") -> None:
    """A line for the person running the command, on stderr; with ``SD_LOG_JSON``, a JSON log line
    of the same shape as the log's, so that a log collector reads every line: a ``warning: …`` line
    at WARNING, and below ``SD_LOG_LEVEL`` none (a new-user trial's log at ERROR still had every
    line, its warnings as INFO)."""
    if _JSON_LINES:
        if level == "INFO" and msg.startswith("warning:"):
            level = "WARNING"
        if not logging.getLogger().isEnabledFor(logging.getLevelName(level)):
            return
        msg = orjson.dumps({"ts": utc_text(time.time()), "level": level, "logger": "stream_detector.cli",
                            "msg": msg}).decode()
    print(msg, file=sys.stderr, flush=True)


# ---- train / publish / score -----------------------------------------------------------------


def _check_threshold_args(args: argparse.Namespace) -> None:
    for name in ("target_fpr", "max_alert_rate"):
        value = getattr(args, name)
        if value is not None and not 0.0 < value < 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1 (exclusive), got {value}")
    for name in ("k_fence", "k_std"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    method = args.threshold_method  # an option of another rule, set away from its default: said, not silently
    if method != "fence" and args.k_fence != 3.0:  # ignored (a trial)
        _say(f"note: --k-fence is for --threshold-method fence; the {method} threshold does not use it")
    if method != "meanstd" and args.k_std != 3.0:
        _say(f"note: --k-std is for --threshold-method meanstd; the {method} threshold does not use it")
    if method != "quantile" and args.target_fpr != 0.01:
        use = ("uses it only when the validation errors have no spread" if method == "fence" else "does not use it")
        _say(f"note: --target-fpr sets the quantile threshold (--threshold-method quantile) and a supervised head's; "
             f"the {method} threshold {use}. For an alert budget with the {method}, use --max-alert-rate")


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from .model.bundle import build_bundle, save_bundle
    from .model.train import TrainConfig, train
    from .report import evaluate_on_input

    _check_threshold_args(args)
    _check_model_out(args.out)
    if args.supervised and not (args.feedback or args.label_column):  # before reading and training, not after
        raise ConfigError("--supervised needs labels: --feedback FILE or --label-column C")
    entity = _entity_spec(args)
    _check_column_roles(args, entity)
    _check_normal_label(args)
    for name in args.keep or ():  # before the file is read: these need no data
        if name == args.label_column:
            raise ConfigError(f"--keep {name}: it is the --label-column, which is never a feature")
        if name in (args.exclude or ()):
            raise ConfigError(f"--keep {name} and --exclude {name}: one or the other")
    normal_given = args.normal_label is not None
    args.normal_label = "0" if args.normal_label is None else args.normal_label
    if args.label_column:  # spelled as the file's labels are read: 0.0 → 0, " legit " → legit, False → false (a trial)
        from .inputs import _label_text

        args.normal_label = _label_text(args.normal_label)
    if args.streamed or args.cluster or Path(args.input).is_dir() or any(c in args.input for c in "*?["):
        return _train_streamed(args, entity, normal_given)
    _check_fields_early(args, entity)
    data = _load_file(args, inference=_inference(args, entity))
    _say("field schema (--schema FILE / --field NAME=TYPE to change; README \"Field schema\"):")
    for line in data.schema.describe(args.id_column, args.label_column, args.timestamp_column):
        _say(line)
    _check_excluded(args.exclude or (), data.schema, data.events)
    _check_keep(args, data.schema, data.events)
    if entity is not None:
        entity = _check_entity_fields(entity, data.schema, data.events,
                                      explicit_distinct=args.entity_distinct != _DEFAULT_DISTINCT)
    from .feedback import LEGIT

    events, labels, normal_label = data.events, data.labels, args.normal_label
    known: list[Any] = []  # feedback records, for label features
    labelled: list[bool] = []  # with --feedback: whether each event has a label of its own
    if args.feedback:
        if args.label_column:
            raise ConfigError("--label-column and --feedback both give labels: use one of them")
        labels, known = _feedback_labels(Path(args.feedback), events, training=True, labelled=labelled)
        normal_label = LEGIT
    if entity is not None:  # 3a: point-in-time entity features over the whole history, in file order
        from .entity import enrich_history

        late, times = _check_order(events, entity, args.file_order)
        events = enrich_history(entity, events, labels=known)
        _say(f"entity features: {len(entity.output_fields)} fields per event from keys {', '.join(entity.keys)} "
             f"over windows {args.entity_windows}; {late} rows earlier than an earlier row of their entity "
             f"(applied in file order, time clamped: docs/entity-features.md)")
        _warn_filling(times, entity)
        if entity.label_keys:
            _say(f"label features: {len(entity.label_fields)} fields per event from keys "
                 f"{', '.join(entity.label_keys)}, each label counted from its labelled_at + {args.label_delay} "
                 f"(docs/feedback.md)")
    if labels is not None:
        normal = [e for e, lab in zip(events, labels, strict=True) if lab == normal_label]
        source = f"{args.label_column}=" if args.label_column else "the feedback label "
        usual, found = _usual_normal(set(labels) - {""})
        if not normal and not normal_given and args.label_column and usual is not None:  # as score picks it
            normal_label = args.normal_label = usual
            normal = [e for e, lab in zip(events, labels, strict=True) if lab == normal_label]
            _say(f"note: normal rows are those with {args.label_column}={usual!r} (no row has the default 0; the "
                 f"file's labels: {sorted(set(labels))[:10]}): --normal-label to choose")
        if not normal:
            raise ConfigError(f"no rows with {source}{normal_label!r} (labels seen: {sorted(set(labels))[:10]})"
                              + _two_normal_words(found))
        from .inputs import minority_normal_warning

        # a trial: --normal-label fraud, and the leak check blamed real fields one after another
        warning = minority_normal_warning(f"{source}{normal_label}", len(normal), len(events),
                                          Counter(labels).most_common(5))
        if warning is not None:
            _say(f"warning: {warning}")
        else:  # the check assumes anomalies are the few: with most rows anomalous, any common value looks like one
            excluded = [*(args.exclude or ()), *(args.keep or ())]
            _refuse_leaks(data.schema, data.events, [lab != normal_label for lab in labels], excluded)
            if labelled and not all(labelled):  # delayed labels: frauds not labelled yet read as legit, and a
                # ground-truth column passed (a trial: `pattern` and `label` as features, 130 of 1,746 frauds
                # unlabelled at the cut); the labelled events alone show it
                kept = [i for i, has in enumerate(labelled) if has]
                _refuse_leaks(data.schema, [data.events[i] for i in kept], [labels[i] != normal_label for i in kept],
                              excluded, " (among the labelled events)")
        if args.feedback or args.label_column:  # another column named as a label is a feature here: said,
            # whatever the check found (trial N: the Handbook's TX_FRAUD_SCENARIO, a number 0-3, beside
            # --label-column TX_FRAUD passed the check, which reads categories and booleans, and AUC read 1.0000)
            features = {rule.name for rule in data.schema.feature_fields}
            told = set(args.keep or ())
            for name in [n for n in label_like_columns(events[:10_000]) if n in features and n not in told]:
                _say_label_feature(name, f"--exclude {name} leaves it out (--keep {name} if it is a real feature)")
        _say(f"{len(events)} events; training on {len(normal)} with {source}{normal_label}")
    else:
        normal = events
        named = label_like_columns(events[:10_000])
        hint = ""
        label = next((n for n in named if not _scenario_like(n)), None)  # a scenario's codes are no fraud/legit label
        if label is not None:
            from .inputs import _label_text

            seen = {_label_text(events[i].get(label)) for i in range(min(len(events), 10_000))}
            usual = next((v for v in ("0", "legit", "normal", "false", "N", "no") if v in seen), None)
            flag = f"--label-column {label}" + (f" --normal-label {usual}" if usual not in (None, "0") else "")
            hint = (f"; to train on normal rows only: {flag} (values of {label}: "
                    f"{', '.join(sorted(seen)[:5])}{', …' if len(seen) > 5 else ''})")
        _say(f"{len(events)} events; no --label-column: training on all of them, anomalies included{hint}")
        features = {rule.name for rule in data.schema.feature_fields}
        for name in [n for n in named if n in features]:
            _say_label_feature(name, f"--exclude {name} leaves it out" if _scenario_like(name) else
                               f"--label-column {name} trains on the normal rows, --exclude {name} leaves it out")
    config = TrainConfig(epochs=args.epochs, seed=args.seed, target_fpr=args.target_fpr,
                         threshold_method=args.threshold_method, k_std=args.k_std,
                         k_fence=args.k_fence, max_alert_rate=args.max_alert_rate,
                         dropout=args.dropout, hidden=args.hidden, bottleneck=args.bottleneck,
                         error_norm=args.error_norm, time_of_day=args.time_features,
                         exclude=tuple(args.exclude or ()), max_self_flag_rate=args.max_self_flag_rate)
    result = train(normal, config, progress=_say, entity=entity, schema=data.schema)
    if args.supervised:
        _supervised(args, result, events, labels, normal_label)
    extra: dict[str, Any] = {"training_input": str(args.input), "training_rows_read": data.total,
                             "training_rows_rejected": len(data.rejected), **_training_columns(args)}
    extra.update(_training_labels(args.label_column, normal_label, labels))
    out = Path(args.out)
    _drop_old_report(out)
    if labels is not None:
        y = np.array([lab != normal_label for lab in labels])
        # the bundle enriches the raw rows itself; numbers + PNGs in OUT/report/
        extra["evaluation_on_input"] = evaluate_on_input(build_bundle(result), data.events, y, out,
                                                         Path(args.input).name, labels=known)
        _say("on the labelled input (training rows included): " + ", ".join(
            f"{k}={v:.4f}" for k, v in extra["evaluation_on_input"].items() if isinstance(v, float)))
        if "supervised_head" in extra["evaluation_on_input"]:
            _say("the supervised head on it: " + _figures(extra["evaluation_on_input"]["supervised_head"]))
            _say("the decision (alert when either fires, as the worker does) on it: "
                 + _figures(extra["evaluation_on_input"]["decision"]))
    bundle = build_bundle(result, extra)
    save_bundle(bundle, out)
    _say(f"model {bundle.version} written to {out} (threshold {bundle.threshold:.6g}, sha256 {bundle.sha256[:12]})")
    print(bundle.version)
    return 0


def _train_streamed(args: argparse.Namespace, entity: Any, normal_given: bool = True) -> int:
    """``train --streamed`` (or a directory / glob input, or ``--cluster``): the big-history path
    (``big/``, docs/big-history.md) — same bundle, bounded memory, progress on every phase."""
    from .big.prepare import BigOptions
    from .big.source import input_files
    from .big.train import train_big, work_dir_for
    from .events_io import file_kind
    from .model.bundle import build_bundle, save_bundle
    from .model.train import TrainConfig

    for flag, given in (("--feedback", args.feedback), ("--supervised", args.supervised),
                        ("--label-key", args.label_key), ("--timestamp-column", args.timestamp_column)):
        if given:
            raise ConfigError(f"{flag} is not available on the streamed path yet (docs/big-history.md): "
                              f"train on a file without --streamed")
    for flag, value in (("--shards", args.shards), ("--chunk-rows", args.chunk_rows), ("--workers", args.workers),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.work_dir and not Path(args.work_dir).is_dir():
        raise ConfigError(f"--work-dir {args.work_dir}: no such directory")
    files = input_files(args.input)
    if args.cluster:
        if entity is None:
            _say("note: --cluster runs the entity shards; without --entity-key nothing is sent to it")
        _check_cluster(args.cluster)
    where = f"the Dask cluster {args.cluster}" if args.cluster else "a local process pool"
    csv = file_kind(files[0]) == "csv"
    _say(f"streamed training: {len(files)} file(s) from {args.input}, chunks of {args.chunk_rows:,} rows"
         + (" (CSV: blocks of about that many)" if csv else "")
         + (f", {args.shards} entity shard(s) per key on {where}" if entity is not None else ""))
    defaulted = bool(args.label_column) and not normal_given
    first: list[dict[str, Any]] = []  # the first file's first rows: the in-memory path's default and checks
    if defaulted or entity is not None or args.exclude or args.keep:
        from .big.source import raw_chunks

        head = next(raw_chunks(files[:1], _reader_options(args), 10_000), None)
        first = [row for row in head.rows if row is not None] if head is not None else []
    if defaulted:
        _streamed_normal_label(args, first)
    if entity is not None or args.exclude or args.keep:
        from .fieldschema import infer_schema

        schema = infer_schema(first, _inference(args, entity)).schema
        if first:  # an empty input is refused by the training itself, with its own message
            _check_excluded(args.exclude or (), schema, first)
            _check_keep(args, schema, first)
        if entity is not None and first:
            explicit = args.entity_distinct != _DEFAULT_DISTINCT
            entity = _check_entity_fields(entity, schema, first, explicit_distinct=explicit, streamed=True)
    out = Path(args.out)
    config = TrainConfig(epochs=args.epochs, seed=args.seed, target_fpr=args.target_fpr,
                         threshold_method=args.threshold_method, k_std=args.k_std,
                         k_fence=args.k_fence, max_alert_rate=args.max_alert_rate,
                         dropout=args.dropout, hidden=args.hidden, bottleneck=args.bottleneck,
                         error_norm=args.error_norm, time_of_day=args.time_features,
                         exclude=tuple(args.exclude or ()), max_self_flag_rate=args.max_self_flag_rate,
                         batch_size=args.batch_size)
    options = BigOptions(work_dir=work_dir_for(out, Path(args.work_dir) if args.work_dir else None),
                         chunk_rows=args.chunk_rows, shards=args.shards, cluster=args.cluster, workers=args.workers,
                         file_order=args.file_order)
    with _terminated_as_interrupt():  # SIGTERM (timeout, Kubernetes) cleans up the work directory as Ctrl-C does
        result = train_big(files, config, options, reader=_reader_options(args),
                           inference=_inference(args, entity), entity=entity, id_column=args.id_column,
                           label_column=args.label_column, normal_label=args.normal_label, keep=args.keep or (),
                           say=_say)
    facts = result.metrics["streamed"]
    _drop_old_report(out)
    bundle = build_bundle(result, {"training_input": str(args.input), "training_files": len(files),
                                   "training_rows_read": facts["rows"],
                                   "training_rows_rejected": sum(facts["rejected"].values()),
                                   **_training_labels(args.label_column, args.normal_label)})
    save_bundle(bundle, out)
    _say(f"model {bundle.version} written to {out} (threshold {bundle.threshold:.6g}, sha256 {bundle.sha256[:12]})")
    print(bundle.version)
    return 0


REPORT_FILES = ("scores.png", "curves.png")  # what train writes in OUT/report/ (report.evaluate_on_input)


def _drop_old_report(out: Path) -> None:
    """Before ``train`` writes into the folder of an earlier model (``metadata.json`` there): that
    model's report images go (a trial: they stayed beside the new model, or beside the one image a
    new report wrote), and the report folder too when nothing else is in it. Other files are the
    user's and stay."""
    if not (out / "metadata.json").is_file():
        return
    for name in REPORT_FILES:
        (out / "report" / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty (the user's files), or absent
        (out / "report").rmdir()


def _streamed_normal_label(args: argparse.Namespace, first: list[dict[str, Any]]) -> None:
    """``train --streamed`` without ``--normal-label``: where no row of ``first`` (the first file's
    first chunk) has the default 0, its one usual normal word (``_usual_normal``), said, as the
    in-memory ``train`` picks it from the whole file (a trial: the streamed path refused legit/fraud
    labels)."""
    from .inputs import take_label

    seen = {label for row in first for label in [take_label(dict(row), args.label_column)] if label}
    usual, _found = _usual_normal(seen)
    if args.normal_label not in seen and usual is not None:
        args.normal_label = usual
        _say(f"note: normal rows are those with {args.label_column}={usual!r} (no row of the first chunk has the "
             f"default 0; its labels: {sorted(seen)[:10]}): --normal-label to choose")


def _training_labels(label_column: str | None, normal_label: str,
                     labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The bundle's record of ``train --label-column``'s column and normal label (none without one):
    ``score --label-column`` of the same column reads the labels the same way by default (a trial:
    it took 0 for normal against a model trained on the simulator's legit/fraud). With ``labels``
    (the training rows'), also the anomaly labels seen (at most ``ANOMALY_LABELS_KEPT``): ``score``
    of a file holding only those is a frauds-only file, evaluated, not refused as a misspelling."""
    if not label_column:
        return {}
    out: dict[str, Any] = {"training_label_column": label_column, "training_normal_label": normal_label}
    if labels is not None:
        out["training_anomaly_labels"] = sorted(set(labels) - {normal_label, ""})[:ANOMALY_LABELS_KEPT]
    return out


ANOMALY_LABELS_KEPT = 50


def _check_normal_label(args: argparse.Namespace) -> None:
    """``--normal-label`` given without ``--label-column`` is refused (exit 2): it was ignored, and
    ``train`` then took the file's label column for a feature (a new-user trial)."""
    if args.normal_label is None or args.label_column:
        return
    given = args.normal_label or repr(args.normal_label)
    if getattr(args, "feedback", None):
        raise ConfigError(f"--normal-label {given}: the --feedback labels are legit and fraud "
                          "already; --normal-label is for --label-column")
    raise ConfigError(f"--normal-label {given} needs --label-column: name the file's column of labels")


def _check_model_out(given: str) -> None:
    """``train --out``: refused before any input is read when it cannot become the model's folder
    (it found out only after training, with a Python exception and exit 1)."""
    if given.strip() in ("-", "./-"):  # a trial: a folder named "-" (score's and simulate's --out - is stdout)
        raise ConfigError(f"--out {given}: a model is a folder of files, not a stream; name a folder")
    out = Path(given)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file is there; a model is written to a folder")
    parent = next((p for p in [out, *out.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
    report = out / "report"  # train writes its images there (a trial: an OSError after the whole training)
    if report.exists() and not report.is_dir():
        raise ConfigError(f"--out {out}: {report} is a file; train writes its report images in a folder there")
    for image in (report / name for name in REPORT_FILES):
        if image.is_dir():
            raise ConfigError(f"--out {out}: {image} is a folder; train writes an image there")


def _check_file_out(out: Path, option: str, inputs: Sequence[str | None] = ()) -> None:
    """An output file's place, checked before any input is read: its folder exists, it is not a
    folder, and it is none of ``inputs`` (``score --out`` named as its ``--input`` replaced the input
    with the scores, exit 0: a new-user trial)."""
    for given in inputs:
        if given and Path(given).is_file() and out.exists() and os.path.samefile(out, given):  # links too
            raise ConfigError(f"{option} {out} is the input file {given}: writing there would replace it; "
                              "give another file name (or, for a folder or pattern, one outside it)")
    if out.is_dir():
        raise ConfigError(f"{option} {out}: a folder is there; give a file name")
    if not out.parent.is_dir():
        raise ConfigError(f"{option} {out}: no folder {out.parent} to write it in")


def _check_cluster(address: str) -> None:
    """Refuse (exit 2, one line) a Dask address that does not answer, before any input is read."""
    from distributed import Client

    try:
        Client(address, timeout="10s").close()  # type: ignore[no-untyped-call]
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--cluster {address}: no Dask scheduler answers there ({str(exc).splitlines()[0][:160]})"
                          ) from None


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` inside the block, so ``finally`` clauses (the streamed
    path's work directory, a partial output file) run as they do on Ctrl-C."""
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _figures(numbers: dict[str, Any]) -> str:
    """``k=v, …`` of an evaluation's figures (floats to 4 places; missing ones left out)."""
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()
                     if v is not None and not isinstance(v, dict))


def _check_keep(args: argparse.Namespace, schema: Any, events: list[dict[str, Any]]) -> None:
    """``train --keep``: each a category or boolean field of the input (the fields the ground-truth
    check looks at), refused (exit 2) otherwise, on both paths (a trial: a typo passed on the
    streamed path, a number field anywhere)."""
    from .fieldschema import FieldType

    _require_fields([("--keep", name) for name in args.keep or ()], schema, events)
    for name in args.keep or ():
        rule = next((r for r in schema.fields if r.name == name), None)
        if rule is not None and rule.type not in (FieldType.CATEGORY, FieldType.BOOLEAN):
            raise ConfigError(f"--keep {name}: a {rule.type.value} field; --keep is for the category and boolean "
                              "fields the ground-truth check refuses")


def _say_label_feature(name: str, what_to_do: str) -> None:
    """``train``'s warning of a column named as a label (``label_like_columns``) that is a feature."""
    _say(f"warning: {name} looks like a label and is a feature of this model: it learns the frauds' labels as one "
         f"more input (a leak; live events and scoring without it read them as unusual). {what_to_do}")


def _refuse_leaks(schema: Any, events: list[dict[str, Any]], fraud: list[bool], excluded: Sequence[str],
                  among: str = "") -> None:
    """Refuse (exit 2) a category or boolean feature that gives the label away
    (``inputs.leak_problem``): the model would look perfect in training and meet events without it
    when served. ``among``: said after the counts (which events they are of)."""
    from .fieldschema import FieldType
    from .inputs import leak_problem

    for rule in schema.fields:
        if rule.name in excluded or rule.type not in (FieldType.CATEGORY, FieldType.BOOLEAN):
            continue
        counts: dict[Any, list[int]] = {}
        for event, f in zip(events, fraud, strict=True):
            counts.setdefault(event.get(rule.name), [0, 0])[f] += 1
        problem = leak_problem(rule.name, counts)
        if problem is not None:
            raise ConfigError(problem.replace(" anomalous rows have", f" anomalous rows{among} have", 1))


def _supervised(args: argparse.Namespace, result: Any, events: list[dict[str, Any]], labels: list[str] | None,
                normal_label: str) -> None:
    """``train --supervised``: the head beside the autoencoder (``model/supervised.py``) on every
    labelled row; with too few frauds the bundle keeps the autoencoder alone (said on stderr)."""
    from .errors import TrainingError
    from .model.supervised import HeadConfig, rows_for_head, train_head

    if labels is None:
        raise ConfigError("--supervised needs labels: --feedback FILE or --label-column C")
    x, y = rows_for_head(result.spec, result.schema, events, [lab != normal_label for lab in labels])
    try:
        module, entry = train_head(result.head, x, y, HeadConfig(target_fpr=args.target_fpr, seed=args.seed), _say)
    except TrainingError as exc:
        _say(f"note: no supervised head: {exc}")
        return
    result.head = module
    result.calibration["supervised"] = entry


def _feedback_labels(path: Path, events: list[dict[str, Any]], training: bool = False,
                     labelled: list[bool] | None = None) -> tuple[list[str], list[Any]]:
    """Each event's label from a feedback file (``feedback``'s rule: the winning label of all the
    file's records; an event without one is taken as legit, as fraud teams read silence), and the
    file's records (``feedback.Label``). ``training``: a file none of whose labels is about an
    event of the input is refused (``ConfigError``: training would take every event as legit);
    scoring says so and goes on. ``labelled``, when given, is filled with whether each event has
    a label of its own (False: silence, read as legit)."""
    from .feedback import FRAUD, LEGIT
    from .inputs import read_feedback

    feedback = read_feedback(path)
    _say(f"feedback {path.name}: {feedback.summary()}")
    verdicts = feedback.verdicts
    found = [verdicts.verdict(str(e["event_id"])) for e in events]
    ids = {str(e["event_id"]) for e in events}
    strays = [event_id for event_id in verdicts if event_id not in ids]
    why = _stray_label_ids(strays, ids)
    if found.count(None) == len(found) and found:
        if training:  # a trial: a model trained on every event as legit, exit 0
            raise ConfigError(f"no label of {path.name} is about an event of the input: every event would count "
                              f"as legit; {why}")
        _say(f"note: no label of {path.name} is about an event of the input (event ids differ?): every event "
             f"counts as legit; {why}")
    _say(f"labels joined by event_id: {found.count(True)} fraud, {found.count(False)} legit, "
         f"{found.count(None)} events without a label (taken as legit)"
         + (f"; {len(strays)} labelled events are not in the input ({why})" if strays else ""))
    _warn_labels_before_events(path, events, verdicts.labels())
    if labelled is not None:
        labelled[:] = [v is not None for v in found]
    return [FRAUD if v else LEGIT for v in found], verdicts.labels()


def _stray_label_ids(strays: Sequence[str], ids: set[str]) -> str:
    """Why labels' event ids ``strays`` miss the input's ``ids``, as far as it shows: examples of both,
    and ids that differ only as a spreadsheet writes numbers (``1369.0``, ``0001467``: trial E's
    labels, which joined nothing and said only how many)."""
    if not strays:
        return ""

    def bare(text: str) -> str:
        digits = text[:-2] if text.endswith(".0") else text
        if not digits.isdigit():
            return text
        return digits.lstrip("0") or "0"
    numeric = {bare(i) for i in ids}
    respelt = [s for s in strays if bare(s) != s and bare(s) in numeric]
    out = (f"label ids like {', '.join(repr(s) for s in strays[:3])}; the input's event ids like "
           f"{', '.join(repr(i) for i in sorted(ids)[:3])}")
    if respelt:
        out += (f"; {len(respelt)} differ only as a spreadsheet writes numbers (e.g. {respelt[0]!r} for "
                f"{bare(respelt[0])!r}): write the ids as text")
    elif ids and all(re.fullmatch(r".+-\d+", i) for i in sorted(ids)[:3]):
        prefixes = {i.rsplit("-", 1)[0] for i in sorted(ids)[:100]}
        if all(re.fullmatch(r".+-\d+", s) and s.rsplit("-", 1)[0] in prefixes for s in strays[:100]):
            # a trial (G): labels of the older part of the same simulated data were said to be "generated ids?"
            out += (" (the same id form as the input's: labels of events this file does not hold, another part "
                    "of the same data?)")
        else:
            out += " (generated ids? --id-column names the input's id column)"
    return out


def _file_run_id(args: argparse.Namespace, end_ms: int | None) -> str:
    """``simulate --out``'s default run id, ``sim-<6 hex>``: a digest of what decides the file's
    events (profile, seed, count, span, end, accounts, terminals, fraud rate, label delays), so the
    same command writes the same ids and a different file other ids (without ``--end`` two runs
    share ids: the same draws, at times shifted by the runs' distance). Every file was ``sim-1``,
    ``sim-2``, … before: another run's labels joined to a file's events by id without a word (a
    trial, 2026-12-06; only labels dated before their event were caught, by a warning)."""
    import hashlib

    def given(value: Any, default: Any) -> Any:  # an option left out and its default given: the same file
        return default if value is None else value

    velocity = args.profile == "velocity"
    # without --end the file ends now: two runs draw the same events at times shifted by the runs'
    # distance, and share ids (their labels are about the same draws)
    decided = [args.profile, args.seed, given(args.count, 10_000), args.span_days, end_ms,
               given(args.accounts, 2000 if velocity else 5000), given(args.terminals, 10_000),
               given(args.fraud_rate, 0.01), given(args.label_delay_scale, 1.0)]
    return "sim-" + hashlib.sha256(repr(decided).encode()).hexdigest()[:6]


def _warn_labels_before_events(path: Path, events: list[dict[str, Any]], labels: list[Any]) -> None:
    """A ``warning:`` line when more than 5 % of the labels joined are dated before their event
    (``labelled_at`` < its ``timestamp``): labels of another file whose event ids happen to match
    (a trial: the simulator numbers every file's events sim-1, sim-2, …, and another run's labels
    joined without a word, 1 of 201 "frauds" a fraud)."""
    from .schema import parse_timestamp_ms

    by_id = {str(e.get("event_id")): e for e in events}
    joined = early = 0
    for label in labels:
        event = by_id.get(label.event_id)
        if event is None or event.get("timestamp") is None:
            continue
        try:
            at = parse_timestamp_ms(event["timestamp"])
        except (TypeError, ValueError, OverflowError):
            continue
        joined += 1
        early += label.labelled_at < at
    if joined and early > 0.05 * joined:
        _say(f"warning: {early:,} of the {joined:,} labels of {path.name} joined to an event are dated before it "
             "(labelled_at earlier than its timestamp): labels of another file? (event ids such as the simulator's "
             "sim-1, sim-2, … repeat across files)")


def _at_least_one(text: str) -> int:
    """argparse type of a count that must be >= 1 (``train --epochs 0`` meant "derived", ``--hidden 0``
    wrote a model without a hidden unit: a new-user trial)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    """argparse type of ``--hidden``: comma-separated layer widths, each >= 1."""
    return tuple(_at_least_one(part.strip()) for part in text.split(","))


def _reader_options(args: argparse.Namespace) -> Any:
    from .events_io import DEFAULT_NA, ReaderOptions

    if args.delimiter is not None and len(args.delimiter.replace("\\t", "\t")) != 1:
        raise ConfigError(f"--delimiter must be one character (\\t for a tab), got {args.delimiter!r}")
    na = tuple(args.na_values.split(",")) if args.na_values is not None else DEFAULT_NA
    return ReaderOptions(delimiter=args.delimiter.replace("\\t", "\t") if args.delimiter else None,
                         decimal=args.decimal, thousands=args.thousands, na_values=na,
                         id_column=getattr(args, "id_column", None) or "event_id")


def _inference(args: argparse.Namespace, entity: Any) -> Any:
    """What ``train`` tells the schema inference: ids, keys, label and exclusions, overrides."""
    from .fieldschema import InferenceOptions, parse_overrides

    try:
        overrides = _schema_file(Path(args.schema)) if getattr(args, "schema", None) else {}
        overrides.update(parse_overrides(getattr(args, "field", None) or ()))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ids = {args.id_column} if args.id_column else set()
    return InferenceOptions(identifiers=frozenset(ids | set(entity.keys if entity is not None else ())),
                            ignored=frozenset({*(getattr(args, "exclude", None) or ()),
                                               *([args.label_column] if args.label_column else [])}),
                            overrides=overrides, inputs=entity.input_fields if entity is not None else ())


def _schema_file(path: Path) -> dict[str, Any]:
    """``--schema FILE``: a bundle's ``schema.json`` or ``{"field": "type" | {"type": ..., "unit": ...}}``."""
    from .fieldschema import rule_from_dict

    if not path.is_file():
        raise ValueError(f"--schema: no such file {path}")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"--schema {path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--schema {path}: expected a JSON object")
    items = data["fields"] if isinstance(data.get("fields"), list) else [
        {"name": k, **(v if isinstance(v, dict) else {"type": v})} for k, v in data.items()]
    return {rule.name: rule for rule in (rule_from_dict(item) for item in items)}


def _load_file(args: argparse.Namespace, schema: Any = None, inference: Any = None, need_events: bool = True,
               entity: Any = None, keep_json: bool = False, need_labels: bool | None = None) -> Any:
    """Read and type ``--input``, and say what was read and what was left out (never silently);
    with a model's ``schema`` (and ``entity`` spec), what the file lacks that the model reads.
    ``need_labels`` (default: ``need_events``, as training): every row must have a label."""
    from .inputs import absent_warnings, load_events

    if args.id_column and args.id_column == args.label_column:  # a trial: taken as both, said as neither
        raise ConfigError(f"--id-column and --label-column both name {args.id_column}: a column is the event's id "
                          "or its label, not both")
    times = getattr(args, "timestamp_column", None)
    for flag, other in (("--id-column", args.id_column), ("--label-column", args.label_column)):
        if times and times == other:
            raise ConfigError(f"--timestamp-column and {flag} both name {times}: a column is one of them, not both")
    data = load_events(Path(args.input), options=_reader_options(args), id_column=args.id_column,
                       label_column=args.label_column, schema=schema, inference=inference,
                       limit=getattr(args, "limit", None),
                       require_labels=need_events if need_labels is None else need_labels, keep_json=keep_json,
                       timestamp_column=times)
    text = data.raw.text
    fmt = f" (numbers: decimal {text.decimal!r}, thousands {text.thousands!r})" if data.raw.kind == "csv" else ""
    rows = "1 row" if data.total == 1 else f"{data.total} rows"
    _say(f"read {rows} from {getattr(args, 'input_shown', args.input)} [{data.raw.kind}]{fmt}")
    for warning in data.warnings:
        _say(f"warning: {warning}")
    if schema is not None:
        seen = {name for row in data.raw.rows if row for name in row}
        unknown = sorted(seen - {r.name for r in schema.fields} - {"event_id", getattr(args, "label_column", None)})
        if unknown:
            _say(f"note: {len(unknown)} field(s) the model's schema does not know are passed through, not "
                 f"features: {', '.join(unknown[:10])}")
        filled = {name for row in data.raw.rows if row for name, value in row.items() if value not in (None, "")}
        # a column empty in every row is absent too; no row read at all (each rejected: a trial's duplicate
        # keys got "every row is rejected as no_features" beside "7 of 7 rows rejected (duplicate_key)")
        parsed = any(row is not None for row in data.raw.rows)
        for warning in absent_warnings(schema, entity, filled) if parsed else ():
            _say(f"warning: {warning}")
    if inference is not None:
        named = {text.split("=", 1)[0].strip() for text in getattr(args, "field", None) or ()}
        for name in inference.overrides:
            if not data.schema[name].note.endswith("(not in the data)"):
                continue
            if name in named:  # typed on the command line: a misspelling (`--field amout=number`, a trial)
                fields = sorted({n for row in data.raw.rows if row for n in row})
                close = difflib.get_close_matches(name, fields, n=1)
                raise ConfigError(f"--field {name}: no such field in {args.input}"
                                  + (f" (did you mean {close[0]!r}?)" if close else f" (fields: {', '.join(fields)})"))
            _say(f"warning: --schema names {name!r}, which is not a field of {args.input}")
    if data.rejected and not (need_events and not data.events):  # else the error says it (a trial: said twice)
        _say(f"warning: {data.rejection_summary()}")
    if need_events and not data.events:
        from .errors import InputError

        raise InputError(f"{args.input}: no row is a valid event ({data.rejection_summary()})")
    return data


def _entity_spec(args: argparse.Namespace) -> Any:
    """The ``EntitySpec`` asked for by ``--entity-key`` (None without one: no entity features)."""
    if args.label_key and not args.feedback:
        raise ConfigError("--label-key needs --feedback FILE: label features are computed from feedback records")
    if args.feedback and not Path(args.feedback).exists():
        raise ConfigError(f"feedback file not found: {args.feedback}")
    other = [k for k in args.label_key or () if k not in (args.entity_key or ())]
    if other and args.entity_key:
        near = difflib.get_close_matches(other[0], args.entity_key, n=1)  # a trial: the typo's hint repeated it
        if near:  # a typo, or a key of its own (payee_id beside payer_id): both ways out
            raise ConfigError(f"--label-key {other[0]} is not an --entity-key: --label-key {near[0]} (a typo?), or "
                              f"add --entity-key {other[0]}")
        raise ConfigError(f"--label-key {other[0]} is not an --entity-key: label features divide by that key's "
                          f"history (add --entity-key {other[0]})")
    if not args.entity_key:
        if args.label_key:
            raise ConfigError("--label-key needs the same key as --entity-key (the share divides by its count)")
        return None
    from .entity import EntitySpec, parse_windows

    try:
        delay = parse_windows(args.label_delay)[0] if args.label_delay not in ("0", "0s") else 0
        within = parse_windows(args.label_within)[0]
        return EntitySpec(keys=tuple(args.entity_key), windows=parse_windows(args.entity_windows),
                          amount_field=args.entity_amount,
                          distinct_fields=tuple(f for f in args.entity_distinct.split(",") if f),
                          label_keys=tuple(args.label_key or ()), label_delay_s=delay, label_within_s=within)
    except ValueError as exc:
        raise ConfigError(f"entity features: {exc}") from exc


def _check_entity_fields(entity: Any, schema: Any, events: list[dict[str, Any]], explicit_distinct: bool,
                         streamed: bool = False) -> Any:
    """Refuse (exit 2) entity options naming a field the input lacks, or an entity key missing from
    every row: the features would be computed from nothing (a typo trains a model without history).
    The default ``--entity-distinct`` keeps those of its fields the input has (said on stderr)."""
    import dataclasses

    present = [f for f in entity.distinct_fields if f in schema]
    if not explicit_distinct and present != list(entity.distinct_fields):
        from .fieldschema import FieldType

        absent = ", ".join(f for f in entity.distinct_fields if f not in present)
        # a trial: "distinct values of no field" on every run of a file without them, and no word of its own fields
        own = [r.name for r in schema.fields if r.type is FieldType.CATEGORY and r.name not in entity.keys]
        offer = (f"; --entity-distinct {','.join(own[:3])} counts the input's own category field"
                 f"{'s' if len(own[:3]) > 1 else ''}" if own else "; the input has no category field to count")
        _say(f"entity features: distinct values of {', '.join(present)} only (the default --entity-distinct "
             f"{_DEFAULT_DISTINCT}: the input has no {absent})" if present else
             f"entity features: no distinct-value features (the default --entity-distinct {_DEFAULT_DISTINCT}: "
             f"the input has no {absent}{offer})")
        entity = dataclasses.replace(entity, distinct_fields=tuple(present))
    options = [("--entity-key", k) for k in entity.keys] + [("--entity-amount", entity.amount_field)] + [
        ("--entity-distinct", f) for f in entity.distinct_fields]
    _require_fields(options, schema, events)
    for key in entity.keys:
        if all(e.get(key) in (None, "") for e in events):
            raise ConfigError(f"--entity-key {key}: the field is empty in every row")
    if all(e.get("timestamp") in (None, "") for e in events):  # no window could advance: history from nothing
        from .fieldschema import FieldType

        # a trial (the handbook's TX_DATETIME): the times were there under another name, unsaid
        times = [r.name for r in schema.fields if r.type is FieldType.TIMESTAMP and r.name != "timestamp"
                 and any(e.get(r.name) not in (None, "") for e in events[:1000])]
        other = (f"; {', '.join(times[:3])} {'holds' if len(times) == 1 else 'hold'} times, but the event time is the "
                 + (f"field named timestamp: rename {'that column' if len(times) == 1 else 'the one that is'} to "
                    "timestamp in the file's header (--timestamp-column is not on the streamed path yet)" if streamed
                    else f"field named timestamp: --timestamp-column {times[0]} reads it as the event time")
                 ) if times else ""
        raise ConfigError("--entity-key needs event times: the input has no timestamp field, or it is empty in "
                          f"every row{other} (docs/entity-features.md)")
    return entity


# a fraud scenario column, ground truth too (the simulator's pattern, the Handbook's TX_FRAUD_SCENARIO)
_SCENARIO_NAMES = frozenset({"pattern", "fraudpattern", "scenario", "fraudscenario", "txfraudscenario"})
_LABEL_NAMES = frozenset({"label", "isfraud", "fraud", "class", "txfraud", "target", "fraudlabel", "isanomaly",
                          "anomaly", "outlier", "isfraudulent", "fraudulent", "chargeback",
                          "ischargeback"}) | _SCENARIO_NAMES


def _scenario_like(name: str) -> bool:
    """A fraud scenario column (``pattern``, ``TX_FRAUD_SCENARIO``): ground truth, but no label to
    train on normal rows with (its codes are kinds of fraud, not fraud or not)."""
    return re.sub(r"[^a-z0-9]", "", name.lower()) in _SCENARIO_NAMES


def label_like_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Columns of ``rows`` named like a fraud label in any common spelling (``is_fraud``, ``TX_FRAUD``,
    ``Class``, ``isFraud``, ``label``: ``_LABEL_NAMES``, case and separators aside) with at most 10
    values. A trial: the handbook's ``TX_FRAUD`` and the ULB file's ``Class`` became features,
    said nowhere; only ``label``, ``is_fraud``, ``fraud`` and ``class``, spelt so, were pointed at."""
    if not rows:
        return []
    names = [k for k in rows[0] if re.sub(r"[^a-z0-9]", "", k.lower()) in _LABEL_NAMES]
    return [k for k in names if len({str(row.get(k)) for row in rows[:10_000]}) <= 10]


def _check_excluded(excluded: Sequence[str], schema: Any, events: list[dict[str, Any]]) -> None:
    """Refuse (exit 2) an ``--exclude`` naming a field the input lacks: a typo would leave the field
    meant to be excluded (a label, say) among the features, without a word."""
    _require_fields([("--exclude", name) for name in excluded], schema, events)


def _check_column_roles(args: argparse.Namespace, entity: Any) -> None:
    """``train``'s options naming a column another option gives a role (trial O; each was "no such
    field in the input" after the whole read, the column renamed by then): ``--exclude`` of the id,
    time or label column is dropped with a note (none is ever a feature); an ``--entity-key`` naming
    one, or ``timestamp`` / ``event_id``, is refused (exit 2): an event's own id or time is no entity
    with a history, and a label is not known when the event arrives."""
    roles = {"event_id": "the event id", "timestamp": "the event time"}
    for flag, column, role in (("--id-column", args.id_column, "the event id"),
                               ("--timestamp-column", args.timestamp_column, "the event time"),
                               ("--label-column", args.label_column, "the label")):
        if column:
            roles[column] = f"the {flag} ({role})"
    if args.exclude:
        kept = []
        for name in args.exclude:
            if name in roles and name not in ("event_id", "timestamp"):
                _say(f"note: --exclude {name}: it is {roles[name]}, never a feature (nothing to exclude)")
            else:
                kept.append(name)
        args.exclude = kept
    for key in entity.keys if entity is not None else ():
        if key in roles:
            raise ConfigError(f"--entity-key {key}: it is {roles[key]}, not an entity with a history (an account, "
                              "a card, a terminal)")


def _training_columns(args: argparse.Namespace) -> dict[str, str]:
    """The bundle's record of ``--id-column`` and ``--timestamp-column`` as given to ``train``
    (``training_id_column``, ``training_timestamp_column``): ``score`` reads a file the same way
    without them (``_columns_from_training``)."""
    return {key: value for key, value in (("training_id_column", args.id_column),
                                          ("training_timestamp_column", args.timestamp_column)) if value}


def _columns_from_training(args: argparse.Namespace, bundle: Any, path: Path, streamed: bool = False) -> None:
    """``score`` without ``--id-column`` / ``--timestamp-column``: the model's, from ``train``, where
    the input ``path`` (the first file of a streamed input) has that column with a value in its
    first row (said). A trial: a model trained with ``--timestamp-column TX_DATETIME`` scored the
    same file without it, every row at its entity's last time, and flagged 97 % of it (a warning
    said so; now the file is read as train read it). ``streamed``: that path has no
    ``--timestamp-column`` yet, so a file holding the model's time column and no ``timestamp`` is
    refused (exit 2) rather than scored without times (trial O: 2,421 of 3,000 flagged)."""
    from .events_io import read_rows

    wanted = [(flag, attr, bundle.metadata.get(key)) for flag, attr, key in (
        ("--id-column", "id_column", "training_id_column"),
        ("--timestamp-column", "timestamp_column", "training_timestamp_column"))
        if getattr(args, attr, None) is None and isinstance(bundle.metadata.get(key), str)]
    if not wanted or not path.is_file():
        return
    rows = read_rows(path, _reader_options(args), limit=1).rows
    first = next((row for row in rows if row), {})
    for flag, attr, column in wanted:
        if first.get(column) in (None, ""):  # absent, or empty in the first row: the usual warnings say what is wrong
            continue
        if streamed and attr == "timestamp_column":
            if "timestamp" not in first:
                raise ConfigError(f"the model was trained with --timestamp-column {column}, and the streamed path has "
                                  "no --timestamp-column yet (docs/big-history.md): score without --streamed, or name "
                                  f"the column timestamp in the files' header")
            continue
        setattr(args, attr, column)
        _say(f"{flag} {column}: the model's (train was given it)")


def _check_fields_early(args: argparse.Namespace, entity: Any) -> None:
    """Refuse (exit 2) ``--exclude`` and the entity options naming a column a CSV or Parquet input
    lacks from its header, before the whole file is read (a trial: a misspelt ``--entity-key`` on a
    large file was refused only once every row had been read and typed). The names are those of
    the first rows (a header's, the same in every row), with ``timestamp`` and ``event_id`` (the
    names ``--timestamp-column`` and ``--id-column`` give a column) and the label column; JSON
    Lines, whose rows may each have other fields, are checked once read (``_require_fields``)."""
    from .events_io import checked_kind, read_rows

    path = Path(args.input)
    if not path.is_file() or checked_kind(path) == "jsonl":
        return
    options = [("--exclude", name) for name in args.exclude or ()]
    if entity is not None:
        options += [("--entity-key", k) for k in entity.keys] + [("--entity-amount", entity.amount_field)]
        if args.entity_distinct != _DEFAULT_DISTINCT:
            options += [("--entity-distinct", f) for f in entity.distinct_fields]
    if not options:
        return
    rows = read_rows(path, _reader_options(args), limit=1).rows
    columns = list(next((row for row in rows if row), {}))
    if not columns:
        return  # no row read: the whole read says what is wrong with the file
    known = {*columns, "timestamp", "event_id", *([args.label_column] if args.label_column else [])}
    for option, name in options:
        if name not in known:
            raise ConfigError(f"{option} {name}: no such field in the input{_near(name, columns)} (fields: "
                              f"{', '.join(columns)})")


def _require_fields(options: Sequence[tuple[str, str]], schema: Any, events: list[dict[str, Any]]) -> None:
    """Refuse (exit 2, with the closest field) an ``(option, field)`` whose field the input lacks:
    neither in its schema as a field of the data, nor in its first 1,000 rows. The fields listed are
    those of these rows (a trial: the list named a ``timestamp`` the files did not have, the
    schema's reserved event-time rule)."""
    for option, name in options:
        if not (name in schema and not schema[name].note.endswith("(not in the data)")) \
                and not any(name in e for e in events[:1000]):
            present = [rule.name for rule in schema.fields if any(rule.name in e for e in events[:1000])]
            raise ConfigError(f"{option} {name}: no such field in the input{_near(name, present)} (fields: "
                              f"{', '.join(present)})")


def _near(name: str, fields: Sequence[str]) -> str:
    """``; did you mean 'x'?`` for the field of ``fields`` closest to a mistyped ``name`` (difflib,
    else one equal but for case), or ``""``."""
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6) or [f for f in fields if f.lower() == name.lower()]
    return f"; did you mean {close[0]!r}?" if close else ""


_DEFAULT_DISTINCT = "merchant_category,country"


def _warn_filling(times: Any, entity: Any) -> None:
    """``entity.columns.filling_warning`` for the training history (``times``: its rows' float64 epoch
    ms, ``_check_order``'s), said when there is one."""
    from .entity.columns import filling_warning
    from .entity_spec import window_name

    longest = max(entity.windows)
    warning = filling_warning(times, longest, window_name(longest))
    if warning:
        _say(warning)


def _check_order(events: list[dict[str, Any]], entity: Any, file_order: bool) -> tuple[int, Any]:
    """Before history features are computed over ``events`` in file order: their rows late within
    their own entities (``entity.columns.late_in_entities``, the model's keys), refused above
    ``LATE_SHARE_REFUSED`` unless ``--file-order`` (``ConfigError``, exit 2), warned of above
    ``LATE_SHARE_WARNED``; rows without a time, warned of above that share too (each is applied at its
    entity's last time: a trial's file with half its times empty had 4,831 of those 5,000 rows
    flagged, nothing said). Returns the late rows' count and the rows' times (float64 epoch ms, NaN: none)."""
    import numpy as np

    from .entity.columns import (
        LATE_SHARE_WARNED,
        entity_codes,
        late_in_entities,
        timestamp_value,
        unsorted_error,
        unsorted_warning,
    )

    times = np.fromiter((timestamp_value(e.get("timestamp")) for e in events), np.float64, len(events))
    keys = tuple(dict.fromkeys((*entity.keys, *entity.label_keys)))
    late = int(np.count_nonzero(late_in_entities(times, [entity_codes(events, key)[1] for key in keys])))
    refused = None if file_order else unsorted_error(late, len(events), keys)
    if refused:
        raise ConfigError(refused)
    warning = unsorted_warning(late, len(events), keys)
    if warning:
        _say(warning)
    untimed = int(np.count_nonzero(np.isnan(times)))
    if untimed and untimed != len(events) and untimed > LATE_SHARE_WARNED * len(events):
        _say(f"warning: {untimed:,} of {len(events):,} rows ({untimed / len(events):.1%}) have no usable timestamp: "
             "history features take each at its entity's last time (seconds since last 0, windows not advanced), "
             "so they score unlike the same events with their times (docs/entity-features.md)")
    return late, times


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from .model.bundle import load_bundle
    from .store import ControlPlane

    bundle = load_bundle(Path(args.dir))
    control = ControlPlane.from_settings(settings)  # artifact goes where SD_MODEL_STORE says
    active = control.active_model()
    version = control.publish(bundle, set_by=_who())
    if active == bundle.version:  # a trial: a new threshold version, and no word that nothing else changed
        _say(f"note: model {bundle.version} was already active; its calibrated threshold is set again (a threshold "
             "set by hand since is replaced)")
    print(f"published model {bundle.version}; threshold {bundle.threshold:.6g} is threshold version {version}")
    return 0


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from .events_io import write_scores
    from .model.bundle import load_bundle
    from .offline import score_events

    if args.threshold is not None:  # `threshold set` refuses the same values (a new-user trial: -1 flagged all)
        from .store.base import threshold_problem

        problem = threshold_problem(args.threshold)
        if problem is not None:
            raise ConfigError(f"--threshold: {problem}")
    if args.out == "-":  # the scores CSV on standard output (a trial: a file named "-" was written)
        args.out = SCORES_STDOUT
    _check_normal_label(args)
    from .model.bundle import device_problem

    problem = device_problem(args.device or settings.device)  # SD_DEVICE is its default (a trial: RuntimeError)
    if problem is not None:
        raise ConfigError(f"--device {args.device}: {problem}" if args.device else
                          f"SD_DEVICE={settings.device}: {problem}")
    model = Path(args.model)
    if not model.exists() and "/" not in args.model:  # a trial: a version the retrainer made, given to score
        raise ConfigError(f"no model bundle at {args.model} (a version in the model registry? "
                          f"stream-detector model export {args.model} --out DIR writes it as a bundle directory)")
    bundle = load_bundle(model)
    normal_from = ""  # where score's normal label came from, when not given
    if args.label_column and args.normal_label is None:  # a trial: 0 against a model trained on legit/fraud
        trained = bundle.metadata.get("training_label_column") == args.label_column
        args.normal_label = str(bundle.metadata.get("training_normal_label", "0")) if trained else "0"
        args.anomaly_labels = frozenset(map(str, bundle.metadata.get("training_anomaly_labels", ()) if trained else ()))
        args.normal_defaulted = not trained  # the file's own labels may say better (_check_normal_present)
        normal_from = (" (the normal label the model was trained with)" if trained else
                       " (the default: the model records no normal label for this column)")
    if args.feedback and not Path(args.feedback).exists():
        raise ConfigError(f"feedback file not found: {args.feedback}")
    _check_file_out(Path(args.out), "--out", [args.input, args.feedback])
    if args.streamed or Path(args.input).is_dir() or any(c in args.input for c in "*?["):
        return _score_streamed(args, settings, bundle, normal_from)
    _columns_from_training(args, bundle, Path(args.input))
    if args.chunk_rows is not None:  # a trial: silently ignored
        _say("note: --chunk-rows is for --streamed (chunk by chunk); this score reads the whole file at once")
    data = _load_file(args, schema=bundle.schema, need_events=False,
                      entity=bundle.entity)  # an older bundle without a schema: the file's own inferred one
    if args.label_column and data.labels is not None:
        _check_normal_present(args, data.labels, normal_from)
    from .inputs import FIELDS_AT, file_warnings

    for warning in file_warnings(bundle.spec, bundle.schema, data.events, "valid rows", settings.redacted_fields,
                                 FIELDS_AT):
        if warning:
            _say(f"warning: {warning}")
    threshold = args.threshold if args.threshold is not None else bundle.threshold
    known: list[Any] = []
    if args.feedback:
        verdicts, known = _feedback_labels(Path(args.feedback), data.events)
        if args.label_column:
            _say(f"note: column {args.label_column!r} is set aside; the scores are evaluated against --feedback")
    if bundle.entity is not None and bundle.entity.label_keys and not args.feedback:
        _say("note: this model has label features; without --feedback FILE no label is known and they are 0")
    if bundle.entity is not None:
        if data.events and all(e.get("timestamp") in (None, "") for e in data.events):  # as train refuses it
            raise ConfigError("the model's history windows run on event time, and no row of this file has a "
                              "timestamp: every row would be taken at its entity's last time (a trial: 97 % of "
                              "such a file flagged). Name the file's time column with --timestamp-column "
                              "(docs/entity-features.md)")
        _check_order(data.events, bundle.entity, args.file_order)
    scored = score_events(bundle, data.events, device=args.device or settings.device, labels=known)
    by_row: dict[int, tuple[float, str | None, str | None]] = {
        row: (score, reason, message) for row, score, reason, message
        in zip(data.rows, scored.scores.tolist(), scored.rejected, scored.messages, strict=True)}
    for rej in data.rejected:
        by_row[rej.index] = (float("nan"), rej.reason.value, rej.message)
    head = bundle.head_threshold
    probability = None
    if scored.probability is not None:
        by_prob = dict(zip(data.rows, scored.probability.tolist(), strict=True))
        probability = [by_prob.get(row, float("nan")) for row in range(len(data.ids))]
    write_scores(Path(args.out), [(event_id, *by_row[row]) for row, event_id in enumerate(data.ids)], threshold,
                 probability, head)
    flagged = int(scored.flagged(threshold, head).sum())
    rule = f"above {threshold:.6g}" + (f" or probability above {head:.4g}" if head is not None else "")
    _say(f"scored {int(scored.valid.sum())} of {data.total} rows; {flagged} {rule} → {_shown(args.out)}")
    if data.ids and not scored.valid.any():
        lines = [by_row[row] for row in range(len(data.ids))]
        first = next(((f"row {row + 1}", why, text) for row, (_, why, text) in enumerate(lines) if why), None)
        raise InputError(none_scored(len(lines), Counter(why for _, why, _ in lines if why), first, args.out))
    if args.feedback:
        import numpy as np

        y = np.array([lab == "fraud" for lab, ok in zip(verdicts, scored.valid.tolist(), strict=True) if ok])
        _say_evaluation(scored, scored.valid, y, threshold, head, "the feedback labels")
    elif args.label_column and data.labels is not None:
        _evaluate_on_label_column(args, scored, data.labels, threshold, head)
    return 0


def _say_evaluation(scored: Any, rows: Any, y: Any, threshold: float, head: float | None, against: str) -> None:
    """The scores of ``rows`` (bool mask over ``scored``'s events) against ``y`` (bool, one per row
    taken): AUC-ROC, AUC-PR, precision/recall at the threshold (``report.evaluate``), and with a
    supervised head its figures and the worker's decision's."""
    from .report import decision_figures, evaluate

    numbers = evaluate(scored.scores[rows], y, threshold)
    only_anomalies = bool(numbers["rows"]) and numbers["anomalies"] == numbers["rows"]
    if only_anomalies:  # a trial: a frauds-only file printed precision=1.0000, true by construction
        numbers = {k: v for k, v in numbers.items() if k not in ("precision", "f1", "accuracy")}
    _say(("the autoencoder" if head is not None else "the model") + f" against {against}: " + _figures(numbers))
    if only_anomalies:
        _say("  (no normal row among them: precision is 1 by construction and left out; recall is the figure)")
    elif not numbers["anomalies"] or numbers["precision"] is None:  # a trial: an all-normal file printed recall=0
        _say("  (" + ("no anomaly among them: recall, F1 and the AUCs are undefined; what this file says is the "
                      "flag rate, alerts that are all false positives" if not numbers["anomalies"]
                      else "no alert among them: precision and F1 are undefined") + ")")
    if scored.probability is not None and head is not None:
        _say("the supervised head against them: " + _figures(evaluate(scored.probability[rows], y, head)))
        _say("the decision (alert when either fires, as the worker does) against them: " + _figures(
            decision_figures(scored.flagged(threshold, head)[rows], y)))


def _check_normal_present(args: argparse.Namespace, labels: list[str], origin: str = "") -> None:
    """``score --label-column``: refused (exit 2) before scoring when no row has the normal label,
    as ``train`` refuses it (a trial: every row counted as an anomaly, figures printed, exit 0).
    ``origin``: where the normal label came from when not given, said with it."""
    from .inputs import _label_text

    normal = _label_text(args.normal_label)
    seen = set(labels) - {""}
    usual, found = _usual_normal(seen)
    if seen and normal not in seen and getattr(args, "normal_defaulted", False):
        if usual is not None:  # a trial: a model trained with --feedback, scored against a file's legit/fraud
            args.normal_label = usual
            _say(f"note: normal rows are those with {args.label_column}={usual!r} (the file's labels: "
                 f"{sorted(seen)[:10]}; the model records no normal label for this column): --normal-label to choose")
            return
    if seen and _frauds_only(args, seen):
        _say(f"note: every labelled row is an anomaly ({args.label_column}: {sorted(seen)[:5]}): a file of anomalies "
             "only; recall is what it can measure")
        return
    if seen and normal not in seen:
        raise ConfigError(f"no row has {args.label_column}={normal!r}{origin} (labels "
                          f"seen: {sorted(seen)[:10]}): give the normal rows' label with --normal-label"
                          + _two_normal_words(found))


# labels that name normal rows, and anomalous ones, in the usual vocabularies (the feedback topic's
# legit/fraud, 0/1, true/false, the usual words): score's defaults when the model records none
# "n" / "y": a Y/N flag column (trial E: --label-column is_fraud on Y/N labels was refused for want of a 0 row)
NORMAL_WORDS = ("legit", "legitimate", "normal", "genuine", "benign", "false", "no", "n")
ANOMALY_WORDS = frozenset({"fraud", "fraudulent", "anomaly", "anomalous", "attack", "1", "true", "yes", "y"})


def _usual_normal(seen: set[str]) -> tuple[str | None, list[str]]:
    """The one label of ``seen`` that is a usual normal word (``NORMAL_WORDS``, in any case: ``Legit``),
    or None; and every such label found (two: the user chooses)."""
    found = sorted(label for label in seen if label.strip().lower() in NORMAL_WORDS)
    return (found[0] if len(found) == 1 else None), found


def _two_normal_words(found: list[str]) -> str:
    return (f"; the labels {', '.join(map(repr, found))} each read as normal: give one with --normal-label"
            if len(found) > 1 else "")


def _frauds_only(args: argparse.Namespace, seen: set[str]) -> bool:
    """Whether ``score``'s labels ``seen`` are all anomaly labels: of the model's training (the
    normal label taken from the model), or usual anomaly words (``ANOMALY_WORDS``) under a normal
    label that is a usual normal word (``--normal-label legit`` on a file of ``fraud`` rows): a
    frauds-only file (two trials: refused as if the normal label were misspelt)."""
    known: frozenset[str] = getattr(args, "anomaly_labels", frozenset())
    usual = str(args.normal_label).strip().lower() in NORMAL_WORDS or args.normal_label == "0"
    return bool(seen) and (seen <= known or (usual and {label.strip().lower() for label in seen} <= ANOMALY_WORDS))


def _evaluate_on_label_column(args: argparse.Namespace, scored: Any, labels: list[str], threshold: float,
                              head: float | None) -> None:
    """``score --label-column C``: the scores against the file's own labels (a row whose label is not
    ``--normal-label`` is an anomaly, as ``train`` reads them); rows without a label are left out,
    and said. A new-user trial: the column was set aside and nothing said how the model did."""
    import numpy as np

    from .inputs import _label_text

    normal = _label_text(args.normal_label)
    labelled = np.array([lab != "" for lab in labels], dtype=bool)
    rows = scored.valid & labelled
    missing = int((scored.valid & ~labelled).sum())
    if not rows.any():
        _say(f"note: no scored row has a label in column {args.label_column!r}: nothing to evaluate")
        return
    y = np.array([lab != normal for lab in labels])[rows]
    if y.all() and not _frauds_only(args, set(labels) - {""}):
        _say(f"warning: no scored row has the normal label {normal!r} in column {args.label_column!r} (labels seen: "
             f"{sorted(set(labels) - {''})[:10]}): give the normal rows' label with --normal-label")
    _say_evaluation(scored, rows, y, threshold, head,
                    f"column {args.label_column!r} ({int(y.sum())} of {int(rows.sum())} rows not {normal!r})"
                    + (f"; {missing} scored rows without a label left out" if missing else ""))


def _score_streamed(args: argparse.Namespace, settings: Settings, bundle: Any, normal_from: str = "") -> int:
    """``score --streamed`` (or a directory / glob input): chunk by chunk, same lines (big/score.py)."""
    from .big.score import score_stream
    from .big.source import input_files

    for flag, given in (("--feedback", args.feedback), ("--timestamp-column", args.timestamp_column)):
        if given:
            raise ConfigError(f"{flag} is not available on the streamed path yet (docs/big-history.md)")
    if bundle.entity is not None and bundle.entity.label_keys:
        _say("note: this model has label features; on the streamed path no label is known and they are 0")
    args.chunk_rows = 65_536 if args.chunk_rows is None else args.chunk_rows
    if args.chunk_rows < 1:
        raise ConfigError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
    files = input_files(args.input)
    _check_file_out(Path(args.out), "--out", [str(f) for f in files])  # a folder's or glob's own file
    if files:
        _columns_from_training(args, bundle, Path(files[0]), streamed=True)
    threshold = args.threshold if args.threshold is not None else bundle.threshold
    with _terminated_as_interrupt():
        done = score_stream(bundle, files, Path(args.out), reader=_reader_options(args), threshold=threshold,
                            device=args.device or settings.device, id_column=args.id_column,
                            label_column=args.label_column, chunk_rows=args.chunk_rows, say=_say,
                            redacted=settings.redacted_fields, file_order=args.file_order)
    head = bundle.head_threshold
    rule = f"above {threshold:.6g}" + (f" or probability above {head:.4g}" if head is not None else "")
    took = f"{done.seconds:.{0 if done.seconds >= 10 else 1}f}"  # a trial: 20,000 rows "in 0 s"
    _say(f"scored {done.scored} of {done.rows} rows from {len(files)} file(s) in {took} s "
         f"({done.rows / max(done.seconds, 1e-9):,.0f} rows/s); {done.flagged} {rule} → {_shown(args.out)}")
    if done.rows and not done.scored:
        raise InputError(none_scored(done.rows, done.reasons, done.first_problem, args.out))
    if done.scored < done.rows and done.first_problem:  # the in-memory summary (a trial: this path said no reason)
        from .inputs import rejection_line

        where, why, text = done.first_problem
        _say(f"warning: {rejection_line(done.rows - done.scored, done.rows, done.reasons, f'{where}: {text or why}')}; "
             f"every row's reason is in {_shown(args.out)}")
    if args.label_column and done.labelled is not None and done.labels:  # as without --streamed (a trial: set aside)
        _check_normal_present(args, done.labels, normal_from)
        _evaluate_on_label_column(args, done.labelled, done.labels, threshold, head)
    return 0


def _say_created(producer: Any) -> None:
    """A topic the producer created (``SD_CREATE_TOPICS``) is said: a misspelt ``--topic`` is a new
    topic, not an error (a trial: ``produced 5 events to tA.nosuch3``, nothing else)."""
    for topic in producer.created:
        _say(f"note: created topic {topic} ({producer.settings.topic_partitions} partitions, SD_TOPIC_PARTITIONS); "
             "it did not exist")


def none_scored(rows: int, reasons: Counter[str], first: tuple[str, str, str | None] | None, out: str) -> str:
    """``score``'s one line when no row could be scored (every row rejected: a file that is not this
    model's input, most often): how many rows per reason, the first one's message, and where each
    row's reason is."""
    counts = ", ".join(f"{n:,} {why}" for why, n in reasons.most_common())
    where = f" ({first[0]}: {first[2] or first[1]})" if first else ""
    return f"none of the {rows:,} rows could be scored: {counts}{where}; every row's reason is in {_shown(out)}"


SCORES_STDOUT = "/dev/stdout"  # ``score --out -``: write_scores opens it as a file


def _shown(out: str) -> str:
    """``out`` as ``score``'s lines name it: ``--out -`` is "standard output", not /dev/stdout (a trial)."""
    return "standard output" if out == SCORES_STDOUT else out


# ---- streaming -------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    # SIGTERM/SIGINT before the loop runs (importing torch, loading the model, joining the group: seconds
    # on a busy host) is a stop as any other, exit 0: a CI run's worker, stopped while it started, died of
    # the default action (-15) with its slot claimed
    stopping = threading.Event()
    started: list[Any] = []

    def on_signal(*_: Any) -> None:
        stopping.set()
        for w in started:
            w.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    from .worker import Worker

    slot = None
    if settings.delivery == "exactly_once":  # the transactional id's slot on this host (slot.py)
        from .slot import claim

        slot = claim(settings.group_id, settings.worker_id, explicit="worker_id" in settings.model_fields_set,
                     folder=settings.slot_dir)
        if slot.worker_id != settings.worker_id:
            _say(f"worker slot {slot.worker_id}: {settings.worker_id} is taken by another worker of group "
                 f"{settings.group_id} on this host (transactional id {settings.group_id}-{slot.worker_id})")
            settings = settings.model_copy(update={"worker_id": slot.worker_id})
            _setup_logging(settings, args.verbose, one_shot=False, worker=True)  # the log lines name the slot
    worker = Worker(settings)  # no I/O yet
    started.append(worker)
    if stopping.is_set():  # stopped before anything was started: nothing to close
        if slot is not None:
            slot.release()
        _say("worker stopped before it started")
        return 0
    worker.start()  # a stop asked meanwhile: run closes it at once
    stats = worker.run(max_idle_polls=args.max_idle_polls)
    elapsed = time.monotonic() - stats.started_at
    rate = stats.events / max(stats.busy_s, 1e-9)  # while busy: the idle polls before a stop are not throughput
    reasons = (" (" + ", ".join(f"{reason} {n}" for reason, n in sorted(stats.rejected_by_reason.items())) + ")"
               if stats.rejected else "")  # "3 rejected (wrong_type 3)", not a Python dict
    waited = worker.peer_wait_s()
    if waited >= 0.05 * max(stats.busy_s, 1e-9):  # several workers taking turns in event time
        reasons += (f"; {waited:.1f} s spent waiting for other workers' partitions "
                    "(docs/operations.md, 'Partitions and workers')")
    done = (f"{stats.events} events forwarded" if settings.stage == "repartition"  # stage 1 never alerts
            else f"{stats.alerts} alerts")
    if stats.abandoned_batches:  # at least once: what is read again is counted again (a review, 2026-12-07)
        n = stats.abandoned_batches
        reasons += (f"; {n} batch{'es' if n != 1 else ''} given up and read again after a rebalance or a failed "
                    "write: their events and alerts are counted each time they were handled")
    _say(f"worker stopped: {stats.events} events in {stats.batches} batches, {rate:,.0f} events/s while busy "
         f"({stats.busy_s:.1f} s of {elapsed:.1f} s running), {done}, {stats.rejected} dead letters{reasons}")
    if slot is not None:
        slot.release()
    return 0


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from .fieldschema import FieldType
    from .producer import EventProducer

    if not (math.isfinite(args.rate) and args.rate >= 0):  # as simulate (a new-user trial: -5 was taken)
        raise ConfigError(f"--rate must be a number >= 0 (0: as fast as possible), got {args.rate}")
    if args.feedback:
        if args.skip:
            raise ConfigError("--skip goes on with an events file; labels sent twice are harmless (an event's "
                              "winning label stays the same, docs/feedback.md): send the whole feedback file again")
        for flag, given in (("--rate", args.rate), ("--exclude", args.exclude)):
            if given:  # trial I: both accepted and ignored
                raise ConfigError(f"{flag} applies to events, not to --feedback (labels are sent as fast as Kafka "
                                  "takes them, each record as the feedback contract has it)")
        return _produce_feedback(args, settings)
    # a JSON Lines file's rows are sent as the file has them (event contract checked, nothing retyped); a CSV's
    # or Parquet's are typed by the schema inferred from the file (text → numbers, booleans, epoch ms)
    data = _load_file(args, inference=_inference(args, None), keep_json=True, need_labels=False)
    names = {name for event in data.events[:100] for name in event}
    names |= {args.label_column} if args.label_column else set()
    if "label" in names and names <= {"event_id", "label", "source", "labelled_at"}:
        # a trial: sent to the input topic, each one dead-lettered by the worker as no_features
        raise ConfigError(f"{args.input} holds feedback records (event_id, label, source, labelled_at), not events: "
                          "send them with produce --feedback (to SD_FEEDBACK_TOPIC)")
    if data.raw.kind == "jsonl" and (getattr(args, "field", None) or getattr(args, "schema", None)):
        _say("warning: --field/--schema type a CSV or Parquet file; a JSON Lines file is sent as it is written "
             "(the worker types each event by its model's schema)")
    if args.exclude:
        if "event_id" in args.exclude:
            raise ConfigError("--exclude event_id: every event needs its event_id")
        if args.label_column and args.label_column in args.exclude:
            raise ConfigError(f"--exclude {args.label_column}: it is the --label-column, which never stays in the "
                              "event (it goes to the sd.label header); drop one of the two options")
        _check_excluded(args.exclude, data.schema, data.events)
        for event in data.events:
            for name in args.exclude:
                event.pop(name, None)
    if data.raw.kind != "jsonl":
        _numbers_as_written(data, [r.name for r in data.schema.fields if r.type is FieldType.TIMESTAMP],
                            [r.name for r in data.schema.fields if r.type is FieldType.NUMBER])
    events, labels = data.events, data.labels
    if args.skip:
        if args.skip >= len(events):
            raise ConfigError(f"--skip {args.skip} leaves nothing to send: {args.input} has {len(events)} events")
        events, labels = events[args.skip:], None if labels is None else labels[args.skip:]
        _say(f"the file's first {args.skip} events left out (--skip)")
    _probe_kafka(settings)
    producer = EventProducer(settings, args.topic or settings.input_topic)
    try:
        with Stopping.installed() as stopping, producer:  # Ctrl-C: the send stops between two chunks
            _say_created(producer)
            sent = producer.send_paced(events, labels, rate=args.rate, progress=_say, stop=stopping.event.is_set)
    except KeyboardInterrupt:  # a trial: "interrupted", and no word of how many events got there
        # trial G: and no way to go on but cutting the file by hand
        _say(f"interrupted: {producer.acknowledged} of the {len(events)} events were acknowledged by "
             f"{args.topic or settings.input_topic} (sent in file order; the rest were not sent, or not confirmed); "
             f"to send the rest, the same command with --skip {args.skip + producer.acknowledged_in_order} (the "
             "file's events up to there were all acknowledged)", "ERROR")
        raise
    left = f"; {len(data.rejected)} rejected row(s) not sent (reasons above)" if data.rejected else ""
    bare = sum(1 for label in labels or () if not label)
    if bare:
        left += (f"; {bare} events sent without a label (no value in column {args.label_column}): no sd.label "
                 "header")
    if producer.unkeyed:
        left += (f"; {producer.unkeyed} sent without a key (no value in {producer.key_field}, the field "
                 "SD_ENTITY_PARTITION_KEY names), to any partition: fine for a model without history; for one with "
                 "history per another field (a customer), set SD_ENTITY_PARTITION_KEY to it here and for the workers")
    _say(f"produced {sent} events to {args.topic or settings.input_topic} keyed by {producer.key_field}{left}")
    return 0


def _numbers_as_written(data: Any, times: list[str], numbers: list[str]) -> None:
    """A CSV's or Parquet's numbers go out as the file wrote them, so the event on the topic (and
    the alert's copy of it) does not depend on the file's format: a whole epoch-ms timestamp
    typed from text (a float) as the integer any producer writes (``1792567621113``, not
    ``1792567621113.0``); a number field's value as an integer where the file wrote one (CSV text
    without a decimal mark or exponent, ``3`` or ``1,204``; a Parquet integer), as a number with a
    fraction otherwise (``3.0`` stays ``3.0``). A trial: ``n_items`` 3 in a CSV arrived as ``3.0``.
    The worker types each field by its model's schema either way: features and scores are the same."""
    decimal = data.raw.text.decimal
    for event, row in zip(data.events, data.rows, strict=True):
        for name in times:
            value = event.get(name)
            if type(value) is float and value.is_integer() and abs(value) < 2**53:
                event[name] = int(value)
        raw = data.raw.rows[row]
        for name in numbers:
            value = event.get(name)
            if type(value) is not float or not value.is_integer() or abs(value) >= 2**53:
                continue
            written = raw.get(name)
            if type(written) is int or (isinstance(written, str) and decimal not in written
                                         and "e" not in written.lower() and any(c.isdigit() for c in written)):
                event[name] = int(value)


def _produce_feedback(args: argparse.Namespace, settings: Settings) -> int:
    """``produce --feedback``: a labels file (the feedback contract, docs/feedback.md) onto the
    feedback topic, keyed by event id. Rows that are not labels are left out and said (count and
    the first, as ``train --feedback`` says them); an event id repeated is normal here (an
    analyst's verdict, then a chargeback)."""
    from .events_io import read_rows
    from .feedback import Label, parse_label
    from .producer import EventProducer

    for name in ("id_column", "label_column", "timestamp_column"):
        if getattr(args, name):
            raise ConfigError(f"--{name.replace('_', '-')} applies to events, not to --feedback")
    raw = read_rows(Path(args.input), _reader_options(args), limit=args.limit)
    records: list[dict[str, Any]] = []
    rejected = [(r.index, r.reason.value, r.message) for r in raw.rejected]
    for index, row in enumerate(raw.rows):
        if row is None:
            continue
        label = parse_label(row)
        if isinstance(label, Label):
            records.append(label.as_record())
        else:
            rejected.append((index, label[0].value, label[1]))
    if not records:
        from .inputs import events_file_hint

        first = f" (row {min(rejected)[0] + 1}: {min(rejected)[1]}: {min(rejected)[2]})" if rejected else ""
        raise InputError(f"{args.input}: no feedback records{first}{events_file_hint(raw.rows)}")
    topic = args.topic or settings.feedback_topic
    if rejected:
        index, reason, message = min(rejected)
        counts = Counter(why for _, why, _ in rejected)  # per reason, as produce's events and score say them
        _say(f"warning: {len(rejected)} of {len(raw.rows)} rows are not labels and are left out "
             f"({', '.join(f'{k} {v}' for k, v in counts.most_common())}; e.g. row {index + 1}: {reason}: {message})")
    now_ms = time.time() * 1000.0
    ahead = [r["labelled_at"] for r in records if r["labelled_at"] > now_ms + 60_000.0]
    if ahead:  # e.g. a simulated file ending now: its chargebacks are not due yet (live simulate holds them)
        _say(f"warning: {len(ahead)} of {len(records)} labels are dated after now (up to "
             f"{(max(ahead) - now_ms) / 86_400_000.0:.1f} days ahead); they are sent now: label features "
             "count each from its labelled_at; the retrainer counts it once it has read it (docs/feedback.md)")
    _probe_kafka(settings)
    with EventProducer(settings, topic) as producer:
        _say_created(producer)
        producer.send_records(topic, records)
    _say(f"produced {len(records)} labels to {topic}")
    return 0


_MAX_IMPLIED_EVENTS = 1_000_000_000  # a live run's rate x duration past this is a typing slip, not a load test


def _same_target(a: str, b: str) -> bool:
    """Whether output paths ``a`` and ``b`` (``-``: standard output) name one file: the same path
    (links resolved), a hard link, or standard output by another name (/dev/stdout)."""
    def stat(path: str) -> os.stat_result | None:
        try:
            return os.fstat(1) if path == "-" else os.stat(path)
        except OSError:
            return None

    if a == b or (a != "-" and b != "-" and Path(a).resolve() == Path(b).resolve()):
        return True
    sa, sb = stat(a), stat(b)
    return sa is not None and sb is not None and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    import contextlib

    from .events_io import file_kind, names_a_format
    from .history_files import EVENT_SCHEMA, LABEL_SCHEMA, STDOUT, ChunkWriter, SortedLabels, event_columns
    from .producer import EventProducer
    from .simulate import HandbookSimulator, LabelDelays, Simulator

    def named(path: Path) -> str:
        return "standard output" if str(path) == STDOUT else str(path)

    def writer(path: Path, schema: Any = None) -> ChunkWriter:
        if str(path) == STDOUT:  # JSON Lines on stdout (a trial: `--out -` wrote a CSV file named "-")
            return ChunkWriter(path, "jsonl")
        if not names_a_format(path):  # .tsv too: written with commas
            _say(f"note: {path}: its extension names no format (.csv, .jsonl, .parquet): written as CSV")
        try:
            return ChunkWriter(path, file_kind(path), schema)
        except ValueError as exc:  # a compressed Parquet name
            raise ConfigError(str(exc)) from None
        except OSError as exc:  # a folder that takes no files (/proc), no permission, a full disk
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None

    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    if not (math.isfinite(args.rate) and args.rate >= 0):
        raise ConfigError(f"--rate must be a number >= 0 (0: as fast as possible), got {args.rate}")
    if not (math.isfinite(args.duration) and args.duration >= 0):
        raise ConfigError(f"--duration must be a number of seconds >= 0, got {args.duration}")
    if not args.out and args.count is None and int(args.rate * args.duration) < 1:
        raise ConfigError(f"--rate {args.rate:g} for --duration {args.duration:g} s is no event: give --count N, "
                          "or a rate and duration whose product is at least 1")
    if not args.out and args.count is None and args.rate * args.duration > _MAX_IMPLIED_EVENTS:
        implied = args.rate * args.duration
        raise ConfigError(f"--rate {args.rate:g} for --duration {args.duration:g} s is {implied:,.0f} "
                          f"events (more than {_MAX_IMPLIED_EVENTS:,}): give --count N, or a smaller rate or duration")
    if args.out == STDOUT and args.feedback_out == STDOUT:
        raise ConfigError("--out - and --feedback-out -: only one of them can go to standard output")
    if args.out and args.out != STDOUT:
        _check_file_out(Path(args.out), "--out")
    if args.feedback_out and args.feedback_out != STDOUT:
        _check_file_out(Path(args.feedback_out), "--feedback-out")
    if args.out and args.feedback_out and _same_target(args.out, args.feedback_out):
        # a trial: the labels were written over the events' first rows, exit 0
        raise ConfigError(f"--out {args.out} and --feedback-out {args.feedback_out} are the same file: events and "
                          "labels go to two files")
    typed = {a.split("=", 1)[0] for a in _ARGV}
    live_only = [flag for flag in ("--rate", "--duration") if flag in typed]
    if args.out and live_only:  # a trial: `--out - --rate 100 --duration 2` wrote the default 10,000 rows
        raise ConfigError(f"{' and '.join(live_only)} go with live runs (events sent as they are made); an --out "
                          "file's size is --count N and its time span --span-days")
    if args.end is not None and not args.out:  # before --end's value is judged: the first problem to fix
        raise ConfigError("--end goes with --out (a live run's events end when it does: --clock)")
    if args.clock is not None and args.out:
        raise ConfigError("--clock goes with live runs (an --out file's events span --span-days)")
    for flag, value in (("--span-days", args.span_days), ("--chunk-rows", args.chunk_rows)):
        if value is not None and not args.out:  # was: ignored, and a 60 s live run started (a new-user trial)
            raise ConfigError(f"{flag} goes with --out (a file's time span and write chunks; live events are "
                              f"sent as they are made)")
    args.span_days = 7.0 if args.span_days is None else args.span_days
    args.chunk_rows = 100_000 if args.chunk_rows is None else args.chunk_rows
    end_ms = _end_ms(args.end) if args.end is not None else None
    if not 0 <= args.seed < SEED_LIMIT:  # simulate checks its own (its tests call main, not argparse's exit)
        raise ConfigError(f"--seed must be >= 0 and < 2**32, got {args.seed}")
    if args.chunk_rows < 1:
        raise ConfigError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
    if args.run_id is None:  # files: reproducible by seed; live: never the ids of a file or of another run
        args.run_id = _file_run_id(args, end_ms) if args.out else "live-" + time.strftime("%Y%m%dT%H%M%SZ",
                                                                                           time.gmtime())
    if args.profile == "velocity":
        for name in ("terminals", "feedback_out", "label_delay_scale", "clock"):
            if getattr(args, name) is not None:
                raise ConfigError(f"--{name.replace('_', '-')} applies to --profile handbook")
        fraud_rate = 0.01 if args.fraud_rate is None else args.fraud_rate
        sim = Simulator(seed=args.seed, accounts=args.accounts or 2000, run_id=args.run_id)
        if args.out:
            count = 10_000 if args.count is None else args.count
            out = Path(args.out)
            with writer(out) as velocity_file:  # one batch (its random stream), written in chunks
                events, labels = sim.batch(count, fraud_rate, now_ms=end_ms, span_ms=args.span_days * 86_400_000)
                rows = [{**e, "label": "legit" if lab == "legit" else "fraud", "pattern": lab}
                        for e, lab in zip(events, labels, strict=True)]
                for start in range(0, count, args.chunk_rows):
                    part = rows[start:start + args.chunk_rows]
                    velocity_file.write({k: [row[k] for row in part] for k in rows[0]})
            _say(f"wrote {count} events ({sum(lab != 'legit' for lab in labels)} fraud) to {named(out)}")
            return 0
        total = args.count if args.count is not None else int(args.rate * args.duration)
        _probe_kafka(settings)
        velocity = EventProducer(settings, args.topic or settings.input_topic)
        with _interrupted_run(velocity) as stop, velocity:
            _say_created(velocity)
            sent, frauds = velocity.simulate(sim, total, args.rate, fraud_rate, progress=_say, stop=stop)
        _say(f"simulated {sent} events ({frauds} injected fraud) into {args.topic or settings.input_topic}")
        return 0

    if args.fraud_rate is not None:
        raise ConfigError("--fraud-rate applies to --profile velocity; the handbook profile's fraud comes from "
                          "its scenarios (docs/simulator.md)")
    if args.feedback_out and not args.out:
        raise ConfigError("--feedback-out goes with --out (live, labels are published to the feedback topic)")
    delays = LabelDelays(scale=1.0 if args.label_delay_scale is None else args.label_delay_scale)
    if not delays.scale >= 0:
        raise ConfigError(f"--label-delay-scale must be >= 0, got {args.label_delay_scale}")
    if not args.span_days >= 0:
        raise ConfigError(f"--span-days must be >= 0, got {args.span_days}")
    customers = 5000 if args.accounts is None else args.accounts
    terminals = 10_000 if args.terminals is None else args.terminals
    if customers < 1 or terminals < 1:
        raise ConfigError(f"--accounts and --terminals must be >= 1, got {customers} and {terminals}")
    try:
        hb = HandbookSimulator(seed=args.seed, customers=customers, terminals=terminals, run_id=args.run_id)
    except ValueError as exc:  # e.g. so few terminals that no customer has one within reach
        raise ConfigError(str(exc)) from None
    if args.out:  # chunk by chunk (docs/simulator.md "Big history files"): memory bounded by --chunk-rows
        count = 10_000 if args.count is None else args.count
        out, feedback = Path(args.out), Path(args.feedback_out) if args.feedback_out else None
        frauds = labels_written = 0
        started = last_said = time.monotonic()
        sorter = SortedLabels(delays)  # the labels sorted by labelled_at over the file, as each falls due
        with contextlib.ExitStack() as files:
            events_file = files.enter_context(writer(out, EVENT_SCHEMA))
            labels_file = files.enter_context(writer(feedback, LABEL_SCHEMA)) if feedback else None
            for chunk in hb.history(count, int(args.span_days * 86_400_000), end_ms, chunk=args.chunk_rows):
                events_file.write(event_columns(chunk))
                frauds += int(chunk.fraud.sum())
                if labels_file is not None:
                    due = sorter.add(chunk)
                    labels_file.write(due)
                    labels_written += len(due["event_id"])
                now = time.monotonic()
                if now - last_said >= 5 and events_file.rows < count:
                    rate = events_file.rows / (now - started)
                    _say(f"simulate: {events_file.rows:,} of {count:,} rows written ({rate:,.0f} rows/s, "
                         f"~{(count - events_file.rows) / rate:,.0f} s left)")
                    last_said = now
            if labels_file is not None:
                rest = sorter.finish()
                labels_file.write(rest)
                labels_written += len(rest["event_id"])
        elapsed = time.monotonic() - started
        _say(f"wrote {count} events ({frauds} fraud) to {named(out)} in {elapsed:.1f} s "
             f"({count / max(elapsed, 1e-9):,.0f} rows/s){_pace_said(hb, count, args.span_days)}")
        if feedback:
            _say(f"wrote {labels_written} delayed labels to {named(feedback)}")
        return 0
    total = args.count if args.count is not None else int(args.rate * args.duration)
    topic = args.topic or settings.input_topic
    if args.clock != "wall":
        _check_world_span(hb, total)
    _probe_kafka(settings)
    producer = EventProducer(settings, topic)
    with _interrupted_run(producer) as stop, producer:
        _say_created(producer)
        if args.clock == "wall":
            _say(_wall_clock_line(delays, total, args.rate))
            sent, frauds, published, pending = producer.simulate_handbook(hb, total, args.rate, delays,
                                                                          settings.feedback_topic, progress=_say,
                                                                          stop=stop)
        else:  # the world's clock, ending when the run should: no event ahead of the time it is sent
            span = hb.world_span_ms(total)
            end_ms = _world_end_ms(time.time() * 1000, total, args.rate, span)
            _say(_world_clock_line(hb, total, args.rate, end_ms))
            _say_overlap(settings, topic, end_ms - span)
            sent, frauds, published, pending = producer.simulate_world(hb, total, args.rate, delays,
                                                                       settings.feedback_topic, end_ms, progress=_say,
                                                                       stop=stop)
    _say(f"simulated {sent} events ({frauds} fraud) into {topic}; {published} delayed labels published to "
         f"{settings.feedback_topic} ({pending} not yet due at the end)")
    return 0


def _span_text(ms: float) -> str:
    """A duration for a person: days, hours, minutes or seconds, whichever reads best."""
    for unit, size in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000)):
        if ms >= size:
            value = ms / size
            return f"{value:,.1f} {unit}s" if round(value, 1) != 1 else f"1 {unit}"
    return f"{ms / 1000:,.1f} s"


def _utc(ms: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(ms / 1000))


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


_LONG_SPAN_DAYS = 90  # a live run spanning more than this much simulated time is said (a trial: back to 2020)


def _world_clock_line(sim: Any, total: int, rate: float, end_ms: int) -> str:
    """``simulate``'s first live line on the world's clock: the run's simulated span (UTC start and
    end), the world's pace and what a second of sending is in simulated time."""
    span = sim.world_span_ms(total)
    line = (f"clock: world: {_plural(total, 'event')} from {_utc(end_ms - span)} to {_utc(end_ms)} "
            f"({_span_text(span)} of simulated time at the world's pace: {sim.events_per_day:,.0f} events a day "
            f"from {_plural(sim.customers, 'card')}")
    if rate > 0:
        line += f"; 1 s of sending = {_span_text(rate / sim.events_per_day * 86_400_000)} of it"
    line += "; --clock wall stamps each event as it is sent)"
    if span > _LONG_SPAN_DAYS * 86_400_000:
        line += (f"; note: more than {_LONG_SPAN_DAYS} days back: fewer events (--count, --duration) or a larger "
                 f"world (--accounts) shorten it")
    return line


_MAX_SPAN_DAYS = 5 * 365  # workers dead-letter timestamps over 10 years outside a model's training range


def _check_world_span(sim: Any, total: int) -> None:
    """Refuse a world-clock run whose span reaches back years (``ConfigError``): its first events
    would look implausible to a model trained on recent history (a review: a day at 2,000/s spans 47
    years of a 5,000-card world)."""
    days = sim.world_span_ms(total) / 86_400_000
    if days > _MAX_SPAN_DAYS:
        raise ConfigError(f"{total:,} events at the world's pace ({sim.events_per_day:,.0f} a day from "
                          f"{_plural(sim.customers, 'card')}) span {days / 365:,.0f} years of simulated time: fewer "
                          f"events, a larger world (--accounts), or --clock wall for a load test")


def _world_end_ms(now_ms: float, total: int, rate: float, span_ms: int) -> int:
    """The end of a world-clock run's span: when its sending ends (``total / rate`` from ``now_ms``;
    now, unpaced), or sooner where the world's pace is faster than ``rate``: event ``i``, sent at
    ``now + i / rate``, is stamped ``end - span + i * span / total``, never later than its send."""
    sending_ms = total / rate * 1000 if rate > 0 else 0.0
    return int(now_ms + min(sending_ms, span_ms))


def _pace_said(sim: Any, count: int, span_days: float) -> str:
    """``simulate --out``'s last line, continued where the file's events a day are not the world's own
    pace (that of its live runs) by more than a quarter: a model trained on it then sees live cards
    pay more or less often than in training (a trial: the README's 200,000 over 42 days, 0.48x; a
    live run's alert share climbed 0.9 -> 3.2 % where a file at the world's pace kept it flat)."""
    if span_days <= 0 or count < 1_000:
        return ""
    ratio = count / span_days / sim.events_per_day
    if 0.8 <= ratio <= 1.25:
        return ""
    return (f"; {count / span_days:,.0f} events a day, {ratio:.2f}x this world's pace ({sim.events_per_day:,.0f} a "
            f"day), that of its live runs: --count {round(sim.events_per_day * span_days):,} matches it")


def _wall_clock_line(delays: Any, total: int, rate: float) -> str:
    """``simulate --clock wall``'s first line: events stamped as sent, and when labels can come due."""
    line = "clock: wall: each event stamped as it is sent"
    if rate > 0:
        lasting = total / rate * 1000
        first = min(delays.analyst_hours[0] * 3_600_000, delays.chargeback_days[0] * 86_400_000) * delays.scale
        if first >= lasting:  # a trial: "0 delayed labels published (892 not yet due)", nothing said before
            line += (f"; no label comes due within the run's {_span_text(lasting)} (the first after "
                     f"{_span_text(first)}: --label-delay-scale shortens the delays)")
    return line


def _say_overlap(settings: Settings, topic: str, first_ms: int) -> None:
    """Warn when ``topic`` already holds events newer than this run's first (an earlier run's): against
    the same entity state they arrive late for the cards and terminals that paid since."""
    import kafka.errors

    from .kafka_util import tail

    newest: list[int] = []

    def keep(record: Any) -> None:
        try:
            at = orjson.loads(record.value).get("timestamp")
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return
        if isinstance(at, int) and not isinstance(at, bool):
            newest.append(at)
    try:
        tail(settings, topic, 8, False, keep)
    except (ConfigError, kafka.errors.KafkaError):  # nothing to compare with: no warning
        return
    if newest and max(newest) > first_ms:
        _say(f"warning: {topic} already holds events up to {_utc(max(newest))} (an earlier run?), after this run's "
             f"first ({_utc(first_ms)}): unless the workers start on a fresh SD_REDIS_PREFIX (the model published "
             "there), they get this run's events late for the cards and terminals that paid since, and alert more (a "
             "trial: 3.5 % → 7.4 %); or use --clock wall (docs/simulator.md, Live runs)",
             "WARNING")


@contextlib.contextmanager
def _interrupted_run(producer: Any) -> Iterator[Callable[[], bool]]:
    """A live ``simulate`` under Ctrl-C/SIGTERM: the run stops between two chunks, and says how far it
    got (a trial: "interrupted" alone)."""
    from .stopping import Stopping

    try:
        with Stopping.installed() as stopping:
            yield stopping.event.is_set
    except KeyboardInterrupt:
        labels = f" and {_plural(producer.sent_labels, 'delayed label')}" if producer.sent_labels else ""
        _say(f"interrupted: {_plural(producer.sent_events, 'event')}{labels} sent to Kafka, "
             f"{producer.acknowledged:,} records acknowledged", "ERROR")
        raise


def _end_ms(text: str) -> int:
    """``simulate --end``: epoch ms of an RFC 3339 time or a date (its midnight), UTC when no offset
    is given. Raises ``ConfigError`` for anything else."""
    from .schema import parse_timestamp_ms

    try:
        end = int(parse_timestamp_ms(text.strip()))
    except ValueError:
        raise ConfigError(f"--end {text!r}: expected an RFC 3339 time or a date, e.g. 2026-06-15 or "
                          "2026-06-15T12:00:00Z") from None
    if not 0 < end < 4_102_444_800_000:  # 1970 .. 2100: outside, the events' times are implausible when scored
        raise ConfigError(f"--end {text}: expected a time between 1970 and 2100")
    from .fieldschema import FUTURE_MS, future_limit_ms

    if end > future_limit_ms():  # scored or trained on, such events are dead-lettered as implausible_timestamp
        raise ConfigError(f"--end {text}: more than {FUTURE_MS / 86_400_000:g} day ahead of this machine's clock; "
                          "events after it are implausible (docs/simulator.md)")
    return end


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from .kafka_util import tail
    from .transport.base import Unreadable

    topic = _topic_named(args.topic, settings)
    if args.n < 0:
        raise ConfigError(f"-n must be >= 0, got {args.n}")

    def show(record: Any) -> None:
        if isinstance(record.value, Unreadable):  # a corrupt batch, a codec the client lacks: no value to print
            _say(f"{topic}[{record.partition}] offset {record.offset}: a record the Kafka client cannot read, "
                 f"not shown ({record.value.message})")
            return
        text = _one_line(record.value)
        if args.with_headers:
            text = orjson.dumps({k: _one_line(v, quote=False) for k, v in record.headers or ()}).decode() + "\t" + text
        if args.with_key:
            text = _one_line(record.key, as_json=False) + "\t" + text
        if args.with_position:
            text = f"{record.partition}\t{record.offset}\t{text}"
        print(text, flush=True)

    try:
        with Stopping.installed() as stopping:  # Ctrl-C or SIGTERM: the read stops between two polls
            _probe_kafka(settings)
            with _topic_hint(settings):
                shown = tail(settings, topic, args.n, args.follow, show, stop=stopping.event.is_set,
                             following=lambda: _say(
                                 f"following {topic}: new records below as they arrive (Ctrl-C ends)"))
    except KeyboardInterrupt:  # --follow ends with Ctrl-C: not an error
        return 0
    if not shown and not args.follow and args.n:
        _say(f"note: {topic} holds no committed record")
    return 0


def _project_topics(settings: Settings) -> dict[str, str]:
    """The project's topics by role (input, feedback, alerts, dlq, shadow: their SD_*_TOPIC), and
    ``repartition``, the two stages' topic, where the deployment names it (SD_REPARTITION_KEY or
    SD_REPARTITION_TOPIC, whether SD_STAGE is set or not)."""
    roles = {"alerts": settings.alerts_topic, "dlq": settings.dlq_topic, "shadow": settings.shadow_topic,
             "feedback": settings.feedback_topic, "input": settings.input_topic}
    if settings.repartition_key or settings.repartition_topic:
        roles["repartition"] = settings.repartition_topic_name
    return roles


def _topic_named(name: str, settings: Settings) -> str:
    """``tail``'s and ``lag``'s topic argument: a role (``_project_topics``) or a topic's own name."""
    if not name.strip():  # a trial: `lag ""` said "no topic  on …"
        raise ConfigError("the topic is empty: name a role (input, feedback, alerts, dlq, shadow, repartition) or a "
                          "topic")
    roles = _project_topics(settings)
    if name == "repartition" and name not in roles:  # a second trial: "no topic repartition", the word read as a name
        raise ConfigError("repartition names the two stages' topic: set the deployment's SD_REPARTITION_KEY (and "
                          "SD_GROUP_ID, SD_INPUT_TOPIC) as its workers have them, or give the topic's own name")
    return roles.get(name, name)


@contextlib.contextmanager
def _topic_hint(settings: Settings) -> Iterator[None]:
    """``kafka_util.NoSuchTopic`` for one of the project's own topics, with what creates it (a
    trial: `lag` before any topic existed said "no topic …" and no more; a name that is not one of
    them, a typo say, gets no such hint)."""
    from .kafka_util import NoSuchTopic

    try:
        yield
    except NoSuchTopic as exc:
        roles = _project_topics(settings)
        if exc.topic == roles.get("repartition"):
            raise ConfigError(f"{exc}: `stream-detector topics` with SD_STAGE set creates it (as the two stages' "
                              "workers do at their start with SD_CREATE_TOPICS=true)") from None
        if exc.topic in roles.values():
            raise ConfigError(f"{exc}: `stream-detector topics` creates it (a worker does at its start with "
                              "SD_CREATE_TOPICS=true)") from None
        near = difflib.get_close_matches(exc.topic, [*roles, *roles.values()], n=1)  # a trial: `lag alert`
        if near:
            raise ConfigError(f"{exc}: did you mean {near[0]}?") from None
        raise


def cmd_lag(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError

    from .kafka_util import GroupOwners, committed_offsets, group_lag, group_owners

    topic = _topic_named(args.topic, settings)
    # the feedback topic's reader is the workers' label ingester, in its own group
    if args.group is not None and not args.group.strip():
        raise ConfigError("--group is empty: name a consumer group, or leave the option out for the default")
    if args.group is not None and args.group != args.group.strip():  # a trial: --group " two", the lag of no group
        raise ConfigError(f"--group {args.group!r} has spaces around it: the workers' group names have none")
    from .pipeline.repartition import marked_rows, stage_settings

    group = args.group or (stage_settings(settings).label_group if topic == settings.feedback_topic else
                           settings.stage_1_group if settings.stage != "whole"
                           and topic == settings.input_topic else settings.group_id)  # two stages: stage 1's
    roles = _project_topics(settings)
    repartition = topic == roles.get("repartition")  # SD_STAGE set or not
    # the group's reset policy where it has no usable commit: the label ingesters' is earliest
    reset = "earliest" if group.endswith("-labels") else settings.auto_offset_reset
    # the repartition topic: stage 1's time and idle marks are no work for stage 2 (a trial: lag 96 →
    # 144 with no event waiting, the marks of a stopped stage 2)
    _probe_kafka(settings)
    with _topic_hint(settings):
        rows = group_lag(settings, group, topic,
                         is_record=(lambda record: not marked_rows([record.headers])) if repartition else None,
                         reset=reset)
    total = sum(row.lag for row in rows)
    try:  # which member holds each partition (an operator's question after scaling out or a freeze)
        owners: GroupOwners | None = group_owners(settings, group, topic)
    except (KafkaError, ValueError) as exc:  # ValueError: a member's assignment not the consumer protocol's
        owners = None
        _say(f"note: the coordinator of group {group} did not say which member holds which partition: {exc}")
    outputs = {roles["alerts"], roles["dlq"], roles["shadow"]}  # the workers write them, read none
    workers = args.group is None or args.group in (settings.group_id, settings.stage_1_group)
    if rows and workers and topic in outputs:  # a trial: the workers' group "has finished no batch"
        nothing = all(row.committed is None for row in rows)
        _say(f"note: the workers publish to {topic}, they do not read it: its lag is that of a group reading it "
             f"(give it with --group); shown: group {group}" + (", which has committed nothing there" if nothing
                                                                 else ""))
    elif rows and all(row.committed is None for row in rows):
        unstaged = topic == settings.input_topic and settings.stage == "whole" and args.group is None
        hint = (" (in a two-stage deployment set SD_STAGE as its workers do: stage 1 reads the input topic as "
                "SD_GROUP_ID.repartition)" if unstaged else "")
        stage_1 = settings.stage_1_group
        try:
            stage_1_read = unstaged and bool(committed_offsets(settings, stage_1, topic))
        except KafkaError:  # not allowed to describe that group, say: the note without it
            stage_1_read = False
        if stage_1_read:  # a trial: "lag 8,000" on a drained input topic, SD_STAGE left out of a two-stage deployment
            hint = (f": group {stage_1} has, stage 1 of a two-stage deployment; run with SD_STAGE as its workers "
                    f"have it, or --group {stage_1}")
        if topic == settings.feedback_topic and not hint:  # a trial: a backlog that never drains, said no more
            hint = (" — the workers read the feedback topic only for a model with label features (train "
                    "--label-key): for any other model nothing reads it in this group and its lag stays; the "
                    "retrainer and the console read it without a group (docs/feedback.md)")
        _say(f"note: group {group} has committed no offset on {topic}: no member has finished a batch yet, "
             f"or the group name is not the one the readers use (--group){hint}")
    beyond = [row.partition for row in rows if row.committed is not None and row.committed > row.end]
    if beyond:
        start = "from the first offset held" if reset == "earliest" else "from the end (SD_AUTO_OFFSET_RESET=latest)"
        _say(f"note: group {group}'s committed offset is past the end of partitions {beyond} (the topic recreated?): "
             f"its readers start those again {start}, counted so")
    # while the group rebalances, the members' last assignments are not who reads what (a trial: a partition
    # shown "no member" while its worker still held it): none is shown until the group is Stable again
    held = owners.owners if owners is not None and not owners.rebalancing else {}
    idle = owners.idle if owners is not None and held else ()
    twice = sorted(p for p, members in held.items() if len(members) > 1)
    if twice:  # two members reading one partition: what the operator came to find (never in a healthy group)
        _say(f"warning: partitions {twice} of {topic} are assigned to more than one member of group {group}", "WARNING")
    if args.json:
        print(orjson.dumps({"group": group, "topic": topic, "lag": total,
                            "state": None if owners is None else owners.state,
                            "members": None if owners is None else owners.members,
                            "idle": [_member_json(m) for m in idle], "partitions": [
            {"partition": row.partition, "end": row.end, "committed": row.committed, "lag": row.lag,
             "counted": row.counted, "log_start": row.log_start,
             "members": None if owners is None or owners.rebalancing else
             [_member_json(m) for m in held.get(row.partition, [])]}
            for row in rows]}).decode())
        return 0
    bound = " (at most)" if any(row.counted == "at_most" for row in rows) else ""
    members = ""
    if owners is not None:
        counted = f"{owners.members} member{'' if owners.members == 1 else 's'}, {owners.state}"
        members = (" (no such group now)" if owners.state == "Dead" else
                   " (no member now)" if not owners.members else
                   f" ({counted}: which member holds which partition is known once it is Stable)"
                   if owners.rebalancing else f" ({counted}{'' if held else f', none reading {topic}'})")
    print(f"group {group} on {topic}: lag {total:,}{bound}{members}")
    how = {"at_most": " (at most: a transaction is open)", "offsets": " (offsets)" if repartition else ""}
    for row in rows:
        owner = ""
        if held:  # the group reads this topic: each partition's member, or none (left out)
            of = held.get(row.partition, [])
            owner = (", no member" if not of else
                     f", member{'s' if len(of) > 1 else ''} {', '.join(f'{m.member_id} ({m.host})' for m in of)}")
        print(f"  partition {row.partition}: end {row.end:,}, committed "
              f"{'none' if row.committed is None else f'{row.committed:,}'}, lag {row.lag:,}{how.get(row.counted, '')}"
              f"{owner}")
    for member in idle:  # more members than partitions (a trial: the idle one was named nowhere)
        print(f"  no partition: member {member.member_id} ({member.host})")
    return 0


def _member_json(member: Any) -> dict[str, str]:
    return {"member_id": member.member_id, "host": member.host, "client_id": member.client_id}


def _one_line(value: bytes | None, quote: bool = True, as_json: bool = True) -> str:
    """A record value (or header) as one line of JSON, so that ``tail | jq`` reads every line: a
    JSON text on one line as it is (the project's records are), anything else — not JSON, a line
    break inside, not UTF-8 — as a JSON string of its text (bytes that are not UTF-8 as backslash
    escapes); a tombstone is ``null``. With ``quote`` False, the text itself (for a JSON object's
    value); with ``as_json`` False (a key, its own tab-separated column), one-line UTF-8 text as it is."""
    if value is None:
        return "null"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("utf-8", "backslashreplace")
        return orjson.dumps(text).decode() if quote else text
    if quote and ("\n" in text or "\r" in text or "\x00" in text or (as_json and not _is_json(value))):
        return orjson.dumps(text).decode()
    return text


def _is_json(value: bytes) -> bool:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def cmd_threshold(args: argparse.Namespace, settings: Settings) -> int:
    from .store import ControlPlane
    from .store.base import threshold_problem
    from .store.thresholds import KEEP

    control = ControlPlane.from_settings(settings)
    if args.history < 0:
        raise ConfigError(f"--history must be >= 0, got {args.history}")
    if args.action == "get":
        given = [f"VALUE {args.value:g}" if args.value is not None else "", "--note" if args.note is not None else "",
                 "--head" if args.head is not None else ""]
        if any(given):  # a trial: `threshold get 5` printed the threshold and set nothing, silently
            raise ConfigError(f"threshold get takes no {' or '.join(g for g in given if g)} (those set a new "
                              "version: threshold set VALUE [--head P] [--note TEXT])")
        current = control.threshold()
        if current is None:
            raise ConfigError("no threshold in Redis yet: publish a model first")
        problem = threshold_problem(current.value, current.head)
        if problem is not None:  # written around the checks: workers hold their batches until it is replaced
            _say(f"warning: threshold version {current.version} is unusable ({problem}): workers hold their "
                 "batches until a new one is set")
        print(orjson.dumps({"value": current.value, "version": current.version,
                            "model_version": current.model_version, "head": current.head}).decode())
        if args.history:
            for line in control.threshold_history(args.history):
                print(orjson.dumps(line).decode())
        return 0
    if args.history:  # the mirror of get's refusals (a trial: set 4.5 --history 2 set it and printed nothing)
        raise ConfigError("threshold set takes no --history (threshold get --history N prints the changes)")
    model = control.active_model()
    if model is None:
        raise ConfigError("no active model: publish one before setting its threshold")
    current = control.threshold()
    value = args.value if args.value is not None else (current.value if current is not None else None)
    if value is None or (args.value is None and args.head is None):
        raise ConfigError("threshold set needs a VALUE (and/or --head P for a model with a supervised head)")
    if args.head is not None and not 0.0 <= args.head <= 1.0:
        raise ConfigError(f"--head is a probability threshold in [0, 1], got {args.head}")
    problem = threshold_problem(value)
    if problem is not None:
        raise ConfigError(problem)
    value += 0.0  # -0 is 0
    if args.head is not None and control.fetch_bundle(model).supervised is None:
        raise ConfigError(f"model {model} has no supervised head (train --supervised): --head does not apply")
    head: Any = args.head if args.head is not None else KEEP
    if args.head == 0.0:  # as threshold_warning says of a value that flags everything (a new-user trial)
        print("stream-detector threshold: warning: --head 0 makes every event alert (a probability above 0 is "
              "fraud): workers will alert on all of them", file=sys.stderr)
    if args.value is not None:
        warning = threshold_warning(control.fetch_bundle(model).calibration, value)
        if warning:
            print(f"stream-detector threshold: warning: {warning}", file=sys.stderr)
    version = control.set_threshold(value, model, _who(), args.note or "", head=head)
    print(f"threshold {value:.6g}{'' if args.head is None else f', head {args.head:.6g}'} for model {model} "
          f"is version {version}")
    return 0


def threshold_warning(calibration: dict[str, Any], value: float) -> str | None:
    """One line when ``value`` would flag a large share of normal events: the validation error
    quantiles the model was calibrated on (``calibration.json``) bound that share from below (a
    lower threshold flags more). None when the value flags at most 1 % of them, or the bundle has
    no quantiles."""
    quantiles = {float(q): float(v) for q, v in (calibration.get("validation_error_quantiles") or {}).items()}
    above = [q for q, v in sorted(quantiles.items()) if value < v and q <= 0.99]
    if not above:
        return None
    share = 1.0 - above[0]
    calibrated = calibration.get("threshold")
    if calibrated is not None and f"{value:.6g}" == f"{float(calibrated):.6g}":
        # a trial set the calibrated value back and was warned as if it were another (the default fence
        # rule may itself flag more than 1 %: README, "threshold set")
        return (f"{value:.6g} is the model's calibrated threshold, and it is below the {above[0]:.0%} quantile of "
                f"its validation errors: it alerts on more than {share:.0%} of normal events (the training "
                "rule's own share; for a fixed alert budget train with --max-alert-rate or --threshold-method "
                "quantile); a higher value alerts less")
    where = f" (the calibrated threshold is {float(calibrated):.6g})" if calibrated is not None else ""
    return (f"{value:.6g} is below the {above[0]:.0%} quantile of the model's validation errors: it would "
            f"alert on more than {share:.0%} of normal events{where}; a higher value alerts less")


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from .topics import ensure_topics, topic_exists, topic_partitions

    _probe_kafka(settings)
    created = ensure_topics(settings, [settings.input_topic, settings.alerts_topic, settings.dlq_topic,
                                       settings.feedback_topic, settings.shadow_topic], args.partitions)
    if settings.stage != "whole":  # two stages: the repartition topic, buckets x the input topic's partitions
        want = topic_partitions(settings, settings.input_topic) * settings.repartition_buckets
        created += ensure_topics(settings, [settings.repartition_topic_name], want)
    print("created: " + (", ".join(created) if created else "nothing (all exist)"))
    if settings.stage == "whole" and "repartition" in _project_topics(settings) \
            and not topic_exists(settings, settings.repartition_topic_name):
        # a trial: SD_REPARTITION_KEY set, SD_STAGE not: "nothing (all exist)", the repartition topic missing
        _say(f"note: the repartition topic {settings.repartition_topic_name} is made only with SD_STAGE set (as the "
             "two stages' workers have it): its partitions are SD_REPARTITION_BUCKETS x the input topic's")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import DemoConfig, run_demo, run_velocity_demo

    if args.profile == "velocity":
        return run_velocity_demo(settings, duration_s=60 if args.duration is None else args.duration, rate=args.rate,
                                 fraud_rate=0.01 if args.fraud_rate is None else args.fraud_rate,
                                 workdir=Path(args.workdir), progress=_say)
    for name in ("duration", "fraud_rate"):
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name.replace('_', '-')} applies to --profile velocity; the handbook profile "
                              "streams its last simulated week (--cards sets its size, --rate its pace)")
    for option, value, ok, rule in (("--cards", args.cards, args.cards >= 100, ">= 100"),
                                    ("--terminals", args.terminals, args.terminals >= 100, ">= 100"),
                                    ("--rate", args.rate, args.rate > 0, "> 0"),
                                    ("--epochs", args.epochs, args.epochs >= 1, ">= 1")):
        if not ok:
            raise ConfigError(f"{option} {value:g}: must be {rule}")
    return run_demo(settings, DemoConfig(cards=args.cards, terminals=args.terminals, rate=args.rate,
                                         epochs=args.epochs, seed=args.seed), Path(args.workdir), progress=_say)


def cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    from .checks import report, run_checks

    checks = run_checks(settings, timeout_ms=int(args.timeout * 1000))
    if args.json:
        print(orjson.dumps([c.__dict__ for c in checks]).decode())
    else:
        print("stream-detector check-config\n" + report(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


# ---- retraining and the model registry (docs/retraining.md) ---------------------------------


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from .retrain.service import Retrainer

    if args.threads is None and settings.torch_threads:  # --threads, when given, is set in main()
        _set_threads(settings.torch_threads)
    if args.once:
        # Ctrl-C or SIGTERM (a cron job's timeout) removes the history spool: raised between two Kafka reads
        # (kafka-python's calls are not safe to interrupt), at once while the candidate trains
        with Stopping.installed() as stopping:
            outcome = Retrainer(settings, progress=_say, stopping=stopping).run_once(timeout_s=args.timeout)
        print(orjson.dumps(outcome.to_dict()).decode())
        return {"promoted": 0, "rejected": 3, "shadow": 5}.get(outcome.status, 4)
    retrainer = Retrainer(settings, progress=_say)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: retrainer.stop())
    retrainer.run()
    return 0


def _gate_word(record: dict[str, Any] | None) -> str:
    """``model list``'s gate column: ``passed`` / ``refused`` (the retrainer's gate or a shadow
    period's verdict), ``no-verdict`` (a shadow period stopped, or promoted by hand, with no verdict
    before it), ``none`` (no gate: a bundle published or stored by hand)."""
    if not record:
        return "none"
    passed = record.get("passed")
    return "no-verdict" if passed is None else "passed" if passed else "refused"


_MODEL_DEFAULTS = {"min_events": 100_000, "max_seconds": 86_400.0, "replace": False}


def _check_model_args(args: argparse.Namespace) -> None:
    """An argument the action does not take is refused, not ignored (``model list extra --keep 3``
    listed and exited 0)."""
    if args.version and args.action in ("list", "rollback", "prune", "shadow-status", "shadow-stop"):
        what = ("it ends the period of the challenger in shadow" if args.action == "shadow-stop"
                else "it acts on the registry as a whole")
        raise ConfigError(f"model {args.action} takes no VERSION ({args.version!r}): {what}")
    if getattr(args, "out", None) and args.action != "export":
        raise ConfigError(f"--out is for model export, not model {args.action}")
    if args.keep is not None and args.action != "prune":
        raise ConfigError(f"--keep is for model prune, not model {args.action}")
    for name, default in _MODEL_DEFAULTS.items():
        if getattr(args, name) != default and args.action != "shadow":
            raise ConfigError(f"--{name.replace('_', '-')} is for model shadow, not model {args.action}")


def cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    from .store import ControlPlane

    _check_model_args(args)
    control = ControlPlane.from_settings(settings)
    if args.action == "list":
        active, previous, challenger = control.active_model(), control.previous_model(), control.challenger()
        versions = control.model_versions()
        if not versions:
            print(f"no model versions in the registry (Redis prefix {settings.redis_prefix!r}); "
                  f"add one with: stream-detector publish BUNDLE_DIR", file=sys.stderr)
        for version in reversed(versions):
            info = control.model_info(version)
            mark = "+".join(m for m, v in (("active", active), ("previous", previous), ("shadow", challenger))
                            if version == v)  # the previous version may be the challenger too
            gate = _gate_word(info["gate"])
            threshold = (f"{info['threshold']:.6g}" if info["threshold"] is not None
                         else "never active" if info["calibrated_threshold"] is None
                         else f"{info['calibrated_threshold']:.6g} (calibrated; never active)")
            head = (f"  head={info['head_threshold']:.4g}" if info["head_threshold"] is not None
                    else f"  head={info['calibrated_head_threshold']:.4g} (calibrated)"
                    if info["calibrated_head_threshold"] is not None else "")
            print(f"{version}  {mark:8}  threshold={threshold}{head}  store={info['store']}  gate={gate}")
        return 0
    if args.action == "rollback":
        target = control.rollback(_who())
        print(f"rolled back to {target} (threshold {control.threshold().value:.6g})")  # type: ignore[union-attr]
        return 0
    if args.action == "prune":
        if args.keep is not None and args.keep < 0:
            raise ConfigError(f"--keep must be >= 0 (versions to keep besides the active, previous and shadow "
                              f"ones), got {args.keep}")
        removed = control.prune(settings.model_keep if args.keep is None else args.keep)  # 0: only those three
        print("removed: " + (", ".join(removed) or "nothing"))
        return 0
    if args.action == "shadow-status":
        from .pipeline.shadow import BIN_EDGES

        decisions = [{**d, "figures": {k: v for k, v in (d.get("figures") or {}).items() if k != "bins"}}
                     for d in control.shadow_decisions(5)]  # the bins of ended periods: console / API
        print(orjson.dumps({"challenger": control.challenger(), "figures": control.shadow_figures(),
                            "bin_edges_log10_score_over_threshold": BIN_EDGES.tolist(), "decisions": decisions},
                           option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.action == "shadow-stop":
        record = control.end_shadow("stopped", {"reasons": ["stopped by hand"]}, _who())
        print(f"challenger {record['version']}: shadow period ended after {record['figures']['events']} events; "
              f"the active model stays {control.active_model()}")
        return 0
    if not args.version:
        raise ConfigError(f"model {args.action} needs a VERSION")
    if args.action == "shadow":
        return _start_shadow(args, settings, control)
    if args.action == "export":
        return _export_model(args, control)
    if args.action == "show":
        info = control.model_info(args.version)
        from .inputs import model_fields

        bundle = control.fetch_bundle(args.version)
        info["fields"] = model_fields(bundle.spec, bundle.schema)
        print(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return 0
    gate = control.model_info(args.version)["gate"]
    if gate is not None and not gate.get("passed", True):  # the operator's decision, in the threshold history
        _say(f"note: the gate refused {args.version} ({'; '.join(gate.get('reasons') or []) or 'no reason'}); "
             "promoted by hand")
    if args.version == control.challenger():
        # by_hand: the gate's verdict stays what it was (a trial: a refused version promoted from a new
        # shadow period, scored on 0 events, showed gate=passed in model list)
        control.end_shadow("promoted", {"reasons": ["promoted by hand"], "by_hand": True}, _who())
        seq = int(control.threshold().version)  # type: ignore[union-attr]
        print(f"the shadow period of {args.version} ended as promoted")
    else:
        seq = control.activate(args.version, _who(), note=f"promote {args.version} by hand")
    print(f"model {args.version} is active; threshold version {seq}")
    return 0


def _export_model(args: argparse.Namespace, control: Any) -> int:
    """``model export VERSION --out DIR``: a stored version (one the retrainer made, say) as a bundle
    directory, for ``score --model DIR`` (a trial: a retrained model could not be scored offline).
    The directory holds the same files, so the same version and sha256."""
    from .model.bundle import load_bundle, save_bundle

    if not args.out:
        raise ConfigError("model export needs --out DIR (the bundle directory to write)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty directory")
    bundle = control.fetch_bundle(args.version)
    save_bundle(bundle, out)
    written = load_bundle(out)
    if written.version != bundle.version or written.sha256 != bundle.sha256:  # never expected: said, not hidden
        raise ConfigError(f"model export: {out} reads as {written.version} / {written.sha256[:12]}, "
                          f"not {bundle.version} / {bundle.sha256[:12]}")
    print(f"model {bundle.version} written to {out} (sha256 {bundle.sha256[:12]}): stream-detector score "
          f"--model {out} --input FILE --out FILE")
    return 0


def _start_shadow(args: argparse.Namespace, settings: Settings, control: Any) -> int:
    """``model shadow VERSION|DIR``: a stored version, or a bundle directory stored first."""
    from .model.bundle import load_bundle

    path = Path(args.version)
    if path.is_dir():
        bundle = load_bundle(path)
    elif "/" in args.version or path.exists():
        raise ConfigError(f"{args.version}: not a bundle directory (model shadow takes a stored VERSION or a "
                          "directory written by train)")
    else:
        bundle = control.fetch_bundle(args.version)
    _ensure_shadow_topic(settings)
    replaced = control.start_shadow(bundle, _who(), args.min_events, args.max_seconds, note="by hand",
                                    replace=args.replace)
    if replaced:
        print(f"the shadow period of {replaced} ended as replaced")
    print(f"model {bundle.version} is the challenger in shadow beside {control.active_model()}: shadow records on "
          f"{settings.shadow_topic}; judged by the retrainer (`stream-detector retrain --once`) once "
          f"{args.min_events} events are scored and SD_GATE_MIN_LABELS labelled frauds are among the alerts, or "
          f"after {args.max_seconds:.0f}s on what there is; or `model promote|shadow-stop`")
    return 0


def _ensure_shadow_topic(settings: Settings) -> None:
    """The shadow topic must exist before workers shadow-score (a missing one is refused there):
    created with SD_CREATE_TOPICS, else checked (``ConfigError`` naming `stream-detector topics`)."""
    from .topics import ensure_topics, topic_exists

    if settings.create_topics:
        ensure_topics(settings, [settings.shadow_topic])
    elif not topic_exists(settings, settings.shadow_topic):
        raise ConfigError(f"shadow topic {settings.shadow_topic} does not exist and SD_CREATE_TOPICS=false: "
                          "create it (`stream-detector topics`) before starting a shadow period")


def cmd_console(args: argparse.Namespace, settings: Settings) -> int:
    from .console import serve

    host = args.host or settings.console_host
    port = settings.console_port if args.port is None else args.port
    writable = "changes need SD_CONSOLE_TOKEN" if settings.console_token.get_secret_value() else "read-only"
    _say(f"console on http://{host}:{port} ({writable}); Ctrl-C stops it")
    serve(settings, host, port)
    return 0


def cmd_keygen(args: argparse.Namespace, settings: Settings) -> int:
    from .model.signing import generate_keypair

    private, public = generate_keypair(Path(args.dir))
    print(f"signing key (keep secret; SD_SIGNING_KEY_FILE for publish/retrain): {private}")
    print(f"verify key (SD_VERIFY_KEY_FILE for workers): {public}")
    return 0


def _who() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return f"unknown@{socket.gethostname()}"


# ---- parser ----------------------------------------------------------------------------------


def _add_reader_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading the input file (CSV, JSON Lines or Parquet; .gz/.bz2/.zst)")
    g.add_argument("--delimiter", help="CSV delimiter (default: sniffed from the header among , ; TAB |; "
                                       "\\t for a tab)")
    g.add_argument("--decimal", default="auto",
                   help="decimal mark of numbers in CSV text (default auto: ',' when the file is not "
                        "comma-separated and its numbers are written like 12,50; else '.')")
    g.add_argument("--thousands", default="auto",
                   help="thousands separator accepted in groups of three, e.g. 1,234.56 (default auto: ',' "
                        "with a '.' decimal mark, '.' with a ',' one; 'none' accepts none)")
    g.add_argument("--na-values", help="comma-separated CSV cells that mean missing; replaces the default list "
                                       "(empty, NA, N/A, null, NULL, None, nan, NaN), so name the empty cell too "
                                       "(e.g. ',NA,unknown')")


def _add_schema_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("field schema (README \"Field schema\": inferred from the rows, stored in the bundle)")
    g.add_argument("--schema", help="JSON file of field types: a bundle's schema.json, or "
                                    "{\"field\": \"number|boolean|category|timestamp|identifier|ignored\"}")
    g.add_argument("--field", action="append", metavar="NAME=TYPE",
                   help="set one field's type (repeatable), e.g. terminal_id=identifier, ts=timestamp:s "
                        "(timestamp units: auto, s, ms, us, ns)")


def _version() -> str:
    """The installed package's version (``pyproject.toml``), or ``unknown`` when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stream-detector")
    except PackageNotFoundError:
        return "unknown"


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low`` (a usage error, one line, otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def _between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (``low_open`` / ``high_open``: that end left
    out). A trial: ``--dropout 1.5`` failed after reading the data with torch's ValueError (exit 1),
    and ``--dropout -0.5`` or ``--max-self-flag-rate 5`` were taken."""
    span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {text!r}") from None
        if not (math.isfinite(value) and (low < value if low_open else low <= value)
                and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {text}")
        return value
    return parse


SEED_LIMIT = 2**32  # seeds numpy's generators and torch both take: 0 .. SEED_LIMIT - 1


def _seed(text: str) -> int:
    """An argparse type: a seed numpy and torch both take, 0 .. 2**32 - 1 (a trial: ``--seed -1`` and a
    20-digit seed failed after reading the data with numpy's ValueError, exit 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, {SEED_LIMIT - 1}], got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, {SEED_LIMIT - 1}], got {value}")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one line, as every other CLI error (README: one line, exit
    2; a new-user trial found argparse's usage block before it), pointing at ``--help``; one JSON
    log line with ``SD_LOG_JSON`` (plain text in a JSON log, another trial); exit 2 as argparse's own."""

    def error(self, message: str) -> NoReturn:
        prog = self.prog
        unknown = self._unknown_options()
        if unknown and message.startswith("the following arguments are required"):
            message = f"unrecognized arguments: {' '.join(unknown)}"  # what was mistyped, not what then looked missing
        if message.startswith("unrecognized arguments") and self._subparsers is not None:
            command = next((a for a in _ARGV if a in self._commands()), None)
            if command is not None:  # extra words after a command: that command's --help, not the top level's
                prog = f"{self.prog} {command}"
        if unknown and message.startswith("unrecognized arguments"):
            message += _elsewhere(unknown, prog.split()[-1])
        line = f"{prog}: error: {message} (see {prog} --help)"
        if _JSON_LINES:
            _say(line, "ERROR")
        else:
            sys.stderr.write(line + "\n")
        sys.exit(2)

    def _commands(self) -> set[str]:
        return {name for action in self._subparsers._group_actions if isinstance(action, argparse._SubParsersAction)
                for name in action.choices} if self._subparsers is not None else set()

    def _unknown_options(self) -> list[str]:
        """The options on the command line that neither this parser nor the top level knows
        (``--bogus``; a negative number is a value, not an option)."""
        known = set(self._option_string_actions) | {"-v", "--verbose", "--version", "-h", "--help"}
        out = []
        for arg in _ARGV:
            if arg == "--":
                break
            name = arg.split("=", 1)[0]
            if arg.startswith("-") and len(arg) > 1 and not _looks_numeric(arg) and name not in known and not (
                    name.startswith("--") and any(k.startswith(name) for k in known)):  # argparse's abbreviations
                out.append(arg)
        return out


def _elsewhere(options: list[str], command: str) -> str:
    """For options another command has: which (a trial gave ``score`` train's ``--entity-key``, and
    read "unrecognized arguments" as a typo). The model keeps what ``train`` was given."""
    if not _ROOT:
        return ""
    commands = {name: sub for action in _ROOT[0]._subparsers._group_actions  # type: ignore[union-attr]
                if isinstance(action, argparse._SubParsersAction) for name, sub in action.choices.items()}
    notes = []
    own = commands[command]._option_string_actions if command in commands else {}
    for option in options:
        name = option.split("=", 1)[0]
        if name in own or (name.startswith("--") and any(o.startswith(name) for o in own)):
            continue  # the command's own, or an abbreviation of one (the top level lists every command's as unknown)
        full = name
        if name.startswith("--") and not any(name in sub._option_string_actions for sub in commands.values()):
            # an abbreviation (argparse takes one within its own command): the one option it begins, if one
            begun = {o for c, sub in commands.items() if c != command for o in sub._option_string_actions
                     if o.startswith(name)}
            if len(begun) > 1:  # several (a trial: ``score --entity x`` got no hint at all)
                owners = sorted({c for c, sub in commands.items() if c != command
                                 and any(o in sub._option_string_actions for o in begun)})
                model = " (the model keeps what train was given)" if owners == ["train"] and command == "score" else ""
                of = f", not of {command}" if command in commands else ""
                notes.append(f"{name} begins {', '.join(sorted(begun))}: options of {', '.join(owners)}{of}{model}")
                continue
            full = begun.pop() if begun else name
        owners = [c for c, sub in commands.items() if c != command and full in sub._option_string_actions]
        if owners:
            model = " (the model keeps what train was given)" if owners == ["train"] and command == "score" else ""
            of = f", not of {command}" if command in commands else ""
            shown = name if full == name else f"{name} ({full})"
            notes.append(f"{shown} is an option of {', '.join(owners)}{of}{model}")
    notes = list(dict.fromkeys(notes))  # an option given twice is named once (`score --exclude a --exclude b`)
    return f"; {'; '.join(notes)}" if notes else ""


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its write end)."""
    import select

    try:
        sys.stdout.flush()
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except BrokenPipeError:
        return True
    except (OSError, ValueError, AttributeError):  # no file descriptor behind stdout: not a closed pipe
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail again on
    the closed pipe (the recipe of Python's signal module documentation, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (embedded, captured): nothing to flush there
        pass


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stream-detector",
        description="Streaming anomaly detection for real-time fraud flagging. Settings come from "
                    "SD_* environment variables (see the README); subcommands below.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"stream-detector {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _ROOT[:] = [parser]

    p = sub.add_parser("train", help="train a model bundle from a CSV, JSON Lines or Parquet file",
                       description="Infer the field schema (printed; stored in the bundle), fit features and "
                                   "an autoencoder on normal rows, calibrate the threshold on held-back normal "
                                   "rows, export TorchScript. Refuses (exit 2, no bundle) input that cannot make "
                                   "a usable model.")
    p.add_argument("--input", required=True,
                   help="CSV (with header), JSON Lines or Parquet, optionally compressed")
    p.add_argument("--out", required=True, help="directory for the bundle")
    p.add_argument("--label-column", help="column with labels; only --normal-label rows are trained on")
    p.add_argument("--normal-label", help="with --label-column: label value of normal rows (default: 0; where no "
                   "row has 0, the file's one usual normal word — legit, normal, genuine, benign, false, no, N … in "
                   "any case — said)")
    p.add_argument("--feedback", metavar="FILE",
                   help="labels as feedback records (CSV, JSON Lines or Parquet: event_id, label fraud|legit, "
                        "source, labelled_at; docs/feedback.md), joined by event_id: fraud-labelled events are "
                        "left out of training and the input is evaluated against them (instead of --label-column)")
    p.add_argument("--id-column", help="column to use as event_id (default: event_id, else row number)")
    p.add_argument("--timestamp-column", metavar="COLUMN",
                   help="the column that holds the event time, read as the timestamp field (default: timestamp), "
                        "e.g. the Fraud Detection Handbook's TX_DATETIME; entity features need it. Events on Kafka "
                        "carry it as timestamp (produce --timestamp-column renames it)")
    p.add_argument("--exclude", action="append", help="field to leave out of the features (repeatable)")
    p.add_argument("--file-order", action="store_true",
                   help="a model with history features (--entity-key): apply the rows in file order even when "
                        "more than 20 %% of them are earlier than an earlier row of their entity (refused otherwise, "
                        "exit 2: a file in another order than time gets features unlike the live stream's; sort it "
                        "first)")
    p.add_argument("--keep", action="append", metavar="FIELD",
                   help="a category or boolean field the ground-truth check refuses (its values nearly only on "
                        "anomalous rows) that is a real feature, e.g. an intrusion set's service (repeatable)")
    p.add_argument("--epochs", type=_at_least_one, help="training epochs, >= 1 (default: derived from the row "
                   "count: ~20,000 optimiser steps, 10 to 300 epochs)")
    p.add_argument("--threshold-method", choices=["fence", "quantile", "meanstd"], default="fence",
                   help="fence (default): exp(median + K*1.4826*MAD) of the log validation errors, a robust "
                        "outlier rule whose flag rate follows the data; quantile: a fixed alert budget "
                        "(--target-fpr); meanstd: mean + K*std (the seeds' rule)")
    p.add_argument("--k-fence", type=float, default=3.0, help="K for --threshold-method fence (default 3)")
    p.add_argument("--target-fpr", type=float, default=0.01,
                   help="--threshold-method quantile: share of normal validation rows above the threshold "
                        "(default 0.01)")
    p.add_argument("--k-std", type=float, default=3.0, help="K for --threshold-method meanstd (default 3.0)")
    p.add_argument("--max-alert-rate", type=float,
                   help="alert budget cap for any method: the threshold is raised until at most this share "
                        "of normal validation rows is flagged (e.g. 0.002 for fraud streams)")
    p.add_argument("--dropout", type=_between(0.0, 1.0, high_open=True), default=0.0,
                   help="dropout in hidden layers, in [0, 1) (default 0.0)")
    p.add_argument("--hidden", type=_widths,
                   help="encoder widths, comma separated, e.g. 64,32 (default: derived from the feature count)")
    p.add_argument("--bottleneck", type=_at_least_one,
                   help="bottleneck width (default: derived from the feature count)")
    p.add_argument("--error-norm", choices=["none", "mean"], default="mean",
                   help="mean (default): divide each feature's squared error by its mean over the training "
                        "and validation rows, so every field weighs alike in the score; none: raw squared errors")
    p.add_argument("--time-features", action="store_true", help="add hour-of-day (sin/cos) from timestamp")
    p.add_argument("--entity-key", action="append",
                   help="per-entity history features keyed by this field, e.g. account_id (repeatable; "
                        "the input must be in arrival/time order; docs/entity-features.md)")
    p.add_argument("--entity-windows", default="1h,1d,7d", help="entity feature windows (default 1h,1d,7d)")
    p.add_argument("--entity-distinct", default=_DEFAULT_DISTINCT,
                   help="fields whose distinct / first-seen values per entity become features (default "
                        "merchant_category,country: those of them the input has; '' for none)")
    p.add_argument("--entity-amount", default="amount", help="amount field of the entity features (default amount)")
    p.add_argument("--supervised", action="store_true",
                   help="also train a supervised head on the labelled rows (--feedback or --label-column): a "
                        "calibrated fraud probability beside the reconstruction error, in the same TorchScript "
                        "call; an event is alerted when either is above its threshold (needs >= 100 frauds; "
                        "docs/feedback.md)")
    p.add_argument("--label-key", action="append",
                   help="label-derived features for this --entity-key (repeatable; needs --feedback): the decayed "
                        "count and share of the entity's earlier events known as fraud at each event's time, per "
                        "entity window, e.g. terminal risk (docs/feedback.md)")
    p.add_argument("--label-delay", default="0s",
                   help="a label counts from its labelled_at plus this delay, e.g. 7d (default 0s)")
    p.add_argument("--label-within", default="30d",
                   help="a label counts only when labelled within this long after its event (default 30d; the "
                        "worker keeps a ~200-byte index record per scored event this long)")
    p.add_argument("--max-self-flag-rate", type=_between(0.0, 1.0, low_open=True), default=0.2,
                   help="refuse the model (exit 2, no bundle) when more than this share of its own normal "
                        "training or validation rows is above its threshold (default 0.2)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the split, weights and shuffling (default 0)")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads (default: torch's, one per core). On a machine shared with other "
                        "work, give the cores you can have: oversubscribed threads make each step many times slower")
    big = p.add_argument_group("big histories (docs/big-history.md): streamed, bounded memory, sharded by entity key")
    big.add_argument("--streamed", action="store_true",
                     help="read the input in chunks and train from minibatches on disk (on by itself for a "
                          "directory or glob --input, or with --cluster)")
    big.add_argument("--shards", type=int, default=16,
                     help="entity shards (default 16; a shard is enriched in one piece)")
    big.add_argument("--cluster", metavar="ADDRESS",
                     help="enrich the shards on this Dask scheduler (tcp://host:8786); --work-dir must be a "
                          "directory every Dask worker sees")
    big.add_argument("--workers", type=int, help="local process pool size (default: the machine's cores)")
    big.add_argument("--work-dir", help="where this run makes its directory of intermediate files, .OUT.work-PID "
                                        "(default: beside --out; that directory is removed after)")
    big.add_argument("--chunk-rows", type=int, default=65_536,
                     help="rows read and typed at a time (default 65536; a CSV is read in byte blocks of about "
                          "that many rows, at 128 bytes a row)")
    big.add_argument("--batch-size", type=int,
                     help="minibatch rows on the streamed path (default: 256, the in-memory path's, and so its "
                          "epochs and steps; 1024 from 2,046,977 training rows, where the epochs are at their "
                          "floor of 10 either way; docs/big-history.md)")
    _add_reader_args(p)
    _add_schema_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("publish", help="make a bundle the active model and its threshold the active threshold",
                       description="Stores the bundle in Redis (SD_REDIS_URL, under SD_REDIS_PREFIX) and makes it "
                                   "the active model with its calibrated threshold; running workers of that prefix "
                                   "swap to it between batches (docs/retraining.md).")
    p.add_argument("dir", help="bundle directory written by train")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("worker", help="consume, score, alert, commit (SIGTERM/SIGINT finish the batch)",
                       description="One worker of the consumer group SD_GROUP_ID: reads SD_INPUT_TOPIC, scores with "
                                   "the active model in Redis (SD_REDIS_URL, SD_REDIS_PREFIX), publishes alerts to "
                                   "SD_ALERTS_TOPIC and bad records to SD_DLQ_TOPIC, commits offsets after delivery. "
                                   "Every setting is an SD_* environment variable (README, Configuration; "
                                   "`stream-detector check-config` checks them against the services). "
                                   "Batching: SD_BATCH_SIZE (most events scored at once, default 8,192) and "
                                   "SD_BATCH_MAX_WAIT_MS (longest wait to fill a batch after its first record, "
                                   "default 20). With "
                                   "entity features keyed by a field other than the topic's key "
                                   "(SD_ENTITY_PARTITION_KEY) it releases its partitions in event-time "
                                   "order (SD_ALIGN_*: "
                                   "docs/entity-features.md#event-time-alignment); run one worker per group "
                                   "for such a model (several are exact only at SD_ALIGN_PEER_GRACE_MS=0, "
                                   "a few hundred events/s), or scale it out exactly in two stages through a "
                                   "repartition topic: SD_STAGE=repartition (with SD_DELIVERY=exactly_once) and "
                                   "SD_STAGE=repartitioned workers, SD_REPARTITION_KEY the other key "
                                   "(docs/entity-features.md#scaling-out-the-repartition-topic). Partitions "
                                   "added to the input "
                                   "topic are consumed within SD_METADATA_MAX_AGE_MS (default 5 minutes; "
                                   "docs/operations.md, Partitions and workers).")
    p.add_argument("--max-idle-polls", type=_at_least(1), help="exit after this many consecutive polls that return "
                   "nothing (tests, demos); default: run until SIGTERM/SIGINT")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("score", help="score a file offline: event_id,score,is_anomaly,rejected,message for every row",
                       description="Every row of the file gets one output row (event_id, score, is_anomaly, "
                                   "rejected, message; and probability, the supervised head's, for a model "
                                   "trained with --supervised): its score, or the reason it "
                                   "was rejected (the same reasons a worker dead-letters with). Values are "
                                   "typed by the bundle's field schema. When no row can be scored (a file that "
                                   "is not this model's input), the file is still written and the command "
                                   "exits 2 with one line counting the reasons.")
    p.add_argument("--model", required=True, help="bundle directory")
    p.add_argument("--input", required=True, help="CSV (with header), JSON Lines or Parquet, optionally compressed")
    p.add_argument("--out", required=True, help="CSV to write (-: standard output)")
    p.add_argument("--id-column", help="column to use as event_id (default: event_id; generated only when the "
                                       "file has no id column)")
    p.add_argument("--timestamp-column", metavar="COLUMN",
                   help="the column that holds the event time, read as the timestamp field (default: timestamp), "
                        "as train --timestamp-column")
    p.add_argument("--file-order", action="store_true",
                   help="a model with history features (trained with --entity-key): apply the rows in file order "
                        "even when more than 20 %% of them are earlier than an earlier row of their entity (refused "
                        "otherwise, exit 2: a file in another order than time gets features unlike the live stream's; "
                        "sort it first)")
    p.add_argument("--label-column", help="the file's labels: left out of the features and the output, and the "
                                          "scores evaluated against them (AUC-ROC, average precision, "
                                          "precision/recall at the threshold; rows without a label left out)")
    p.add_argument("--normal-label",
                   help="with --label-column: label value of normal rows, every other one an anomaly (default: the "
                        "one the model was trained with, when trained with the same --label-column; else the "
                        "file's one usual normal word — legit, normal, genuine, benign, false, no, N … in any "
                        "case — said; else 0). A file whose labels are all anomaly words (fraud, 1, attack, …) is "
                        "evaluated as anomalies only")
    p.add_argument("--feedback", metavar="FILE",
                   help="feedback records (docs/feedback.md) to evaluate the scores against: AUC-ROC, average "
                        "precision, precision/recall at the threshold (events without a label count as legit; "
                        "instead of --label-column's). For a model with label features they are also the labels "
                        "those features are computed from, point in time, as a worker's label ingester supplies "
                        "them: without it the features are 0 and the scores differ")
    p.add_argument("--threshold", type=float, help="override the bundle's calibrated threshold")
    p.add_argument("--device", help="torch device (default SD_DEVICE)")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads (default: torch's, one per core). On a machine shared with other "
                        "work, give the cores you can have: oversubscribed threads make each step many times slower")
    p.add_argument("--streamed", action="store_true",
                   help="read and score the input chunk by chunk, bounded memory, progress on stderr (on by "
                        "itself for a directory or glob --input; docs/big-history.md). The warnings about fields "
                        "missing or values new far more often than in training come from the first chunk, and at "
                        "the end from the first 1,024 valid rows of every chunk")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="rows per chunk with --streamed (default 65536; CSV: byte blocks of about that many rows)")
    _add_reader_args(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("produce", help="replay a CSV, JSON Lines or Parquet file as events (or, with --feedback, "
                                       "labels onto the feedback topic)",
                       description="Each row is sent as one JSON event to SD_INPUT_TOPIC (or --topic), keyed by its "
                                   "SD_ENTITY_PARTITION_KEY field, account_id by default (so an account's events stay "
                                   "in one partition, in file order; a row without one goes to any partition). A JSON "
                                   "Lines row is sent as the file has it (each value of its own JSON type, but the "
                                   "event_id as text, as the event contract has it; the worker types it by its "
                                   "model's schema); a CSV or Parquet row is typed by the "
                                   "file's own schema as train reads it (text to numbers, booleans, epoch ms; a "
                                   "number as the file wrote it, 3 as 3 and 3.0 as 3.0). Rows "
                                   "that are not events (no event_id, not a JSON object) are said, not sent.")
    p.add_argument("--input", required=True, help="the file (.csv, .jsonl/.json, .parquet)")
    p.add_argument("--topic", help="default SD_INPUT_TOPIC (with --feedback: SD_FEEDBACK_TOPIC)")
    p.add_argument("--feedback", action="store_true",
                   help="the file holds labels (event_id, label, source, labelled_at: docs/feedback.md), as "
                        "simulate --feedback-out writes: they are checked against the feedback contract and sent "
                        "to SD_FEEDBACK_TOPIC keyed by event id")
    p.add_argument("--id-column", help="the column that holds the event id (default: event_id)")
    p.add_argument("--timestamp-column", metavar="COLUMN",
                   help="the column that holds the event time: sent as the event's timestamp field, which the "
                        "workers read (default: timestamp)")
    p.add_argument("--label-column", help="moved from the event into the sd.label header (a row without a value "
                                          "in it is sent without the header)")
    p.add_argument("--exclude", action="append", metavar="FIELD",
                   help="leave this field out of the events sent (repeatable), e.g. the pattern column of a "
                        "simulate --out file")
    p.add_argument("--rate", type=float, default=0, help="events per second (default 0: as fast as possible)")
    p.add_argument("--limit", type=_at_least(1), help="send at most this many rows")
    p.add_argument("--skip", type=_at_least(0), default=0, metavar="N",
                   help="leave out the file's first N events (of those --limit reads): to go on after an "
                        "interrupted produce, which says the N to give")
    _add_reader_args(p)
    _add_schema_args(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("simulate", help="synthetic card transactions with labelled fraud",
                       description="--profile handbook (default): raw card events as the Fraud Detection "
                                   "Handbook simulates them (customers and terminals on a grid; fraud from "
                                   "compromised terminals, compromised cards and large amounts) and their "
                                   "delayed labels (analyst verdicts after hours, chargebacks after days) "
                                   "— docs/simulator.md. --profile velocity: the former simulator, with "
                                   "--fraud-rate injected fraud and precomputed history fields.")
    p.add_argument("--profile", choices=["handbook", "velocity"], default="handbook",
                   help="handbook (default): raw events, delayed labels; velocity: the former simulator")
    p.add_argument("--rate", type=float, default=1000, help="events per second (live mode; default 1000; 0: as fast "
                                                             "as possible, with --count N)")
    p.add_argument("--fraud-rate", type=float, help="velocity: share of injected fraud (0..1, default 0.01)")
    p.add_argument("--duration", type=float, default=60, help="seconds to run (live mode; default 60)")
    p.add_argument("--count", type=int, help="number of events, >= 1 (overrides rate × duration; --out: default 10000)")
    p.add_argument("--out", help="write a file with label and pattern columns instead of producing: CSV, JSON "
                                 "Lines (.jsonl) or Parquet (.parquet) by its name; .gz/.bz2/.zst compress CSV "
                                 "and JSON Lines; written in chunks (bounded memory, progress on stderr); "
                                 "-: JSON Lines on standard output")
    p.add_argument("--feedback-out", help="handbook, with --out: write the delayed label records "
                                          "({event_id, label, source, labelled_at}, sorted by labelled_at) "
                                          "to this CSV/JSONL/Parquet file (-: JSON Lines on standard output)")
    p.add_argument("--span-days", type=_positive_float, default=None,
                   help="time span of --out files, in days (default 7)")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="--out: rows generated and written at a time, and Parquet row group size (default 100000); "
                        "the file does not depend on it")
    p.add_argument("--accounts", type=int, help="customers/cards (default: handbook 5000, velocity 2000)")
    p.add_argument("--terminals", type=int, help="handbook: terminals (default 10000)")
    p.add_argument("--label-delay-scale", type=float,
                   help="handbook: multiply every label delay (default 1.0: analyst 1-12 h, chargeback 1-7 days); "
                        "live, labels are published to SD_FEEDBACK_TOPIC when due on the run's --clock, while "
                        "the run lasts: on the world's clock a 60 s run at 1000/s spans ~6 days, so analyst "
                        "verdicts come due and about a third of the chargebacks; on the wall clock none does "
                        "unless scaled (0.0001: chargebacks 9-60 s after their events)")
    p.add_argument("--clock", choices=["world", "wall"], default=None,
                   help="handbook, live: the events' timestamps. world (default): the simulated world's own "
                        "pace, so each card and terminal pays as often per day as in an --out file at that pace "
                        "(the run's events span count ÷ the world's events a day, ending about when the run does, "
                        "none sent before its time; labels are published as that clock passes them). wall: the "
                        "time each is sent (--rate events in every second: a card pays many times a minute, and a "
                        "model with per-card history flags most of it; docs/simulator.md)")
    p.add_argument("--end", help="--out: the UTC end of the file's time span, RFC 3339 or a date "
                                 "(2026-06-15 is its midnight; default: now); the same --seed, --end and sizes "
                                 "write the same events to every format")
    p.add_argument("--seed", type=int, default=0, help="random seed: with --end, the same seed writes the same file "
                                                     "(default 0)")
    p.add_argument("--run-id", help="prefix of generated event ids, '<run-id>-<n>' (default: for --out files "
                                    "'sim-<6 hex>', a digest of the options that decide the file, so the same "
                                    "command writes the same ids and another file other ids; live, "
                                    "'live-<UTC start time>', so that live ids never repeat a file's or another "
                                    "live run's)")
    p.add_argument("--topic", help="default SD_INPUT_TOPIC")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("lag", help="a consumer group's committed offsets, lag and members, per partition",
                       description="End offset, committed offset and lag (end − committed) of each partition "
                                   "of a topic for a consumer group: by default the workers' group "
                                   "(SD_GROUP_ID) on the input topic, and on the feedback topic the workers' "
                                   "label ingester (SD_GROUP_ID-labels). Lag 0 on every partition: every event "
                                   "is decided and its alerts delivered (offsets commit after delivery). With "
                                   "each partition, the member holding it (member id and host; a worker logs "
                                   "its member id with each assignment: 'assigned [0, 1] as member ...'), and "
                                   "the group's members and state on the first line. Joins no group, commits "
                                   "nothing. E.g. `stream-detector lag`, `stream-detector lag "
                                   "--group my-workers-retrainer`, `stream-detector lag feedback --json`. Two "
                                   "stages (SD_STAGE set): the input topic's group is stage 1's "
                                   "(SD_GROUP_ID.repartition), and `lag repartition` shows stage 2's. Lag counts "
                                   "records from the committed offset (none committed: from the first offset "
                                   "held): a gap of up to 1,000 offsets is read as the group reads it, so the "
                                   "commit markers and aborted records of a topic written in transactions, and "
                                   "the repartition topic's marks, are not counted (a drained partition shows "
                                   "0); a larger gap counts offsets; a transaction still open counts its "
                                   "offsets (at most). --json says how each partition was counted. The exit "
                                   "status is 0 whatever the lag.")
    p.add_argument("topic", nargs="?", default="input",
                   help="input (SD_INPUT_TOPIC, the default), feedback (SD_FEEDBACK_TOPIC), repartition (two "
                        "stages: the topic between them), or a topic name")
    p.add_argument("--group", help="consumer group (default SD_GROUP_ID: the workers; on the feedback topic "
                                   "SD_GROUP_ID-labels: their label ingester; with SD_STAGE set, on the input topic "
                                   "SD_GROUP_ID.repartition: stage 1, and with SD_STAGE=repartition on the feedback "
                                   "topic SD_GROUP_ID.repartition-labels: stage 1's ingester)")
    p.add_argument("--json", action="store_true", help="one JSON object: group, topic, lag, partitions")
    p.set_defaults(func=cmd_lag)

    p = sub.add_parser("tail", help="print the newest alerts, dead letters, shadow records, labels or events",
                       description="Print the last -n records of a topic (every partition, oldest first), one "
                                   "record value per line, every line JSON (JSON records as they are; any other value "
                                   "- not JSON, with a line break, not UTF-8 - as a JSON string of its text; a "
                                   "tombstone as null), and with --follow every new one. Dead "
                                   "letters: --with-headers shows why. Reads committed "
                                   "records only and joins no consumer group: nothing is committed, no worker is "
                                   "disturbed. E.g. `stream-detector tail alerts -n 5`, `stream-detector tail dlq "
                                   "--follow`; pipe to `jq` to pick fields.")
    p.add_argument("topic", nargs="?", default="alerts",
                   help="alerts (SD_ALERTS_TOPIC, the default), dlq (SD_DLQ_TOPIC), shadow (SD_SHADOW_TOPIC), "
                        "feedback (SD_FEEDBACK_TOPIC), input (SD_INPUT_TOPIC), repartition (two stages: the "
                        "topic between them; its marks show as {\"timestamp\": ...} records), or a topic name")
    p.add_argument("-n", type=int, default=10, help="how many of the newest records (default 10; 0: only new ones "
                                                    "with --follow)")
    p.add_argument("--follow", "-f", action="store_true", help="then print new records as they arrive (Ctrl-C ends)")
    p.add_argument("--with-position", action="store_true", help="prefix each line with partition and offset "
                                                                "(tab separated)")
    p.add_argument("--with-key", action="store_true", help="prefix each line with the record's key (tab separated; "
                                                           "a null key as null; docs/alerts.md says how keys are set)")
    p.add_argument("--with-headers", action="store_true", help="prefix each line with the record's headers as a "
                   "JSON object (tab separated): a dead letter's reason is there (sd.error.reason, sd.error.message)")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("threshold", help="read or set the active threshold (versioned, audited)",
                       description="get: the threshold workers use now, as JSON (value, version, the model it "
                                   "belongs to, a supervised head's probability threshold), with --history N the "
                                   "last N changes. set VALUE: a new version for the active model, atomically; "
                                   "workers use it within SD_THRESHOLD_REFRESH_S. A value far from the model's "
                                   "calibration is warned about; a negative or non-finite one is refused. "
                                   "docs/operations.md.")
    p.add_argument("action", choices=["get", "set"], help="get: the threshold in force (JSON); set: a new version")
    p.add_argument("value", nargs="?", type=float, help="new threshold (set)")
    p.add_argument("--note", help="audit note (set)")
    p.add_argument("--head", type=float, metavar="P",
                   help="set: the supervised head's probability threshold (models trained with --supervised); "
                        "VALUE may then be left out (the autoencoder's stays)")
    p.add_argument("--history", type=int, default=0, help="also print the last N changes (get)")
    p.set_defaults(func=cmd_threshold)

    p = sub.add_parser("keygen", help="create an Ed25519 key pair for signing model artifacts",
                       description="Writes DIR/signing.pem (private, 0600) and DIR/verify.pem (public). "
                                   "Publishers sign with SD_SIGNING_KEY_FILE; workers with SD_VERIFY_KEY_FILE "
                                   "refuse unsigned or mismatched artifacts before loading them.")
    p.add_argument("dir", help="directory for the two PEM files")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("topics", help="create the input, alerts, dead-letter, feedback and shadow topics if missing",
                       description="Creates SD_INPUT_TOPIC, SD_ALERTS_TOPIC, SD_DLQ_TOPIC, SD_FEEDBACK_TOPIC and "
                                   "SD_SHADOW_TOPIC on SD_KAFKA_BOOTSTRAP if they do not exist; existing topics are "
                                   "left as they are.")
    p.add_argument("--partitions", type=_at_least(1), help="default SD_TOPIC_PARTITIONS")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("demo", help="the main job on local services: raw card events, account and terminal "
                                    "history, delayed labels; precision with and without labels",
                       description="--profile handbook (default): simulate 35 days of card payments with the "
                                   "Fraud Detection Handbook's fraud scenarios and delayed labels (analyst "
                                   "verdicts, chargebacks); train two models on the history (account + terminal "
                                   "history; + label features and a supervised head); publish each as its own "
                                   "deployment; two workers replay four weeks of history from Kafka (their entity "
                                   "and label state), then the last week streams live; print, per deployment, "
                                   "alerts, precision, recall and frauds caught per scenario. About 1.5 minutes on 2 "
                                   "quiet cores. "
                                   "--profile velocity: the former stateless demo. Needs running Kafka and Redis "
                                   "(make demo starts them).")
    p.add_argument("--profile", choices=["handbook", "velocity"], default="handbook",
                   help="handbook (default): the realistic path; velocity: the stateless path on precomputed "
                        "history fields")
    p.add_argument("--cards", type=int, default=2000, help="handbook: cards (default 2000; about 140,000 events)")
    p.add_argument("--terminals", type=int, default=4000, help="handbook: terminals (default 4000)")
    p.add_argument("--epochs", type=int, default=8, help="handbook: autoencoder epochs (default 8)")
    p.add_argument("--seed", type=_seed, default=0, help="handbook: simulation and training seed (default 0)")
    p.add_argument("--rate", type=float, default=2000, help="events per second of live traffic (default 2000)")
    p.add_argument("--duration", type=float, help="velocity: seconds of live traffic (default 60)")
    p.add_argument("--fraud-rate", type=float, help="velocity: share of injected fraud (default 0.01)")
    p.add_argument("--workdir", default="demo-out",
                   help="where the bundles, summary.json and the simulated files go (default demo-out)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("console", help="operator console in the browser: live scores, threshold what-if, "
                                       "explain an event, models (docs/console.md)",
                       description="Serves the operator console (one web page and its JSON API, FastAPI on "
                                   "uvicorn) for the deployment the SD_* settings name: live scores and alert "
                                   "rate from the workers' sample, what a different threshold would flag "
                                   "(what-if), why one event was or was not flagged, the model versions and "
                                   "a challenger in shadow. Read-only unless SD_CONSOLE_TOKEN is set (then the "
                                   "token's holder may set the threshold or roll back). Binds 127.0.0.1 by "
                                   "default; expose it only behind something that authenticates people. The "
                                   "API is described at /openapi.json (docs/console.md).")
    p.add_argument("--host", help="address to bind (default SD_CONSOLE_HOST, 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, help="port (default SD_CONSOLE_PORT, 8050)")
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("check-config", help="validate settings, reach Kafka (topics, partitions) and Redis "
                                            "(active model loads, threshold present); exit 0 ok, 1 a check failed, 2 a "
                                            "setting is invalid",
                       description="Checks the SD_* settings as a worker would read them, then reaches Kafka "
                                   "(the topics and their partitions) and Redis (the active model loads and warms, "
                                   "a threshold belongs to it): one line per check, OK / WARN / FAIL. Exit 0 "
                                   "when nothing failed, 1 when a check failed, 2 when a setting's value is "
                                   "invalid (one line naming it, before any check runs).")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each service (default 5)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("retrain", help="retrain on recent clean traffic, gate, publish (service, or --once)",
                       description="Keep a window of recent events (never alerted or fraud-labelled ones), "
                                   "retrain on schedule (SD_RETRAIN_INTERVAL_S), on drift, or on label volume "
                                   "(SD_RETRAIN_ON_FRAUDS new frauds), gate candidates against the active model "
                                   "(SD_GATE_*), publish the ones that pass. A model with entity or label "
                                   "features is retrained from the history read back from the input and "
                                   "feedback topics; a model with a supervised head gets a new head. Settings: "
                                   "SD_RETRAIN_* / SD_GATE_* (docs/retraining.md, or `check-config`).")
    p.add_argument("--once", action="store_true", help="consume what is there now, train, gate, publish, exit "
                   "(exit 0 promoted, 3 refused by the gate, 4 not enough data, 5 in shadow: with "
                   "SD_RETRAIN_SHADOW_EVENTS the candidate became the challenger, or the challenger in shadow "
                   "was judged and stays there; with a challenger in shadow, --once judges it instead of training). "
                   "Each --once trains on the events since the previous one (its group's position is saved), not "
                   "on the whole window: docs/retraining.md")
    p.add_argument("--timeout", type=float, default=120.0, help="--once: longest wait to read the topics")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads for training and scoring (default: SD_TORCH_THREADS when set, "
                        "else torch's, one per core). The retrainer runs beside workers: give it the cores it may "
                        "have, oversubscribed threads make each step many times slower")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("model", help="the model registry: list, show, promote, rollback, prune, export; a "
                                     "challenger in shadow: shadow, shadow-status, shadow-stop",
                       description="The model registry in Redis (docs/retraining.md). list: every stored "
                                   "version, newest first, with its mark (active, previous, shadow), threshold, "
                                   "store and gate (passed, refused, no-verdict, none); show VERSION: its "
                                   "metadata, gate record, calibration and input fields (JSON; each field's type "
                                   "and what training saw of it: median or kept values, how often it was "
                                   "missing); promote VERSION: make any "
                                   "stored version active with its threshold (a refused one too, noted; the "
                                   "challenger too: its period then ends as promoted); rollback: the previous "
                                   "version active again; prune [--keep N]: remove the oldest versions beyond N "
                                   "(the active, previous and challenger are always kept); export VERSION --out "
                                   "DIR: a stored version as a bundle directory (for score --model DIR). shadow "
                                   "VERSION|DIR: "
                                   "make a stored version (or a bundle directory, stored first) the challenger: "
                                   "workers score live traffic with it beside the active model without alerting "
                                   "(docs/retraining.md, \"Challenger in shadow\"); shadow-status: its figures "
                                   "and the last decisions (JSON); shadow-stop: end its period, the active model "
                                   "stays.")
    p.add_argument("action", choices=["list", "show", "promote", "rollback", "prune", "export", "shadow",
                                      "shadow-status", "shadow-stop"],
                   help="what to do (the description above says each)")
    p.add_argument("version", nargs="?", help="model version (show, promote, export, shadow) or bundle directory "
                   "(shadow)")
    p.add_argument("--out", help="export: the bundle directory to write (new, or empty)")
    p.add_argument("--keep", type=int, help="prune: the newest versions to keep (default SD_MODEL_KEEP; 0 keeps "
                   "only the active, previous and shadow ones, which are always kept)")
    p.add_argument("--min-events", type=int, default=100_000,
                   help="shadow: events to score before the retrainer judges it (default 100000)")
    p.add_argument("--max-seconds", type=float, default=86_400.0,
                   help="shadow: longest period before it is judged on what there is (default 86400)")
    p.add_argument("--replace", action="store_true",
                   help="shadow: end the period of a challenger already in shadow (outcome replaced) and start "
                        "this one (without it, a second start is refused)")
    p.set_defaults(func=cmd_model)
    return parser


def _set_threads(threads: int | None) -> None:
    """``--threads`` (train, score): torch's intra-op threads for this process."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    global _JSON_LINES
    # before the settings are read: usage and settings errors are JSON lines too when SD_LOG_JSON is
    _JSON_LINES = os.environ.get("SD_LOG_JSON", "").strip().lower() in ("1", "true", "yes", "on")
    parser = build_parser()
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    settings: Settings | None = None
    try:
        settings = load_settings()
        _setup_logging(settings, args.verbose, one_shot=_one_shot(args), worker=args.command == "worker")
        if args.command != "check-config":  # which reports them as failed checks
            for typo in unknown_settings():
                _say(f"warning: {typo}")
        _set_threads(getattr(args, "threads", None))
        _spool_streams(args)
        return int(args.func(args, settings))
    except StreamDetectorError as exc:
        said = str(exc)
        for spooled, shown in _SPOOLED.items():  # the temporary copy of a stream: named as the user gave it
            said = said.replace(spooled, shown)
        _say(f"stream-detector {args.command}: error: {said}", "ERROR")
        if settings is None and args.command == "check-config" and args.json:
            # a script reading --json gets the failure as a check too (a trial: nothing on stdout, exit 2)
            print(orjson.dumps([{"status": "fail", "name": "settings", "detail": said}]).decode())
        return 2
    except KeyboardInterrupt:  # said, so that an interrupted command is not mistaken for a finished one
        _say(f"stream-detector {args.command}: interrupted", "ERROR")
        return 130
    except BrokenPipeError as exc:
        if not _stdout_closed():  # a socket's, not ours: an error as any other
            _say(f"stream-detector {args.command}: {type(exc).__name__}: {exc}", "ERROR")
            return 1
        _silence_stdout()  # the reader of stdout went away (`lag | head -1`, a trial): stop quietly, as Unix tools do
        return 141  # 128 + SIGPIPE: what a shell reports for a tool a closed pipe ended
    except Exception as exc:  # infrastructure: one line, plus the traceback when -v
        if args.verbose:
            raise
        if _kafka_unreachable(exc):  # as `tail` and `lag` say it
            where = settings.kafka_bootstrap if settings is not None else "SD_KAFKA_BOOTSTRAP"
            why = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
            _say(f"stream-detector {args.command}: error: cannot reach Kafka at {where}: {why}{_PROBE_HINT}", "ERROR")
            return 2 if args.command not in _SERVICES else 1  # the services' documented code for Kafka / Redis failing
        if _redis_unreachable(exc):  # the same line and exit code as Kafka's
            _say(f"stream-detector {args.command}: error: cannot reach Redis at {_redis_where(settings)}: "
                 f"{type(exc).__name__}: {exc}", "ERROR")
            return 2 if args.command not in _SERVICES else 1
        _say(f"stream-detector {args.command}: {type(exc).__name__}: {exc}", "ERROR")
        return 1


def _spool_streams(args: argparse.Namespace) -> None:
    """``--input`` / ``--feedback`` given as ``-`` (standard input), a pipe, FIFO or device: read once
    into a temporary file (``events_io.spool_stream``), which the command reads instead."""
    from .events_io import spool_stream

    for name in ("input", "feedback"):
        given = getattr(args, name, None)
        spooled = spool_stream(given) if isinstance(given, str) and given else None
        if spooled is None:
            continue
        shown = "standard input" if given == "-" else str(given)
        setattr(args, name, str(spooled))
        setattr(args, f"{name}_shown", shown)  # what the user named, for the lines that say what was read
        _SPOOLED[str(spooled)] = shown  # and for the errors, which name the file read (a trial)
        size = spooled.stat().st_size
        _say(f"read {size:,} bytes from {shown}" + (f" ({spooled.suffix[1:]}, by its first bytes)" if size else ""))


def _one_shot(args: argparse.Namespace) -> bool:
    """Whether the command runs once and ends (``retrain --once`` too), not as a service."""
    return args.command not in _SERVICES or (args.command == "retrain" and bool(getattr(args, "once", False)))


def _redis_unreachable(exc: Exception) -> bool:
    """Whether ``exc`` is redis-py's "no connection" (refused, timed out, no Sentinel primary): not
    a command Redis refused."""
    import redis

    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


def _redis_where(settings: Settings | None) -> str:
    """The Redis the settings name, password redacted, with the setting to change."""
    from .redis_client import redact

    if settings is None:
        return "SD_REDIS_URL"
    if settings.redis_sentinels:
        return f"{settings.redis_sentinels} (SD_REDIS_SENTINELS, primary {settings.redis_sentinel_master!r})"
    return f"{redact(settings.redis_url)} (SD_REDIS_URL)"


def _probe_kafka(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """A one-shot command's first look at the broker, once its arguments are checked (``lag``,
    ``tail``, ``topics``, ``produce``, ``simulate`` live): a TCP connection to each bootstrap address
    in turn, closed at once; the first that accepts one is enough (the client then connects, with
    TLS or SASL, as before). When none does — refused, an unknown host, or no answer within
    ``timeout_s`` — ``ConfigError`` says so at once, where kafka-python's bootstrap would give up
    after 30 s with nothing on the screen meanwhile (a new-user trial: `lag`, `tail` and `topics`
    with no broker running took 31 s each). The addresses are tried at the same time (one daemon
    thread each), so filtered ones cost ``timeout_s`` together, not each in turn."""
    import queue
    import threading

    servers = settings.bootstrap_servers
    answers: queue.Queue[tuple[int, str | None]] = queue.Queue()

    def connect(at: int, server: str) -> None:
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
            answers.put((at, None))
        except TimeoutError:  # a filtered address: nothing refuses, nothing answers
            answers.put((at, f"no answer in {timeout_s:g} s"))
        except OSError as exc:
            answers.put((at, exc.strerror or type(exc).__name__))

    for at, server in enumerate(servers):  # daemon: a command that goes on does not wait for the others at exit
        threading.Thread(target=connect, args=(at, server), name=f"kafka-probe-{at}", daemon=True).start()
    why: dict[int, str] = {}
    while len(why) < len(servers):
        try:
            at, reason = answers.get(timeout=timeout_s + 1.0)
        except queue.Empty:  # a resolver that hangs past the connect timeout
            why.update({k: f"no answer in {timeout_s:g} s" for k in range(len(servers)) if k not in why})
            break
        if reason is None:
            return
        why[at] = reason
    reasons = [(server, why[at]) for at, server in enumerate(servers)]
    said = reasons[0][1] if len(reasons) == 1 else "; ".join(f"{server}: {why}" for server, why in reasons)
    raise ConfigError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {said}{_PROBE_HINT}")


def _kafka_unreachable(exc: Exception) -> bool:
    """Whether ``exc`` is kafka-python 3's "no broker reachable": its bootstrap gave up
    (``KafkaTimeoutError`` "Unable to bootstrap from [...]")."""
    from kafka.errors import KafkaTimeoutError

    return isinstance(exc, KafkaTimeoutError) and "bootstrap" in str(exc).lower()


if __name__ == "__main__":
    sys.exit(main())
