"""The ClientApp: Flower messages in, calls into `fedper.client`, messages out.

Everything a client needs arrives in the message (the run's settings under `SPEC_KEY` in its
ConfigRecord, the round, the client it is for, the last round its training counted in, the
shared arrays packed as one array, `fedper.packing`; in a training message, perhaps an earlier
round to evaluate first, `engine.fold_evaluation`) or comes from the node's own config
(`partition-id`, `num-partitions`, `data-dir`, `state-dir`; the test-only `rogue="nan"` forges
replies). A
problem that makes the client unfit for the run (a folder it cannot see, a partition that
differs from the server's, an out-of-memory GPU) is answered with a `fatal` record, and the
server stops the run with it; any other exception is an ordinary client failure, recorded for
the round.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedper.client import ClientWorker, worker_for
from fedper.errors import FedPerError
from fedper.node import ClientSetupError, NodePaths
from fedper.packing import pack, unpack
from fedper.spec import (
    CLIENT_KEY,
    EVALUATE_ROUND_KEY,
    EVALUATION_RECORD,
    FATAL,
    HEAD_ROUND_KEY,
    SPEC_KEY,
    RunSpec,
    shared_nodes,
)

app = ClientApp()


def named_client(msg: Message) -> int | None:
    """The client a message names (the start-up query names none)."""
    configs = msg.content.config_records
    value = configs["config"].get(CLIENT_KEY) if "config" in configs else None
    return int(value) if value is not None else None


def client_id(msg: Message, context: Context, nodes: int | None) -> int:
    """The client a message is for: the node's own partition-id, or, on a simulation whose
    `nodes` nodes serve clients in turn, the client the message names."""
    own, named = int(context.node_config["partition-id"]), named_client(msg)
    if nodes is not None:
        return own if named is None else named
    if named is not None and named != own:
        raise ClientSetupError(
            f"a message for client {named} reached the node of partition-id={own}: the server "
            "and this node disagree about which client it serves; restart the node"
        )
    return own


def worker(msg: Message, context: Context) -> tuple[ClientWorker, int, int]:
    """The run's worker on this node, the client id and the round of a message."""
    config = msg.content["config"]
    spec = RunSpec.from_json(str(config[SPEC_KEY]))
    nodes = shared_nodes(spec.cfg)
    cid = client_id(msg, context, nodes)
    runner = worker_for(spec, NodePaths.of(spec, context.node_config))
    partitions = context.node_config.get("num-partitions")
    if nodes is not None and named_client(msg) is None:  # the start-up query: the node itself
        runner.check_client(cid, partitions, nodes)
    else:
        runner.check_client(cid, None if nodes is not None else partitions)
    round_num, kind = int(config.get("server-round", 0)), msg.metadata.message_type
    earlier = config.get(EVALUATE_ROUND_KEY)  # the round to evaluate, when not the message's
    if earlier is not None:
        injected_fault(spec, cid, int(earlier), "evaluate")
        if kind == "evaluate":
            return runner, cid, int(earlier)
    injected_fault(spec, cid, round_num, kind)
    return runner, cid, round_num


def injected_fault(spec: RunSpec, cid: int, round_num: int, kind: str) -> None:
    """The test-only `faults.fail_*` injection: raise where a real client could fail (OOM, a
    bad file); and `faults.hold_*`: wait in a phase until a file exists, so a test can act
    while a round is surely under way."""
    faults = spec.resolved_config.get("faults") or {}
    phase = {"train": "train", "evaluate": "evaluate"}.get(kind)
    if faults.get("hold_round") == round_num and faults.get("hold_phase") == phase:
        hold_until(Path(faults["hold_until"]), float(faults["hold_seconds_max"]))
    if (faults.get("fail_client"), faults.get("fail_round"), faults.get("fail_phase")) == (
        cid,
        round_num,
        phase,
    ):
        raise RuntimeError(f"injected failure of client {cid} in round {round_num} {phase}")


