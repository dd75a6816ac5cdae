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
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp

from fedper.algorithms import ALGORITHMS
from fedper.checkpoint import Checkpoint
from fedper.commit import RoundCommit, committed_round
from fedper.device import describe_line
from fedper.errors import ERROR_PREFIX, FedPerError
from fedper.link import ClientLink
from fedper.models import build_model
from fedper.packing import pack
from fedper.planning import config_from_run_config, plan_run
from fedper.progress import RunProgress
from fedper.replies import EVALUATE, TRAIN, Phase, ReplyCheck
from fedper.results import (
    check_enough,
    final_line,
    load_results,
    path_seconds,
    record_bytes,
    round_entry,
    start_line,
)
from fedper.rundir import RunLock
from fedper.spec import EVALUATION_RECORD, RunPlan
from fedper.strategy import FedPerStrategy, average
from fedper.trackers import RunTrackers

log = logging.getLogger("fedper")
app = ServerApp()


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
            plain_flwr_run(grid, plan_run(cfg, run_dir))
    except Exception as error:
        # one line for the console (the launcher raises it); raising lets Flower mark the run
        # failed and send its logs
        why = str(error) if isinstance(error, FedPerError) else f"{type(error).__name__}: {error}"
        log.error("%s%s", ERROR_PREFIX, why.splitlines()[0] if why else type(error).__name__)
        raise


def plain_flwr_run(grid: Grid, plan: RunPlan) -> None:
    """A run that `flwr run` started without the launcher: the launcher's first and last lines,
    and a failure that says how to continue."""
    run_dir = Path(plan.spec.run_dir)
    cfg = plan.spec.cfg
    log.info(start_line(cfg, run_dir, committed_round(run_dir), "deployment (flwr run)"))
    log.info(describe_line(plan.header["device"]))
    try:
        run_server(grid, plan)
    except Exception as error:
        raise FedPerError(
            f"{error}; {committed_round(run_dir)} of {cfg.num_rounds} round(s) committed; "
            f'continue with the same `flwr run` and run-dir="{run_dir}" in --run-config'
        ) from error
    log.info(final_line(load_results(run_dir), run_dir))


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


