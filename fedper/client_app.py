"""The ClientApp: a client trains and evaluates with the global shared part and its own head."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedper.algorithms import ALGORITHMS, Algorithm
from fedper.client_state import ClientStateStore
from fedper.config import RunSpec, resolve_device, resolve_performance, spec_from_context
from fedper.data import ClientData, FederatedDataset, load_client_data
from fedper.data.transforms import BatchTransform
from fedper.errors import StateFileError
from fedper.models import ModelSplit, build_model
from fedper.training import TrainSettings, evaluate, train

app = ClientApp()


class ClientRuntime:
    """What one worker keeps between calls of one run: the model object, the transform and
    every client's data it has served. A new run id starts from nothing, and each call
    overwrites every weight of the model, so nothing carries over between clients or runs.
    """

    def __init__(self, spec: RunSpec) -> None:
        cfg = spec.cfg
        self.spec = spec
        self.cfg = cfg
        self.algorithm: Algorithm = ALGORITHMS[cfg.algorithm]
        self.device = resolve_device(cfg.client_device, "client_device")
        self.performance = perf = resolve_performance(cfg, self.device)
        torch.set_num_threads(max(1, int(cfg.client_resources.num_cpus)))
        torch.backends.cudnn.benchmark = perf.cudnn_benchmark
        self.model: ModelSplit = build_model(cfg).to(self.device)
        if perf.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dataset = FederatedDataset.load(spec.run_dir)
        self.store = ClientStateStore(spec.state_dir)
        augment = cfg.dataset.get("augment") or {}
        self.transform = BatchTransform(
            cfg.dataset.image_size,
            self.dataset.mean,
            self.dataset.std,
            crop_padding=augment.get("crop_padding", 0),
            flip=augment.get("flip", False),
            channels_last=perf.channels_last,
        )
        self.settings = TrainSettings(
            epochs=cfg.num_epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            autocast_dtype=perf.autocast_dtype,
        )
        self._data: dict[int, ClientData] = {}
        self._initial: dict[str, torch.Tensor] | None = None

    def data(self, cid: int) -> ClientData:
        if cid not in self._data:
            self._data[cid] = load_client_data(self.dataset, cid, self.performance.data_device)
        return self._data[cid]

    def generator(self, cid: int, round_num: int, phase: int) -> torch.Generator:
        """Shuffling and augmentation depend on (seed, round, client) only, not on the worker."""
        seed = np.random.SeedSequence([self.cfg.seed, round_num, cid, phase]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def personal_state(self, cid: int, before_round: int) -> dict[str, torch.Tensor]:
        parts = self.algorithm.personal_parts
        saved = self.store.load(cid, before_round)
        if saved is not None:
            return saved
        if self._initial is None:
            self._initial = self.store.load_initial()
        keys = self.model.part_keys(parts)
        return {k: self._initial[k] for k in keys}

    def prepare_model(self, cid: int, shared: ArrayRecord, before_round: int) -> ModelSplit:
        """Global shared part from the message, personal part from this client's file."""
        if self.algorithm.shared_parts:
            self.model.load_parts(shared.to_torch_state_dict(), self.algorithm.shared_parts)
        if self.algorithm.personal_parts:
            personal = self.personal_state(cid, before_round)
            try:
                self.model.load_parts(personal, self.algorithm.personal_parts)
            except ValueError as error:
                raise StateFileError(
                    f"{self.store.path(cid)} does not fit this model ({error}): delete it to "
                    "restart this client from the global head, or start a fresh run"
                ) from None
        return self.model

    def save_personal(self, cid: int, round_num: int) -> None:
        if self.algorithm.personal_parts:
            self.store.save(cid, round_num, self.model.part_state(self.algorithm.personal_parts))

    def shared_record(self) -> ArrayRecord:
        return ArrayRecord(self.model.part_state(self.algorithm.shared_parts))


_RUNTIME: ClientRuntime | None = None


def runtime_for(spec: RunSpec) -> ClientRuntime:
    """This worker's runtime for the run, rebuilt only when the run changes."""
    global _RUNTIME
    if _RUNTIME is None or _RUNTIME.spec.run_id != spec.run_id:
        _RUNTIME = ClientRuntime(spec)
    return _RUNTIME


