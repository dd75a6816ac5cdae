"""Messages to and from the clients through Flower's Grid: discovery, then one exchange per
phase, each reply paired with the message it answers (so a client is always named from what
the server sent where, never from the reply)."""

from __future__ import annotations

import threading
import time

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedper.errors import FedPerError, Interrupted, resume_command
from fedper.replies import failure_reason, fatal_reason
from fedper.spec import SPEC_KEY, RunPlan, shared_nodes

POLL_SECONDS = 0.02  # how often the server asks the Grid for replies
# seconds before each new try of a read the SuperLink answered with an internal error
READ_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 4.0)


def read_again(read, *args) -> list:
    """A read from the Grid (node ids, replies) as a list, tried again when the SuperLink
    answers HTTP 500: under load its SQLite database says "database is locked" for a moment,
    and Flower itself only retries 502-504. Any other error, or a 500 that outlasts the tries,
    goes up as before."""
    for wait in READ_RETRY_SECONDS:
        try:
            return list(read(*args))
        except Exception as error:
            if getattr(getattr(error, "response", None), "status_code", None) != 500:
                raise
        time.sleep(wait)
    return list(read(*args))


class ClientLink:
    """Messages to and from the clients, with a timeout and a way to stop."""

    def __init__(self, grid: Grid, plan: RunPlan, stop: threading.Event | None) -> None:
        self.grid, self.stop = grid, stop
        engine = plan.spec.cfg.engine
        self.spec_json = plan.spec.to_json()
        self.run_dir = plan.spec.run_dir
        self.connect_timeout = float(engine.connect_timeout)
        self.reply_timeout = float(engine.reply_timeout)
        self.num_clients = int(plan.spec.cfg.num_clients)
        # the nodes discovery waits for: one per client, or the simulation's shared nodes
        self.num_nodes = shared_nodes(plan.spec.cfg) or self.num_clients
        self.push_seconds = 0.0  # the last exchange's push of its messages to the engine
        self.received_at: dict[int, float] = {}  # cid -> when its last reply came in (wall)

    def config(self, round_num: int) -> ConfigRecord:
        return ConfigRecord({SPEC_KEY: self.spec_json, "server-round": round_num})

    def stopped(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Interrupted("stopped while waiting for clients")

    def exchange(
        self,
        messages: dict[int, Message],
        what: str,
        timeout: float | None = None,
        who: str = "partition-id(s)",
    ) -> dict[int, tuple[Message, Message]]:
        """Send each client (cid -> message) its message and wait for every reply: cid ->
        (sent, reply). A client that does not reply in time, or answers that it cannot take
        part, stops the run; `what` names the exchange (e.g. "round 3 train") in the error."""
        timeout = timeout or self.reply_timeout
        sent = list(messages.items())
        pushing = time.time()
        ids = list(self.grid.push_messages([message for _, message in sent]))
        self.push_seconds = time.time() - pushing
        pending = dict(zip(ids, sent, strict=True))  # message id -> (cid, message)
        deadline = time.monotonic() + timeout
        answered: dict[int, tuple[Message, Message]] = {}
        while pending:
            self.stopped()
            for reply in read_again(self.grid.pull_messages, list(pending)):
                if (found := pending.pop(reply.metadata.reply_to_message_id, None)) is not None:
                    cid, message = found
                    answered[cid] = (message, reply)
                    self.received_at[cid] = time.time()
            if pending and time.monotonic() > deadline:
                missing = sorted(cid for cid, _ in pending.values())
                raise FedPerError(
                    f"{what}: {who} {missing} did not reply within {timeout:g} s "
                    f"(engine.reply_timeout): check that their nodes are running, then "
                    f"continue with: {resume_command(self.run_dir)}"
                )
            if pending:
                time.sleep(POLL_SECONDS)
        for cid in sorted(answered):
            if (reason := fatal_reason(answered[cid][1])) is not None:
                raise FedPerError(reason)
        return answered

    def exchange_in_waves(
        self, messages: dict[int, Message], what: str, wave: int | None
    ) -> dict[int, tuple[Message, Message]]:
        """`exchange`, `wave` messages at a time (all at once when None): Flower's simulation
        hands each node one message per pass over its nodes, and each pass looks at every
        message waiting, so thousands at once would cost far more than their compute."""
        if wave is None or len(messages) <= wave:
            return self.exchange(messages, what)
        items, answered, pushing = list(messages.items()), {}, 0.0
        for start in range(0, len(items), wave):
            answered.update(self.exchange(dict(items[start : start + wave]), what))
            pushing += self.push_seconds
        self.push_seconds = pushing
        return answered

    def discover(self) -> dict[int, int]:
        """Ask every node which partition it serves, until all `num_nodes` answered:
        partition-id -> node.

        Each node is asked once, all at once, as it appears; the map this gives is the only
        source of client ids for the rest of the run.
        """
        deadline = time.monotonic() + self.connect_timeout
        node_of: dict[int, int] = {}
        asked: set[int] = set()
        while len(node_of) < self.num_nodes:
            self.stopped()
            new = [node for node in read_again(self.grid.get_node_ids) if node not in asked]
            if new:
                asked.update(new)
                queries = {
                    node: Message(RecordDict({"config": self.config(0)}),
                                  message_type=MessageType.QUERY, dst_node_id=node)
                    for node in new
                }  # fmt: skip
                answers = self.exchange(queries, "start-up", self.connect_timeout, "node(s)")
                for node, (_, reply) in sorted(answers.items()):
                    self.introduced(node_of, node, reply)
            elif time.monotonic() > deadline:
                missing = sorted(set(range(self.num_nodes)) - set(node_of))
                raise FedPerError(
                    f"client(s) {missing} did not connect within engine.connect_timeout="
                    f"{self.connect_timeout:g} s: start a SuperNode with partition-id=<cid> "
                    "for each, or raise engine.connect_timeout"
                )
            else:
                time.sleep(0.2)
        return node_of

    def introduced(self, node_of: dict[int, int], node: int, reply: Message) -> None:
        """Note which client a node serves, from its answer to the start-up query."""
        if reply.has_error():
            raise FedPerError(f"a client failed to start: {failure_reason(reply.error.reason)}")
        cid = reply.content["metrics"]["cid"]
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < self.num_nodes:
            raise FedPerError(
                f"node {node} serves partition-id={cid!r}, not one of 0-{self.num_nodes - 1}"
            )
        if cid in node_of:
            raise FedPerError(
                f"two nodes ({node_of[cid]} and {node}) serve partition-id={cid}: "
                "give every SuperNode its own partition-id"
            )
        node_of[cid] = node
