"""The client's work, Flower-free: data, model, head, train, evaluate, fine-tune, save.

A `ClientWorker` is everything one node needs for one run, built from the run's settings
(`RunSpec`) and the node's own folders alone: it rebuilds its partition from its local copy
of the dataset and checks it against the server's fingerprint, builds the seeded initial
model and checks it against the server's digest, and keeps heads in a store it is given.
`client_app.py` only translates Flower messages into `train`/`evaluate` calls and back; the
benchmark's plain loop calls the same methods.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from fedper.algorithms import ALGORITHMS, Algorithm
from fedper.data import ClientData, prepare_dataset
from fedper.data.federated_dataset import load_client_data
from fedper.data.transforms import BatchTransform
from fedper.device import apply_performance, client_device, resolve_performance
from fedper.errors import StateFileError
from fedper.gpu import apply_gpu_share, check_gpu_arch
from fedper.heads import HEAD_WAY_OUT, DiskHeadStore, ForeignHeadError, HeadStore, head_layout
from fedper.models import ModelSplit, build_model
from fedper.node import (
    ClientSetupError,
    NodePaths,
    Stopwatch,
    check_folders,
    node_name,
    stop_on_out_of_memory,
)
from fedper.rundir import RUN_ID_PATTERN
from fedper.spec import RESTARTED_METRIC, RunSpec
from fedper.tensor_files import tensors_digest
from fedper.training import TrainSettings, evaluate, train

# clients whose rows a worker keeps in memory: every client of a paper-sized federation, while
# reading one again costs a few ms (docs/performance.md); `performance.client_data_cache_mb`
# caps their size too
HOST_DATA_CLIENTS = 64


@dataclass
class TrainResult:
    shared: dict[str, torch.Tensor]  # what leaves the client: the algorithm's shared parts
    metrics: dict[str, float] = field(default_factory=dict)


class ClientWorker:
    """One node's side of one run: model object, partition, transform and head store.

    Each call overwrites every weight of the model (shared parts from the server, personal
    parts from the store), so nothing carries over between the clients a worker serves.
    """

    def __init__(self, spec: RunSpec, paths: NodePaths, store: HeadStore | None = None) -> None:
        cfg = spec.cfg
        if not RUN_ID_PATTERN.fullmatch(spec.run_id):  # it names a folder under state_dir
            raise ClientSetupError(f"run id {spec.run_id!r} in the message is not a fedper run id")
        self.spec, self.cfg, self.paths = spec, cfg, paths
        self.algorithm: Algorithm = ALGORITHMS[cfg.algorithm]
        check_folders(paths)
        self.device = device = client_device(cfg)
        if device.type == "cuda":
            check_gpu_arch(torch.cuda.current_device())  # one line, not "no kernel image" later
        self.performance = perf = resolve_performance(cfg, device)
        torch.set_num_threads(max(1, int(cfg.client_resources.num_cpus)))
        apply_performance(perf)
        apply_gpu_share(spec.num_gpus, device)  # before the first allocation on the GPU

        model = build_model(cfg, seed=cfg.seed)
        if tensors_digest(model.state_dict()) != spec.initial_digest:
            raise ClientSetupError(
                f"the seeded initial model on node {node_name()} differs from the server's: "
                "install the same torch and fedper versions on every node"
            )
        local_bn = bool(cfg.model.get("local_bn", False))
        self.shared_keys = self.algorithm.shared_keys(model, local_bn)
        self.personal_keys = self.algorithm.personal_keys(model, local_bn)
        self.initial = model.state_of(self.personal_keys)
        self.model: ModelSplit = model.to(device, memory_format=perf.memory_format)

        self.dataset = prepare_dataset(cfg, paths.data_dir)
        if self.dataset.fingerprint() != spec.fingerprint:
            raise ClientSetupError(
                f"the partition built on node {node_name()} from {paths.data_dir} differs from "
                "the server's: every node needs the same dataset files and fedper version"
            )
        if store is None:
            folder = paths.state_dir / spec.run_id
            folded = bool(cfg.engine.get("fold_evaluation", False))
            store = DiskHeadStore(
                folder, spec.run_id, head_layout(self.initial), 2 if folded else 1
            )
        self.store = store
        augment = cfg.dataset.get("augment") or {}
        self.transform = BatchTransform(
            cfg.dataset.image_size,
            self.dataset.mean,
            self.dataset.std,
            crop_padding=augment.get("crop_padding", 0),
            flip=augment.get("flip", False),
            channels_last=perf.channels_last,
            device=device,  # batches are prepared where they train
        )
        self.settings = TrainSettings(
            epochs=cfg.num_epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            autocast_dtype=perf.autocast_dtype,
        )
        self._host_data: OrderedDict[int, ClientData] = OrderedDict()
        self._host_data_bytes: dict[int, int] = {}
        self.host_data_budget = float(cfg.performance.client_data_cache_mb) * 1e6
        self._device_data: tuple[int, ClientData] | None = None

    def check_client(self, cid: int, num_partitions: int | None, nodes: int | None = None) -> None:
        """This node's partition-id and num-partitions fit the run (or, given `nodes`, the
        simulation's shared nodes)."""
        count = nodes or self.cfg.num_clients
        what = f"num_clients={count}" if nodes is None else f"{count} simulation nodes"
        if num_partitions is not None and int(num_partitions) != count:
            raise ClientSetupError(
                f"client {cid} on node {node_name()} has num-partitions={num_partitions} but "
                f"the run has {what}: start its SuperNode with "
                f"--node-config 'num-partitions={count} ...'"
            )
        if not 0 <= cid < count:
            raise ClientSetupError(
                f"node {node_name()} has partition-id={cid}, outside 0-{count - 1} for {what}"
            )

    def data(self, cid: int) -> ClientData:
        """A client's rows, kept for the last `HOST_DATA_CLIENTS` clients this worker served (a
        worker of a large simulation serves thousands) while they fit in
        `performance.client_data_cache_mb`; the one being served is always kept, and only it
        is on the GPU."""
        if cid not in self._host_data:
            self._host_data[cid] = load_client_data(self.dataset, cid, "cpu")
            self._host_data_bytes[cid] = client_data_bytes(self._host_data[cid])
        self._host_data.move_to_end(cid)
        while len(self._host_data) > 1 and (
            len(self._host_data) > HOST_DATA_CLIENTS
            or sum(self._host_data_bytes.values()) > self.host_data_budget
        ):
            oldest, _ = self._host_data.popitem(last=False)
            del self._host_data_bytes[oldest]
        target = self.performance.data_device
        if target.type == "cpu":
            return self._host_data[cid]
        if self._device_data is None or self._device_data[0] != cid:
            self._device_data = None  # free the previous client's device copy first
            host = self._host_data[cid]
            self._device_data = (cid, ClientData(*(t.to(target) for t in vars(host).values())))
        return self._device_data[1]

    def generator(self, cid: int, round_num: int, phase: int) -> torch.Generator:
        """Shuffling and augmentation depend on (seed, round, client) only, not on the worker."""
        seed = np.random.SeedSequence([self.cfg.seed, round_num, cid, phase]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def prepare_model(
        self,
        cid: int,
        shared: Mapping[str, torch.Tensor] | None,
        before_round: int,
        head_round: int | None = None,
    ) -> tuple[ModelSplit, bool]:
        """Global shared parts from the server, personal parts from this client's store; and
        whether a lost head was restarted from the initial one (`personal_state`)."""
        if self.shared_keys:
            self.model.load_keys(dict(shared or {}), self.shared_keys)
        restarted = False
        if self.personal_keys:
            personal, restarted = self.personal_state(cid, before_round, head_round)
            try:
                self.model.load_keys(personal, self.personal_keys)
            except ValueError as error:
                raise StateFileError(
                    f"the saved head of client {cid} does not fit this model ({error}): "
                    f"delete it and {HEAD_WAY_OUT}"
                ) from None
        return self.model, restarted

    def personal_state(
        self, cid: int, before_round: int, head_round: int | None
    ) -> tuple[dict[str, torch.Tensor], bool]:
        """The newest head the client saved before `before_round`, or the initial one before
        its first training; and whether a lost head was restarted from the initial one.

        `head_round` is the last round the server counted this client's training in (0: never,
        None: not known, as in the benchmark's plain loop). A store without a head from that
        round has lost it (a wiped or different state_dir, files restored from an older copy):
        the run stops, unless `restart_lost_heads` says to start that client over.
        """
        try:
            found = self.store.load_version(cid, before_round)
        except ForeignHeadError as error:  # not this client's: like a lost head, it stops the run
            raise ClientSetupError(str(error)) from None
        if head_round and (found is None or found[0] < head_round):
            if not self.cfg.get("restart_lost_heads", False):
                newest = f"its newest is from round {found[0]}" if found else "there is none"
                raise ClientSetupError(
                    f"client {cid} trained in round {head_round}, but its head from that round "
                    f"is not in {self.store.location(cid)} ({newest}): restore the node's "
                    f"state_dir, or {HEAD_WAY_OUT}"
                )
            return self.initial, True
        return (found[1] if found is not None else self.initial), False

    def train(
        self,
        cid: int,
        round_num: int,
        shared: Mapping[str, torch.Tensor] | None,
        head_round: int | None = None,
    ) -> TrainResult:
        """One round of local training; the personal parts are saved, the shared ones returned."""
        clock = Stopwatch()
        with clock("data"):
            data = self.data(cid)
        with clock("state"):
            model, restarted = self.prepare_model(cid, shared, round_num, head_round)
        with clock("compute"), stop_on_out_of_memory(self.cfg):
            if self.algorithm.head_then_base:
                stats = self.train_head_then_base(model, data, cid, round_num)
            else:
                stats = train(
                    model,
                    data.train_images,
                    data.train_labels,
                    self.transform,
                    self.settings,
                    self.generator(cid, round_num, phase=0),
                )
        with clock("state"):
            if self.personal_keys:
                self.store.save(cid, round_num, model.state_of(self.personal_keys))
            out = model.state_of(self.shared_keys)
        metrics = {"num-examples": stats["num_examples"], "train_loss": stats["loss"]}
        metrics[RESTARTED_METRIC] = int(restarted)  # every reply has the same keys (Flower's rule)
        return TrainResult(out, {**metrics, **clock.metrics()})

    def evaluate(
        self,
        cid: int,
        round_num: int,
        shared: Mapping[str, torch.Tensor] | None,
        head_round: int | None = None,
    ) -> dict[str, float]:
        """Test and validation metrics with this round's global parts and the client's head."""
        clock = Stopwatch()
        with clock("data"):
            data = self.data(cid)
        # the head trained in this round (or earlier, if the client was not sampled)
        with clock("state"):
            model, restarted = self.prepare_model(cid, shared, round_num + 1, head_round)
        with clock("compute"), stop_on_out_of_memory(self.cfg):
            if self.algorithm.finetune_head and self.cfg.finetune_epochs > 0:
                self.finetune_head(model, data, cid, round_num)
            batch, dtype = self.cfg.batch_size, self.settings.autocast_dtype
            test = evaluate(model, data.test_images, data.test_labels, self.transform, batch, dtype)
            val = evaluate(model, data.val_images, data.val_labels, self.transform, batch, dtype)
        return {
            "num-examples": test["num_examples"],
            "accuracy": test["accuracy"],
            "loss": test["loss"],
            "num_val_examples": val["num_examples"],
            "val_accuracy": val["accuracy"] if val["num_examples"] else float("nan"),
            "val_loss": val["loss"] if val["num_examples"] else float("nan"),
            RESTARTED_METRIC: int(restarted),
            **clock.metrics(),
        }

    def train_only(
        self,
        model: ModelSplit,
        data: ClientData,
        part: str,
        epochs: int,
        generator,
        freeze_statistics: bool = True,
    ) -> dict[str, float]:
        """Train one part with the other's weights frozen; with `freeze_statistics` the other's
        BatchNorm layers stay in eval mode too (running statistics used and kept), else they
        normalize with batch statistics and update their running ones, as in training."""
        other = "base" if part == "head" else "head"
        model.freeze(other)
        try:
            settings = TrainSettings(**{**vars(self.settings), "epochs": epochs})
            return train(
                model,
                data.train_images,
                data.train_labels,
                self.transform,
                settings,
                generator,
                parameters=list(getattr(model, part).parameters()),
                frozen=getattr(model, other) if freeze_statistics else None,
            )
        finally:
            model.unfreeze()

    def train_head_then_base(
        self, model: ModelSplit, data: ClientData, cid: int, round_num: int
    ) -> dict[str, float]:
        """FedRep's local update: the head first (`fedrep.head_epochs`, base frozen), then
        the base (`num_epochs`, head frozen); the loss reported is the base phase's.

        Only weights are frozen, as in FedRep's reference code: the whole model stays in
        training mode, so BatchNorm layers normalize with batch statistics in both phases. A
        frozen part in eval mode normalizes with running statistics that lag behind the part
        being trained, and training diverged that way (losses above 100 at 10 head epochs).
        """
        head_epochs = int(self.cfg.fedrep.head_epochs)
        if head_epochs > 0:
            self.train_only(model, data, "head", head_epochs, self.generator(cid, round_num, 2),
                            freeze_statistics=False)  # fmt: skip
        return self.train_only(
            model, data, "base", self.cfg.num_epochs, self.generator(cid, round_num, phase=0),
            freeze_statistics=False,
        )  # fmt: skip

    def finetune_head(self, model: ModelSplit, data: ClientData, cid: int, round_num: int) -> None:
        """FedAvg-FT: adapt the received head to the client's training data, base frozen.

        The fine-tuned weights are not kept: the next call overwrites the whole model.
        """
        generator = self.generator(cid, round_num, phase=1)
        self.train_only(model, data, "head", self.cfg.finetune_epochs, generator)


_WORKERS: dict[str, ClientWorker] = {}


def worker_for(spec: RunSpec, paths: NodePaths) -> ClientWorker:
    """This process's worker for the run, built on the first call of the run and reused."""
    # a resumed run with more rounds keeps its run id: the whole spec decides
    key = f"{spec.to_json()}|{paths.data_dir}|{paths.state_dir}"
    if key not in _WORKERS:
        _WORKERS.clear()  # one run at a time per process: drop the previous run's model and data
        _WORKERS[key] = ClientWorker(spec, paths)
    return _WORKERS[key]


def client_data_bytes(data: ClientData) -> int:
    """What a client's rows take in memory: every tensor of every split."""
    tensors = (getattr(data, f.name) for f in fields(data))
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