def run_server(grid: Grid, plan: RunPlan, stop: threading.Event | None = None) -> RoundCommit:
    """Every round of the planned run, continuing after its checkpoint if there is one.

    Each round is committed once (`fedper.commit`): its results and the checkpoint together.
    With `engine.fold_evaluation` a round's evaluation rides in the next round's training
    messages (`Rounds.trained`), so a round is committed once the next round's replies are in;
    a run stopped before that continues from the round before it.
    """
    spec = plan.spec
    cfg = spec.cfg
    header = {"run_id": spec.run_id, "config": spec.resolved_config, **plan.header}
    results = RoundCommit(Path(spec.run_dir), spec.run_id, header)
    checkpoint = results.restore()  # also repairs whatever view a kill left behind or ahead
    first_round, arrays = starting_point(cfg, checkpoint, spec.run_dir)
    link = ClientLink(grid, plan, stop)
    strategy = FedPerStrategy(
        link.discover(), cfg.clients_per_round, cfg.seed,
        cfg.get("clients_per_evaluation"), cfg.get("evaluate_every", 1), cfg.num_clients,
    )  # fmt: skip
    rounds = Rounds(link, strategy, ReplyCheck(plan.header["partition"]), cfg, spec.run_dir)
    if strategy.wave:
        log.info("%d clients on %d simulation nodes, each serving clients in turn (engine.max_nodes)",
                 len(strategy.clients), strategy.wave)  # fmt: skip
    if checkpoint is not None:
        strategy.restore_head_rounds(checkpoint.results["rounds"])
    trackers = RunTrackers.open(spec, results.rounds)  # logger=...: each committed round
    progress = RunProgress(cfg.num_rounds, first_round)  # a live bar in a terminal

    def commit(entry: dict, arrays_after: dict) -> None:
        results.commit(entry, arrays_after)
        log_round(entry, cfg.num_rounds, progress.note(entry["round"]))
        progress.advance(entry["round"], entry.get("accuracy"))
        trackers.log_round(results.rounds[-1])

    fold = bool(cfg.engine.get("fold_evaluation", False))
    # a trained round whose evaluation rides in this round's messages
    waiting: Trained | None = None
    previous_done = None  # when the previous round's last reply came in
    for round_num in range(first_round, cfg.num_rounds + 1):
        started = time.perf_counter()
        sampled = strategy.sample_clients(round_num)
        train, folded = rounds.trained(sampled, arrays, round_num, waiting)
        trained_at = time.perf_counter()
        if waiting is not None:  # the round before is complete: committed with its arrays
            commit(waiting.entry(folded), arrays)
            waiting = None
        strategy.count_training(round_num, train.metrics)
        if train.arrays and arrays:
            arrays = average(train.arrays, {c: m["num-examples"] for c, m in train.metrics.items()})
        train.arrays = {}  # every training reply held a client's shared arrays
        aggregated_at = time.perf_counter()
        timing = {
            "train_wall": trained_at - started,
            "aggregate": aggregated_at - trained_at,
            # the previous round's results, plot and checkpoint: outside `seconds`
            "bookkeeping_before": started - previous_done if previous_done else 0.0,
            "train_path": rounds.paths.pop(TRAIN, {}),
        }
        evaluating = strategy.evaluation_clients(round_num, cfg.num_rounds)
        if fold and evaluating and round_num < cfg.num_rounds:
            sent = rounds.bytes_down.pop(round_num)  # its evaluation's go with the next round's
            waiting = Trained(round_num, train, evaluating, sent, timing, folded=True)
            previous_done = aggregated_at
            continue
        evaluation = rounds.phase(EVALUATE, evaluating, arrays, round_num) if evaluating else None
        evaluated_at = time.perf_counter()
        timing.update(evaluate_wall=evaluated_at - aggregated_at,
                      evaluate_path=rounds.paths.pop(EVALUATE, {}))  # fmt: skip
        sent = rounds.bytes_down.pop(round_num)
        entry = Trained(round_num, train, evaluating, sent, timing).entry(evaluation)
        previous_done = evaluated_at
        commit(entry, arrays)
    progress.close()
    trackers.close()
    return results


@dataclass
class Trained:
    """A round's training, its evaluation clients, what it sent and its timing: its
    results.json entry once its evaluation is in."""

    round_num: int
    train: Phase
    evaluating: list[int]
    bytes_down: int
    timing: dict
    folded: bool = False  # its evaluation rides in the next round's messages

    def entry(self, evaluation: Phase | None) -> dict:
        """The round's entry. An evaluation that rode in the next round's messages took no
        time of this round's (`evaluation_folded`; its seconds are in the next round's)."""
        entry = round_entry(self.round_num, self.train, evaluation)
        timing = {"evaluate_wall": 0.0, "evaluate_path": {}, **self.timing}
        if self.folded:
            timing["evaluation_folded"] = True
        entry["bytes_down"] = self.bytes_down
        entry["seconds"] = timing["train_wall"] + timing["aggregate"] + timing["evaluate_wall"]
        entry["timing"].update(timing)
        return entry


