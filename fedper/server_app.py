"""The ServerApp: find the clients, then the round loop, with results and a checkpoint per round.

The same loop runs in every engine. Under `python -m fedper.main` the launcher plans the run
and hands the plan to the app (`server_app_for`, simulation engines) or puts it in the run
config (`flwr run`, deployment); a plain `flwr run . --run-config 'overrides="..."'` plans it
here. The run's settings travel to the clients in every message.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedper.algorithms import ALGORITHMS
from fedper.checkpoint import Checkpoint
from fedper.commit import RoundCommit
from fedper.errors import ERROR_PREFIX, FedPerError, Interrupted
from fedper.models import build_model
from fedper.planning import config_from_run_config, plan_run
from fedper.progress import RunProgress
from fedper.results import client_metrics, record_bytes, round_entry
from fedper.rundir import RunLock
from fedper.spec import FATAL, SPEC_KEY, RunPlan
from fedper.strategy import FedPerStrategy
from fedper.trackers import RunTrackers

log = logging.getLogger("fedper")
app = ServerApp()
POLL_SECONDS = 0.02


@app.main()
def main(grid: Grid, context: Context) -> None:
    """`flwr run`: the plan comes from the run config (python -m fedper.main, which holds the
    run directory) or, for a plain `flwr run`, is made here, holding the run directory."""
    console_logging()
    try:
        plan = RunPlan.from_run_config(context.run_config)
        if plan is not None:
            run_server(grid, plan)
            return
        cfg, run_dir = config_from_run_config(context.run_config, context.run_id)
        with RunLock(run_dir):
            run_server(grid, plan_run(cfg, run_dir))
    except FedPerError as error:
        # one line for the console; raising lets Flower mark the run failed and send its logs
        log.error("%s%s", ERROR_PREFIX, error)
        raise


def server_app_for(
    plan: RunPlan, stop: threading.Event, serving: threading.Lock | None = None
) -> ServerApp:
    """A ServerApp bound to one planned run, for engines that start it in this process;
    it holds `serving` while its loop runs."""
    bound = ServerApp()

    @bound.main()
    def _(grid: Grid, context: Context) -> None:
        with serving or contextlib.nullcontext():
            run_server(grid, plan, stop)

    return bound


def console_logging() -> None:
    """Round lines on the console of a ServerApp process that has no handler yet."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class ClientLink:
    """Messages to and from the clients, with a timeout and a way to stop."""

    def __init__(self, grid: Grid, plan: RunPlan, stop: threading.Event | None) -> None:
        self.grid, self.stop = grid, stop
        engine = plan.spec.cfg.engine
        self.spec_json = plan.spec.to_json()
        self.connect_timeout = float(engine.connect_timeout)
        self.reply_timeout = float(engine.reply_timeout)
        self.num_clients = int(plan.spec.cfg.num_clients)

    def config(self, round_num: int) -> ConfigRecord:
        return ConfigRecord({SPEC_KEY: self.spec_json, "server-round": round_num})

    def stopped(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Interrupted("stopped while waiting for clients")

    def exchange(
        self, messages: list[Message], who: dict[int, int], timeout: float | None = None
    ) -> list[Message]:
        """Send and wait for every reply; `who` maps node id -> client id for messages."""
        ids = list(self.grid.push_messages(messages))
        pending = dict(zip(ids, (m.metadata.dst_node_id for m in messages), strict=True))
        deadline = time.monotonic() + (timeout or self.reply_timeout)
        replies: list[Message] = []
        while pending:
            self.stopped()
            for msg in self.grid.pull_messages(list(pending)):
                pending.pop(msg.metadata.reply_to_message_id, None)
                replies.append(msg)
            if pending and time.monotonic() > deadline:
                missing = sorted(who.get(node, node) for node in pending.values())
                raise FedPerError(
                    f"client(s) {missing} did not reply within {timeout or self.reply_timeout:g}"
                    " s (engine.reply_timeout): check that their nodes are running"
                )
            if pending:
                time.sleep(POLL_SECONDS)
        for msg in replies:
            if not msg.has_error() and FATAL in msg.content.config_records:
                raise FedPerError(str(msg.content.config_records[FATAL]["reason"]))
        return replies

    def discover(self) -> dict[int, int]:
        """Ask every node which client it serves, until all `num_clients` answered: cid -> node."""
        deadline = time.monotonic() + self.connect_timeout
        node_of: dict[int, int] = {}
        asked: set[int] = set()
        while len(node_of) < self.num_clients:
            self.stopped()
            new = [node for node in self.grid.get_node_ids() if node not in asked]
            if new:
                asked.update(new)
                queries = [
                    Message(
                        content=RecordDict({"config": self.config(0)}),
                        message_type=MessageType.QUERY,
                        dst_node_id=node,
                    )
                    for node in new
                ]
                for msg in self.exchange(queries, {}, self.connect_timeout):
                    if msg.has_error():
                        raise FedPerError(f"a client failed to start: {msg.error.reason}")
                    cid, node = int(msg.content["metrics"]["cid"]), msg.metadata.src_node_id
                    if cid in node_of:
                        raise FedPerError(
                            f"two nodes ({node_of[cid]} and {node}) serve partition-id={cid}: "
                            "give every SuperNode its own partition-id"
                        )
                    node_of[cid] = node
            elif time.monotonic() > deadline:
                missing = sorted(set(range(self.num_clients)) - set(node_of))
                raise FedPerError(
                    f"client(s) {missing} did not connect within engine.connect_timeout="
                    f"{self.connect_timeout:g} s: start a SuperNode with partition-id=<cid> "
                    "for each, or raise engine.connect_timeout"
                )
            else:
                time.sleep(0.2)
        return node_of


def run_server(grid: Grid, plan: RunPlan, stop: threading.Event | None = None) -> RoundCommit:
    """Every round of the planned run, continuing after its checkpoint if there is one.

    Each round is committed once (`fedper.commit`): its results and the checkpoint together.
    """
    spec = plan.spec
    cfg = spec.cfg
    header = {"run_id": spec.run_id, "config": spec.resolved_config, **plan.header}
    results = RoundCommit(Path(spec.run_dir), spec.run_id, header)
    checkpoint = results.restore()  # also repairs whatever view a kill left behind or ahead
    first_round, arrays = starting_point(cfg, checkpoint, spec.run_dir)
    link = ClientLink(grid, plan, stop)
    strategy = FedPerStrategy(link.discover(), cfg.clients_per_round, cfg.seed)
    if checkpoint is not None:
        strategy.restore_head_rounds(checkpoint.results["rounds"])
    trackers = RunTrackers.open(spec, results.rounds)  # logger=...: each committed round
    progress = RunProgress(cfg.num_rounds, first_round)  # a live bar in a terminal
    previous_done = None  # when the previous round's last reply came in
    for round_num in range(first_round, cfg.num_rounds + 1):
        started = time.perf_counter()
        record = ArrayRecord(arrays) if arrays else ArrayRecord()
        config = link.config(round_num)
        train_messages = list(strategy.configure_train(round_num, record, config, grid))
        train_replies = link.exchange(train_messages, strategy.client_of_node)
        trained_at = time.perf_counter()
        strategy.count_training(round_num, client_metrics(train_replies))
        aggregated = strategy.aggregate_shared(round_num, train_replies)
        if aggregated is not None and arrays:
            arrays = aggregated
        aggregated_at = time.perf_counter()
        record = ArrayRecord(arrays) if arrays else ArrayRecord()
        eval_messages = list(strategy.configure_evaluate(round_num, record, config, grid))
        eval_replies = link.exchange(eval_messages, strategy.client_of_node)
        evaluated_at = time.perf_counter()

        entry = round_entry(
            strategy, round_num, train_replies, eval_replies, cfg.min_successful_clients
        )
        entry["bytes_down"] = sum(record_bytes(m.content["arrays"]) for m in train_messages)
        entry["bytes_down"] += sum(record_bytes(m.content["arrays"]) for m in eval_messages)
        entry["seconds"] = evaluated_at - started
        entry["timing"].update(
            train_wall=trained_at - started,
            aggregate=aggregated_at - trained_at,
            evaluate_wall=evaluated_at - aggregated_at,
            # the previous round's results, plot and checkpoint: outside `seconds`
            bookkeeping_before=started - previous_done if previous_done else 0.0,
        )
        del train_replies, eval_replies  # every reply holds a client's shared arrays
        previous_done = evaluated_at
        results.commit(entry, arrays)
        log_round(entry, cfg.num_rounds, progress.note(round_num))
        progress.advance(round_num, entry.get("accuracy"))
        trackers.log_round(results.rounds[-1])
    progress.close()
    trackers.close()
    return results


def starting_point(cfg, checkpoint: Checkpoint | None, run_dir: str) -> tuple[int, dict]:
    """The first round to run and the shared arrays it starts from: the seeded initial model's
    (the server never trains: its model stays on the CPU), or the checkpoint's."""
    if checkpoint is not None:
        log.info("resuming %s after round %d", run_dir, checkpoint.round)
        return checkpoint.round + 1, checkpoint.arrays
    model = build_model(cfg, seed=cfg.seed)
    local_bn = bool(cfg.model.get("local_bn", False))
    return 1, model.state_of(ALGORITHMS[cfg.algorithm].shared_keys(model, local_bn))


def log_round(entry: dict, num_rounds: int, progress: str = "") -> None:
    failures = entry["failures"]
    val = entry.get("val_accuracy")
    log.info(
        "round %d/%d  accuracy %.3f (min %.3f)%s  loss %.3f  %.1f s  %s%s",
        entry["round"], num_rounds, entry["accuracy"], entry["accuracy_min"],
        f"  val {val:.3f}" if isinstance(val, float) and val == val else "",
        entry["loss"], entry["seconds"], progress,
        f"  PARTIAL: {len(failures)} client failure(s), {entry['clients_ok']} of "
        f"{entry['clients_expected']} evaluated" if entry.get("partial") else "",
    )  # fmt: skip
    if entry.get("restarted_heads"):
        log.warning(
            "  client(s) %s lost their head and started over from the initial one "
            "(restart_lost_heads=true)", entry["restarted_heads"],
        )  # fmt: skip
    for failure in failures:
        log.warning(
            "  client %s failed in %s: %s", failure["cid"], failure["phase"], failure["reason"]
        )
