"""In-process runs for tests: the ServerApp loop and the ClientApp handlers, without Ray.

`LocalGrid` is a Flower Grid whose nodes are the ClientApp's handlers called in this process
with each node's own node config, so server logic (discovery, rounds, failures, resume) and
client logic run end to end in a fraction of a second per round. A node can be made rogue:
its honest reply goes through a function that forges it before the server sees it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedper import client_app
from fedper.experiment import run_experiment
from fedper.planning import plan_run
from fedper.server_app import run_server
from fedper.spec import RunPlan
from helpers.config import make_config

HANDLERS = {
    MessageType.QUERY: client_app.introduce,
    MessageType.TRAIN: client_app.train_round,
    MessageType.EVALUATE: client_app.evaluate_round,
}

# small enough for CPU tests: 3 digits clients, MobileNet-v1 at width 0.25
SMALL = [
    "dataset=digits",
    "model.width_multiplier=0.25",
    "num_clients=3",
    "clients_per_round=3",
    "num_rounds=2",
    "num_epochs=1",
    "batch_size=32",
    "client_device=cpu",
    "server_device=cpu",
]


def set_task_identity() -> None:
    """Messages created outside a Flower process need a task identity to stamp on them."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def node_configs(num_clients: int, **extra) -> list[dict]:
    """One node per client, as Flower's simulation gives them."""
    return [
        {"partition-id": cid, "num-partitions": num_clients, **extra} for cid in range(num_clients)
    ]


# a rogue node: (the message, the honest reply) -> the reply the server gets
Forgery = Callable[[Message, Message], Message]


class LocalGrid:
    """A Grid of in-process nodes: every pushed message is answered at once by the handler;
    `rogue` maps a partition-id to the forgery its node applies to its replies."""

    def __init__(self, nodes: list[dict], rogue: dict[int, Forgery] | None = None) -> None:
        self.nodes = {1000 + i: config for i, config in enumerate(nodes)}
        self.rogue = rogue or {}
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for msg in messages:
            message_id = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = message_id  # what Flower's grids do on push
            node = msg.metadata.dst_node_id
            context = Context(
                run_id=1, node_id=node, node_config=dict(self.nodes[node]), state=RecordDict(),
                run_config={},
            )  # fmt: skip
            try:
                reply = HANDLERS[msg.metadata.message_type](msg, context)
            except Exception as error:  # as Flower turns a ClientApp exception into an error reply
                reply = Message(
                    Error(code=0, reason=f"ClientApp raised. Message: {error}"), reply_to=msg
                )
            forge = self.rogue.get(self.nodes[node].get("partition-id"))
            if forge is not None and msg.metadata.message_type != MessageType.QUERY:
                reply = forge(msg, reply)
            self.sent.append(msg)
            self.replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def plan_local(tmp_path: Path, overrides: list[str] = (), name: str = "run") -> RunPlan:
    """A planned run whose data, heads and results live under `tmp_path`."""
    cfg = make_config(
        [*SMALL, f"data_dir={tmp_path / 'datasets'}", f"state_dir={tmp_path / 'states'}",
         *overrides]
    )  # fmt: skip
    return plan_run(cfg, tmp_path / name)


def run_local(
    plan: RunPlan, nodes: list[dict] | None = None, rogue: dict[int, Forgery] | None = None
):
    """Every round of the plan in this process; returns the RunResults."""
    set_task_identity()
    nodes = nodes if nodes is not None else node_configs(plan.spec.cfg.num_clients)
    return run_server(LocalGrid(nodes, rogue), plan)


def newest_head(store, cid: int, before_round: int):
    """The newest head a store holds from a round before `before_round`; None if none."""
    found = store.load_version(cid, before_round)
    return found[1] if found is not None else None


def run_settings(root: Path, overrides=()) -> list[str]:
    """The small test run's overrides, its datasets and heads under `root`."""
    return [*SMALL, f"data_dir={root / 'datasets'}", f"state_dir={root / 'states'}", *overrides]


def start_run(root: Path, overrides=(), run: str = "run", engine=run_local):
    """`python -m fedper.main <overrides> hydra.run.dir=<root/run>`, clients in this process."""
    given = run_settings(root, overrides)
    return run_experiment(make_config(given), root / run, given, engine=engine)


def resume_run(run_dir, overrides=(), engine=run_local):
    """`python -m fedper.main resume=<run_dir> <overrides>`."""
    given = [f"resume={run_dir}", *overrides]
    return run_experiment(make_config(given), "unused-hydra-dir", given, engine=engine)
