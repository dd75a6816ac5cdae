"""The ServerApp: the round loop, with results and a checkpoint written after every round."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedper.algorithms import ALGORITHMS
from fedper.client_state import ClientStateStore, read_checked, write_atomic
from fedper.config import RunSpec, resolve_device, spec_from_context
from fedper.data import FederatedDataset
from fedper.errors import FedPerError, StateFileError
from fedper.models import build_model
from fedper.results import RunResults
from fedper.strategy import FedPerStrategy, client_metrics, record_bytes, summarize_evaluation

log = logging.getLogger("fedper")
app = ServerApp()
CHECKPOINT = "checkpoint.pt"
# Set by the driver on Ctrl-C/SIGTERM: the round loop stops at its next exchange with clients.
STOP = threading.Event()


class RunInterrupted(FedPerError):
    """The run was asked to stop; every completed round is saved."""


def exchange(grid: Grid, messages: list[Message], poll: float = 0.02) -> list[Message]:
    """Grid.send_and_receive, but giving up as soon as the run is asked to stop."""
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    while pending:
        if STOP.is_set():
            raise RunInterrupted("stopped while waiting for clients")
        received = list(grid.pull_messages(pending))
        replies += received
        pending -= {msg.metadata.reply_to_message_id for msg in received}
        if pending:
            time.sleep(poll)
    return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, spec_from_context(context))


def discover_clients(grid: Grid, num_clients: int, timeout: float = 600) -> dict[int, int]:
    """Ask every node which client it serves: cid -> node id."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise FedPerError(f"only {len(node_ids)} of {num_clients} clients connected")
        time.sleep(0.2)
    messages = [
        Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=node)
        for node in node_ids
    ]
    mapping = {}
    for msg in exchange(grid, messages):
        if msg.has_error():
            raise FedPerError(f"a client failed to start: {msg.error.reason}")
        mapping[int(msg.content["metrics"]["cid"])] = msg.metadata.src_node_id
    return mapping