def hold_until(release: Path, most_seconds: float) -> None:
    """Wait until the file `release` exists (a test creates it), at most `most_seconds`."""
    deadline = time.monotonic() + most_seconds
    while not release.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"held {most_seconds:g} s and {release} never appeared")
        time.sleep(0.05)


def reply(
    msg: Message, metrics: dict, arrays: ArrayRecord | None = None, evaluation: dict | None = None
) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = arrays
    if evaluation is not None:
        content[EVALUATION_RECORD] = MetricRecord(evaluation)
    return Message(content=content, reply_to=msg)


def fatal(msg: Message, context: Context, error: FedPerError) -> Message:
    """A reply that stops the run: the client cannot take part as configured."""
    named = named_client(msg)
    cid = named if named is not None else context.node_config.get("partition-id", -1)
    record = ConfigRecord({"reason": str(error), "cid": int(cid)})
    return Message(content=RecordDict({FATAL: record}), reply_to=msg)


def shared_arrays(msg: Message) -> dict | None:
    """The shared arrays the server sent, in its order; None when it sent none."""
    arrays = msg.content.array_records.get("arrays")
    return (unpack(arrays) or None) if arrays is not None else None


def packed_like(state: dict, sent: dict | None) -> ArrayRecord:
    """What a client sends back, packed in the order of what it received (the server checks the
    reply's layout against the message's, byte for byte)."""
    order = list(sent) if sent and set(sent) == set(state) else list(state)
    return pack({key: state[key] for key in order})


def head_round(msg: Message) -> int | None:
    """The last round the server counted this client's training in; None from a sender that
    does not say."""
    value = msg.content["config"].get(HEAD_ROUND_KEY)
    return int(value) if value is not None else None


@app.query()
def introduce(msg: Message, context: Context) -> Message:
    """Set up for the run (folders, partition, initial model) and say which client this is."""
    try:
        worker(msg, context)
    except FedPerError as error:
        return fatal(msg, context, error)
    return reply(msg, {"cid": int(context.node_config["partition-id"])})


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    def work(runner: ClientWorker, cid: int, round_num: int) -> Message:
        shared = shared_arrays(msg)
        evaluation = None
        earlier = msg.content["config"].get(EVALUATE_ROUND_KEY)
        if earlier is not None:  # the arrays are that round's result: evaluate them first
            evaluation = runner.evaluate(cid, int(earlier), shared, head_round(msg))
        result = runner.train(cid, round_num, shared, head_round(msg))
        sending = forged_for_tests(result.shared, context)
        return reply(msg, result.metrics, packed_like(sending, shared), evaluation)

    return handle(msg, context, work)


def forged_for_tests(state: dict, context: Context) -> dict:
    """Test-only: a node started with node config `rogue="nan"` sends NaN shared arrays, as a
    broken or malicious client could; the server must refuse them (fedper.replies)."""
    if context.node_config.get("rogue") != "nan":
        return state
    nan = float("nan")
    return {k: torch.full_like(v, nan) if v.is_floating_point() else v for k, v in state.items()}


@app.evaluate()
def evaluate_round(msg: Message, context: Context) -> Message:
    def work(runner: ClientWorker, cid: int, round_num: int) -> Message:
        metrics = runner.evaluate(cid, round_num, shared_arrays(msg), head_round(msg))
        return reply(msg, metrics)

    return handle(msg, context, work)


def handle(msg: Message, context: Context, work) -> Message:
    """Set-up problems and errors that no round can fix (out of GPU memory) stop the run;
    anything else in the work is an ordinary client failure, recorded for the round."""
    try:
        runner, cid, round_num = worker(msg, context)
    except FedPerError as error:
        return fatal(msg, context, error)
    try:
        return work(runner, cid, round_num)
    except ClientSetupError as error:
        return fatal(msg, context, error)
