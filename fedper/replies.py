"""What the server accepts from a client: each reply checked against the message it answers.

The server trusts no reply. A reply counts only if it comes from the node the message went
to, carries the metrics its phase reports with sane values (accuracies within [0, 1], losses not
negative,
example counts equal to that client's split sizes in the run's partition), and, from
training, the shared arrays with the layout the server sent (same keys, shapes and dtypes,
`fedper.packing`) and finite values. A reply that fails any check is that client's failure
for the round, with the reason, exactly like a client that raised: it is never averaged, and
the round goes on under `min_successful_clients`. Client ids always come from the server's
own record of which node each message went to, never from what a reply says.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from fedper.packing import layout_of, unpack_numpy
from fedper.spec import FATAL, RESTARTED_METRIC

TRAIN, EVALUATE = "train", "evaluate"


class Refused(ValueError):
    """A reply the server does not accept; the text says why."""


@dataclass
class Phase:
    """One phase of a round after every reply was checked: what counts and what failed."""

    name: str
    asked: list[int]  # the clients messaged, in client order
    metrics: dict[int, dict] = field(default_factory=dict)  # accepted replies, by client id
    arrays: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # their shared arrays
    failures: list[dict] = field(default_factory=list)  # {cid, phase, reason}, in client order
    bytes_up: int = 0  # array payload of the accepted replies

    def fail(self, cid: int, reason: str) -> None:
        self.failures.append({"cid": cid, "phase": self.name, "reason": reason})
        self.failures.sort(key=lambda failure: failure["cid"])


def failure_reason(text: str) -> str:
    """The client's own exception message out of the Ray/Flower traceback around it."""
    marker = "Message: "
    if marker in text:
        text = text[text.rindex(marker) + len(marker) :]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "unknown error").rstrip("'>").strip()


def fatal_reason(reply: Message) -> str | None:
    """What a client that cannot take part at all says (the run stops with it); else None."""
    if reply.has_error() or FATAL not in reply.content.config_records:
        return None
    return str(reply.content.config_records[FATAL].get("reason", "a client cannot take part"))


class ReplyCheck:
    """The checks of one run: each client's split sizes, from the server's own partition."""

    def __init__(self, partition: list[dict]) -> None:
        self.sizes = {
            int(c["cid"]): (c["num_train"], c["num_val"], c["num_test"]) for c in partition
        }

    def collect(
        self, phase: Phase, answered: dict[int, tuple[Message, Message]], record: str = "metrics"
    ) -> Phase:
        """Check every client's reply (cid -> (sent, reply)) into `phase`, in client order.
        `record` names the reply's metric record of this phase: another one is an evaluation
        carried in a training reply (`engine.fold_evaluation`), whose arrays its training phase
        checks."""
        for cid in sorted(answered):
            sent, reply = answered[cid]
            if reply.has_error():
                phase.fail(cid, failure_reason(reply.error.reason))
                continue
            try:
                metrics, arrays = self.accept(phase.name, cid, sent, reply, record)
            except Refused as refused:
                phase.fail(cid, f"reply refused: {refused}")
                continue
            phase.metrics[cid] = metrics
            if arrays is not None:
                phase.arrays[cid] = arrays
                phase.bytes_up += sum(len(a.data) for a in reply.content["arrays"].values())
        phase.metrics = dict(sorted(phase.metrics.items()))
        return phase

    def accept(
        self, phase: str, cid: int, sent: Message, reply: Message, record: str = "metrics"
    ) -> tuple[dict, dict[str, np.ndarray] | None]:
        """The reply's metrics and (from training) shared arrays; `Refused` says why not."""
        source, destination = reply.metadata.src_node_id, sent.metadata.dst_node_id
        if source != destination:
            raise Refused(f"it came from node {source}, not node {destination} the message went to")
        try:  # whatever a reply holds, a bad one is refused, never a crash of the server
            content = reply.content
            if record not in content.metric_records:
                raise Refused(
                    "it holds no metrics" if record == "metrics" else f"it holds no {record}"
                )
            metrics = checked_metrics(phase, dict(content.metric_records[record]),
                                      self.sizes[cid])  # fmt: skip
            if record != "metrics":
                return metrics, None
            sent_arrays = sent.content.array_records.get("arrays")
            got = content.array_records.get("arrays")
            if phase != TRAIN or sent_arrays is None or not len(sent_arrays):
                if got is not None and len(got):
                    raise Refused("it holds arrays where none were expected")
                return metrics, None
            return metrics, checked_arrays(sent_arrays, got)
        except Refused:
            raise
        except Exception as error:  # noqa: BLE001 - a malformed reply of any kind
            raise Refused(f"it cannot be read ({type(error).__name__}: {error})") from None