class Stopwatch:
    """Seconds spent per phase of one call, reported to the server with the metrics."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        return {f"seconds_{phase}": value for phase, value in self.seconds.items()}


def client_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def injected_fault(cfg, cid: int, round_num: int, phase: str) -> None:
    """The test-only `debug.fail_*` hook: raise where a real client could fail (OOM, bad file)."""
    debug = cfg.get("debug") or {}
    if (debug.get("fail_client"), debug.get("fail_round"), debug.get("fail_phase")) == (
        cid,
        round_num,
        phase,
    ):
        raise RuntimeError(f"injected failure of client {cid} in round {round_num} {phase}")


def reply(msg: Message, metrics: dict, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@app.query()
def introduce(msg: Message, context: Context) -> Message:
    """Tell the server which client (data partition) this node serves."""
    return reply(msg, {"cid": client_id(context)})


@dataclass
class Call:
    """One train or evaluate call: the client, the round, and what it works with."""

    cid: int
    round_num: int
    runtime: ClientRuntime
    data: ClientData
    model: ModelSplit
    clock: Stopwatch


def begin(msg: Message, context: Context, phase: str) -> Call:
    """What both handlers do first: find the run and the client, load its data and model."""
    spec = spec_from_context(context)
    cid = client_id(context)
    round_num = int(msg.content["config"]["server-round"])
    clock = Stopwatch()
    with clock("setup"):
        runtime = runtime_for(spec)
    injected_fault(runtime.cfg, cid, round_num, phase)
    with clock("data"):
        data = runtime.data(cid)
    # training starts from the head of an earlier round; evaluation uses the head trained in
    # this round (or earlier, if the client was not sampled)
    before_round = round_num if phase == "train" else round_num + 1
    with clock("state"):
        model = runtime.prepare_model(cid, msg.content["arrays"], before_round)
    return Call(cid, round_num, runtime, data, model, clock)


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    call = begin(msg, context, "train")
    runtime = call.runtime
    with call.clock("compute"):
        stats = train(
            call.model,
            call.data.train_images,
            call.data.train_labels,
            runtime.transform,
            runtime.settings,
            runtime.generator(call.cid, call.round_num, phase=0),
        )
    with call.clock("state"):
        runtime.save_personal(call.cid, call.round_num)
        shared = runtime.shared_record()
    metrics = {
        "num-examples": stats["num_examples"],
        "train_loss": stats["loss"],
        "cid": call.cid,
        **call.clock.metrics(),
    }
    return reply(msg, metrics, shared)


@app.evaluate()
def evaluate_round(msg: Message, context: Context) -> Message:
    call = begin(msg, context, "evaluate")
    runtime = call.runtime
    with call.clock("compute"):
        if runtime.algorithm.finetune_head and runtime.cfg.finetune_epochs > 0:
            finetune_head(runtime, call.model, call.data, call.cid, call.round_num)
        stats = evaluate(
            call.model,
            call.data.test_images,
            call.data.test_labels,
            runtime.transform,
            runtime.cfg.batch_size,
            runtime.settings.autocast_dtype,
        )
    metrics = {
        "num-examples": stats["num_examples"],
        "accuracy": stats["accuracy"],
        "loss": stats["loss"],
        "cid": call.cid,
        **call.clock.metrics(),
    }
    return reply(msg, metrics)


def finetune_head(
    runtime: ClientRuntime, model: ModelSplit, data: ClientData, cid: int, round_num: int
) -> None:
    """FedAvg-FT: adapt the received head to the client's training data, base frozen.

    The fine-tuned weights are not kept: the next message overwrites the whole model.
    """
    model.freeze("base")
    try:
        settings = TrainSettings(
            **{**vars(runtime.settings), "epochs": runtime.cfg.finetune_epochs}
        )
        train(
            model,
            data.train_images,
            data.train_labels,
            runtime.transform,
            settings,
            runtime.generator(cid, round_num, phase=1),
            parameters=list(model.head.parameters()),
            frozen=model.base,
        )
    finally:
        model.unfreeze()