def load_checkpoint(run_dir: Path, run_id: str) -> tuple[int, ArrayRecord] | None:
    """The last completed round and the global shared arrays after it, if any."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    payload = read_checked(path, "start a fresh run in a new directory")
    if payload.get("run_id") != run_id:
        raise StateFileError(f"{path} belongs to run {payload.get('run_id')}, not {run_id}")
    return int(payload["round"]), ArrayRecord(payload["arrays"])


def save_checkpoint(run_dir: Path, run_id: str, round_num: int, arrays: ArrayRecord) -> None:
    state = dict(arrays.to_torch_state_dict()) if len(arrays) else {}
    write_atomic(
        run_dir / CHECKPOINT, {"format": 1, "run_id": run_id, "round": round_num, "arrays": state}
    )


def run_server(grid: Grid, spec: RunSpec) -> RunResults:
    cfg = spec.cfg
    run_dir = Path(spec.run_dir)
    algorithm = ALGORITHMS[cfg.algorithm]
    header = {
        "run_id": spec.run_id,
        "config": spec.config,
        "partition": FederatedDataset.load(run_dir).summary(),
    }
    checkpoint = load_checkpoint(run_dir, spec.run_id)
    if checkpoint is None:
        model = build_model(cfg, seed=cfg.seed).to(resolve_device(cfg.server_device))
        ClientStateStore(spec.state_dir).save_initial(model.part_state(("base", "head")))
        first_round, arrays = 1, ArrayRecord(model.part_state(algorithm.shared_parts))
        results = RunResults(run_dir, header)
        results.write()
    else:
        completed, arrays = checkpoint
        first_round = completed + 1
        results = RunResults.resume(run_dir, header, completed)
        log.info("resuming %s after round %d", run_dir, completed)

    strategy = FedPerStrategy(
        discover_clients(grid, cfg.num_clients), cfg.clients_per_round, cfg.seed
    )
    previous_done = None  # when the previous round's last reply came in
    for round_num in range(first_round, cfg.num_rounds + 1):
        started = time.perf_counter()
        train_messages = list(strategy.configure_train(round_num, arrays, ConfigRecord(), grid))
        train_replies = exchange(grid, train_messages)
        trained_at = time.perf_counter()
        failures = strategy.failures(train_replies, "train")
        trained = client_metrics(train_replies)
        check_enough(cfg, round_num, "train", len(trained), failures)
        aggregated, _ = strategy.aggregate_train(round_num, train_replies)
        if aggregated is not None and algorithm.shared_parts:
            arrays = aggregated
        aggregated_at = time.perf_counter()
        bytes_up = sum(
            record_bytes(r.content["arrays"]) for r in train_replies if not r.has_error()
        )
        # every reply holds a client's shared part: free them before the next phase fills up
        del train_replies

        eval_messages = list(strategy.configure_evaluate(round_num, arrays, ConfigRecord(), grid))
        eval_replies = exchange(grid, eval_messages)
        evaluated_at = time.perf_counter()
        failures += strategy.failures(eval_replies, "evaluate")
        evaluated = client_metrics(eval_replies)
        check_enough(cfg, round_num, "evaluate", len(evaluated), failures)

        examples = sum(m["num-examples"] for m in trained.values())
        sent = train_messages + eval_messages
        entry = {
            "round": round_num,
            **summarize_evaluation(evaluated),
            "train_loss": sum(m["train_loss"] * m["num-examples"] for m in trained.values())
            / max(examples, 1),
            "seconds": evaluated_at - started,
            "bytes_down": sum(record_bytes(m.content["arrays"]) for m in sent),
            "bytes_up": bytes_up,
            "clients_ok": len(evaluated),
            "clients_failed": len(failures),
            "trained_clients": sorted(trained),
            "per_client": {
                str(cid): {
                    "accuracy": m["accuracy"],
                    "loss": m["loss"],
                    "num_examples": int(m["num-examples"]),
                    **({"train_loss": trained[cid]["train_loss"]} if cid in trained else {}),
                }
                for cid, m in sorted(evaluated.items())
            },
            "failures": failures,
            "timing": {
                "train_wall": trained_at - started,
                "aggregate": aggregated_at - trained_at,
                "evaluate_wall": evaluated_at - aggregated_at,
                "train_clients": phase_seconds(trained),
                "evaluate_clients": phase_seconds(evaluated),
                # the previous round's results, plot and checkpoint: outside `seconds`
                "bookkeeping_before": started - previous_done if previous_done else 0.0,
            },
        }
        previous_done = evaluated_at
        # results first: a crash between the two reruns this round, with identical numbers
        results.add(entry)
        save_checkpoint(run_dir, spec.run_id, round_num, arrays)
        log.info(
            "round %d/%d  accuracy %.3f (min %.3f)  loss %.3f  %.1f s%s",
            round_num, cfg.num_rounds, entry["accuracy"], entry["accuracy_min"], entry["loss"],
            entry["seconds"], f"  {len(failures)} client failure(s)" if failures else "",
        )  # fmt: skip
        for failure in failures:
            log.warning(
                "  client %s failed in %s: %s", failure["cid"], failure["phase"], failure["reason"]
            )
    return results


def phase_seconds(per_client: dict[int, dict]) -> dict[str, float]:
    """Seconds the clients spent per phase (setup, data, state, compute), summed."""
    totals: dict[str, float] = {}
    for metrics in per_client.values():
        for key, value in metrics.items():
            if key.startswith("seconds_"):
                phase = key.removeprefix("seconds_")
                totals[phase] = totals.get(phase, 0.0) + float(value)
    return totals


def check_enough(cfg, round_num: int, phase: str, succeeded: int, failures: list[dict]) -> None:
    """A round goes on with the clients that succeeded, down to `min_successful_clients`."""
    if succeeded < cfg.min_successful_clients:
        detail = "; ".join(f"client {f['cid']}: {f['reason']}" for f in failures[:3])
        raise FedPerError(
            f"round {round_num} {phase}: only {succeeded} client(s) succeeded, fewer than "
            f"min_successful_clients={cfg.min_successful_clients} ({detail})"
        )
