"""A ClientApp's cold start, split into parts, in a fresh process as the Deployment Engine
starts one per message: `python -m fedper.bench.coldstart <request.json>`.

The process imports what `flwr-clientapp` imports, then torch alone, then fedper's ClientApp,
and answers one train message of round 1 and, warm, one of round 2. The client core's steps
are timed by wrapping its functions in this process only (their code is not changed). It
prints one JSON line. Only the standard library is imported before the clock starts.
"""

from __future__ import annotations

import time

STARTED = time.time()  # noqa: E402 (before any other import, on purpose)

import json  # noqa: E402
import sys  # noqa: E402


class Timers:
    """Seconds per part; `wrap` times every call of a function looked up at call time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds

    def wrap(self, owner, name: str, part: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(part, time.perf_counter() - started)

        setattr(owner, name, timed)

    def imported(self, module: str, part: str) -> None:
        started = time.perf_counter()
        __import__(module)
        self.add(part, time.perf_counter() - started)


def train_message(request: dict, round_num: int):
    """The message a SuperNode would hand the ClientApp: settings, round, shared arrays."""
    import torch
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from fedper.packing import pack
    from fedper.spec import SPEC_KEY

    arrays = torch.load(request["arrays"], weights_only=True)
    config = ConfigRecord({SPEC_KEY: request["spec"], "server-round": round_num})
    content = RecordDict({"arrays": pack(arrays), "config": config})
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=1)


def measure(request: dict) -> dict:
    """Every part of one cold start, in the order a fresh ClientApp process pays them."""
    timers = Timers()
    # what `flwr-clientapp` imports before it loads the app
    timers.imported("flwr.supernode.cli.flwr_clientapp", "flower_imports")
    timers.imported("torch", "torch_import")
    timers.imported("fedper.client_app", "fedper_imports")

    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedper import client, client_app
    from fedper.data.federated_dataset import FederatedDataset

    timers.wrap(client, "prepare_dataset", "partition_from_cache")
    timers.wrap(FederatedDataset, "fingerprint", "partition_fingerprint")
    timers.wrap(client, "build_model", "model_build")
    timers.wrap(client, "tensors_digest", "initial_model_digest")
    timers.wrap(client_app, "worker_for", "worker_setup")

    # Flower stamps messages with the task's identity; a stand-in for the process's own
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    context = Context(run_id=1, node_id=1, node_config=request["node_config"],
                      state=RecordDict(), run_config={})  # fmt: skip
    calls = []
    before = set(sys.modules)
    for round_num in (1, 2):
        started = time.perf_counter()
        message = train_message(request, round_num)
        decoded = time.perf_counter()
        reply = client_app.train_round(message, context)
        ended = time.perf_counter()
        if reply.has_error() or "fatal" in reply.content.config_records:
            raise RuntimeError(f"the ClientApp did not train: {reply.content}")
        metrics = dict(reply.content["metrics"])
        calls.append({"message_seconds": decoded - started, "handler_seconds": ended - decoded,
                      **{k: v for k, v in metrics.items() if k.startswith("seconds_")}})  # fmt: skip
        if round_num == 1:
            first_calls = dict(timers.seconds)
            late = set(sys.modules) - before
    # what the first call imported (torch.optim.SGD's first use would import torch._dynamo)
    late_roots = sorted(m for m in late if m.rpartition(".")[0] not in late)
    return {"started": STARTED, "parts": first_calls, "calls": calls,
            "imported_by_first_call": late_roots}  # fmt: skip


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(json.dumps(measure(json.load(handle))))