def checked_arrays(sent, got) -> dict[str, np.ndarray]:
    """The reply's shared arrays, if they have the sent layout and finite values."""
    if got is None:
        raise Refused("it holds no shared arrays")
    if layout_of(got) != layout_of(sent):
        expected = {k: (str(a.dtype), a.shape) for k, a in unpack_numpy(sent).items()}
        raise Refused(
            f"its arrays differ from the {len(expected)} sent: {layout_difference(expected, got)}"
        )
    arrays = unpack_numpy(got)
    for key, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise Refused(f"{key} holds non-finite values")
    return arrays


def layout_difference(expected: dict, got) -> str:
    """The first key, shape or dtype of a reply that differs from what was sent."""
    try:
        received = {k: (str(a.dtype), a.shape) for k, a in unpack_numpy(got).items()}
    except ValueError as error:
        return str(error)
    for key in expected.keys() | received.keys():
        if key not in received:
            return f"{key} is missing"
        if key not in expected:
            return f"{key} was not sent"
        if received[key] != expected[key]:
            return f"{key} is {received[key][0]} {received[key][1]}, not {expected[key][0]} {expected[key][1]}"
    return "the same arrays in another order"


def is_count(value, expected: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == expected


def is_number(value, low: float = 0.0, high: float = math.inf) -> bool:
    """A finite int or float within [low, high]."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and low <= value <= high


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def is_loss(value) -> bool:
    """A mean cross-entropy: not negative. NaN and infinity pass: a diverged model's loss is an
    honest measurement that results.json records (as null), not a forged reply."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and (math.isnan(value) or value >= 0)


# What each phase reports: metric -> (check of its value given the client's split sizes
# (train, val, test), why it fails). Without a validation split a client reports NaN there.
Sizes = tuple[int, int, int]
RULES: dict[str, dict[str, tuple[Callable[[object, Sizes], bool], str]]] = {
    TRAIN: {
        "num-examples": (lambda v, s: is_count(v, s[0]), "is not its {0} training examples"),
        "train_loss": (lambda v, s: is_loss(v), "is not a loss"),
    },
    EVALUATE: {
        "num-examples": (lambda v, s: is_count(v, s[2]), "is not its {2} test examples"),
        "num_val_examples": (lambda v, s: is_count(v, s[1]), "is not its {1} validation examples"),
        "accuracy": (lambda v, s: is_number(v, 0, 1), "is not an accuracy"),
        "loss": (lambda v, s: is_loss(v), "is not a loss"),
        "val_accuracy": (
            lambda v, s: is_number(v, 0, 1) if s[1] else is_nan(v),
            "is not an accuracy",
        ),
        "val_loss": (lambda v, s: is_loss(v) if s[1] else is_nan(v), "is not a loss"),
    },
}
FLAGS = (RESTARTED_METRIC,)  # 0 or 1
TIMERS = "seconds_"  # seconds a client spent per part of its work: finite and not negative


def checked_metrics(phase: str, metrics: dict, sizes: Sizes) -> dict:
    """The metrics a phase reports, each checked; other keys are dropped."""
    out = {}
    for key, (check, why) in RULES[phase].items():
        if key not in metrics:
            raise Refused(f"it reports no {key}")
        if not check(metrics[key], sizes):
            raise Refused(f"its {key}={metrics[key]!r} {why.format(*sizes)}")
        out[key] = metrics[key]
    for key in FLAGS:
        if metrics.get(key, 0) not in (0, 1):
            raise Refused(f"its {key}={metrics[key]!r} is not 0 or 1")
        out[key] = int(metrics.get(key, 0))
    for key, value in metrics.items():
        if key.startswith(TIMERS):
            if not is_number(value):
                raise Refused(f"its {key}={value!r} is not a duration")
            out[key] = value
    return out