class Rounds:
    """A round's phases: the messages of a phase out, its replies checked, enough of them."""

    def __init__(
        self, link: ClientLink, strategy: FedPerStrategy, checks: ReplyCheck, cfg, run_dir: str
    ) -> None:
        self.link, self.strategy, self.checks = link, strategy, checks
        self.min_successful = int(cfg.min_successful_clients)
        self.run_dir = run_dir
        self.bytes_down: dict[int, int] = {}  # round -> array payload sent in it
        self.paths: dict[str, dict] = {}  # phase -> its messages' way, the last round's

    def phase(self, name: str, clients: list[int], arrays: dict, round_num: int) -> Phase:
        """Send `clients` the shared arrays for `name` (train | evaluate) and check the replies;
        too few good ones stop the run."""
        kind = MessageType.TRAIN if name == TRAIN else MessageType.EVALUATE
        answered = self.send(clients, arrays, round_num, kind, name)
        phase = self.checks.collect(Phase(name, sorted(clients)), answered)
        check_enough(round_num, phase, self.min_successful, self.run_dir)
        return phase

    def trained(
        self, clients: list[int], arrays: dict, round_num: int, waiting: Trained | None
    ) -> tuple[Phase, Phase | None]:
        """A round's training and, when the round before waits for its evaluation, that
        evaluation in the same exchange: the arrays sent are that round's result, so a client
        that trains evaluates them first (one message), and one that does not gets an
        evaluate message beside the training ones. The evaluation is checked first: its round
        comes first."""
        if waiting is None:
            return self.phase(TRAIN, clients, arrays, round_num), None
        earlier, training = waiting.round_num, set(clients)
        kinds = {cid: MessageType.TRAIN for cid in clients}
        kinds |= {cid: MessageType.EVALUATE for cid in waiting.evaluating if cid not in training}
        # every message of the earlier round's evaluation names that round
        answered = self.send(sorted(kinds), arrays, round_num, kinds, TRAIN,
                             (earlier, waiting.evaluating))  # fmt: skip
        evaluation = Phase(EVALUATE, sorted(waiting.evaluating))
        in_training = {c: answered[c] for c in waiting.evaluating if c in training}
        self.checks.collect(evaluation, in_training, EVALUATION_RECORD)
        self.checks.collect(evaluation, {c: answered[c] for c in kinds if c not in training})
        check_enough(earlier, evaluation, self.min_successful, self.run_dir)
        train = self.checks.collect(Phase(TRAIN, sorted(clients)),
                                    {c: answered[c] for c in clients})  # fmt: skip
        check_enough(round_num, train, self.min_successful, self.run_dir)
        return train, evaluation

    def send(
        self,
        clients: list[int],
        arrays: dict,
        round_num: int,
        kind: str | dict[int, str],
        name: str,
        evaluate_first: tuple[int, list[int]] | None = None,
    ) -> dict[int, tuple[Message, Message]]:
        """The messages of one exchange out and their replies in (cid -> (sent, reply)), with
        the bytes sent and the messages' way recorded under `name`."""
        record = pack(arrays)
        config = self.link.config(round_num)
        messages = self.strategy.messages(clients, record, config, kind, evaluate_first)
        sent = record_bytes(record) * len(messages)
        self.bytes_down[round_num] = self.bytes_down.get(round_num, 0) + sent
        answered = self.link.exchange_in_waves(
            messages, f"round {round_num} {name}", self.strategy.wave
        )
        self.paths[name] = path_seconds(
            [(sent.metadata.created_at, reply, self.link.received_at[cid])
             for cid, (sent, reply) in answered.items()],
            self.link.push_seconds,
        )  # fmt: skip
        return answered


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
    """The round's console line (a round without evaluation says so), then its warnings."""
    failures, evaluated = entry["failures"], entry.get("evaluated", True)
    if evaluated:
        val = entry.get("val_accuracy")
        measured = (
            f"accuracy {entry['accuracy']:.3f} (min {entry['accuracy_min']:.3f})"
            + (f"  val {val:.3f}" if isinstance(val, float) and val == val else "")
            + f"  loss {entry['loss']:.3f}"
        )
    else:
        measured = f"not evaluated  train loss {entry['train_loss']:.3f}"
    partial = (
        f"  PARTIAL: {len(failures)} client failure(s), {entry['clients_ok']} of "
        f"{entry['clients_expected']} {'evaluated' if evaluated else 'trained'}"
    )
    log.info(
        "round %d/%d  %s  %.1f s  %s%s", entry["round"], num_rounds, measured, entry["seconds"],
        progress, partial if entry.get("partial") else "",
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
