"""The ClientApp's handlers called in-process: what leaves a client, which head it uses,
and that a message (plus the node's own config) is all a client needs."""

import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import types

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from helpers import LocalGrid, newest_head, node_configs, plan_local, run_local

from fedper import client, client_app, server_app
from fedper.engines import simulation
from fedper.errors import FedPerError, Interrupted
from fedper.heads import DiskHeadStore
from fedper.models import build_model
from fedper.packing import PACKED, pack, unpack
from fedper.server_app import run_server
from fedper.spec import SPEC_KEY

pytestmark = pytest.mark.usefixtures("fresh_worker")


class Node:
    """One client's node: its node config, and handlers called with a message built here."""

    def __init__(self, plan, cid, **node_config):
        self.plan, self.cid = plan, cid
        self.config = {"partition-id": cid, "num-partitions": plan.spec.cfg.num_clients}
        self.config.update(node_config)
        initial = build_model(plan.spec.cfg, seed=plan.spec.cfg.seed)
        self.shared = initial.part_state(client_app_algorithm(plan).shared_parts)

    def message(self, kind, round_num, arrays=None):
        arrays = pack(self.shared if arrays is None else arrays)
        config = ConfigRecord({SPEC_KEY: self.plan.spec.to_json(), "server-round": round_num})
        content = RecordDict({"arrays": arrays, "config": config})
        return Message(content=content, message_type=kind, dst_node_id=self.cid + 1)

    def call(self, handler, kind, round_num, arrays=None):
        context = Context(
            run_id=1, node_id=self.cid + 1, node_config=self.config, state=RecordDict(),
            run_config={},
        )  # fmt: skip
        return handler(self.message(kind, round_num, arrays), context)

    def introduce(self):
        return self.call(client_app.introduce, MessageType.QUERY, 0)

    def train(self, round_num, arrays=None):
        return self.call(client_app.train_round, MessageType.TRAIN, round_num, arrays)

    def evaluate(self, round_num, arrays=None):
        return self.call(client_app.evaluate_round, MessageType.EVALUATE, round_num, arrays)


def client_app_algorithm(plan):
    from fedper.algorithms import ALGORITHMS

    return ALGORITHMS[plan.spec.cfg.algorithm]


def store(plan):
    return DiskHeadStore(f"{plan.spec.state_dir}/{plan.spec.run_id}", plan.spec.run_id)


def test_a_handler_needs_nothing_but_the_message_and_its_node_config(tmp_path, monkeypatch):
    plan = plan_local(tmp_path)
    for name in list(os.environ):  # an empty environment: no variable carries the settings
        monkeypatch.delenv(name)
    node = Node(plan, 1)
    assert node.introduce().content["metrics"]["cid"] == 1
    reply = node.train(1)
    assert reply.content["metrics"]["num-examples"] > 0
    metrics = node.evaluate(1).content["metrics"]
    assert 0 <= metrics["accuracy"] <= 1 and "cid" not in metrics  # the server knows who it asked


def test_fedper_sends_only_the_base_packed_in_the_order_it_received_it(tmp_path):
    plan = plan_local(tmp_path)
    node = Node(plan, 0)
    received = dict(reversed(node.shared.items()))
    reply = node.train(1, received)
    assert list(reply.content["arrays"]) == [PACKED]  # one array, however many tensors
    model = build_model(plan.spec.cfg)
    assert set(unpack(reply.content["arrays"])) == set(model.part_keys(("base",)))
    assert list(unpack(reply.content["arrays"])) == list(received)


@pytest.mark.parametrize(("algorithm", "parts"), [("fedavg", ("base", "head")), ("local", ())])
def test_other_algorithms_send_what_they_share(tmp_path, algorithm, parts):
    plan = plan_local(tmp_path, [f"algorithm={algorithm}"])
    reply = Node(plan, 1).train(1)
    model = build_model(plan.spec.cfg)
    assert set(unpack(reply.content["arrays"])) == set(model.part_keys(parts))


def test_head_used_in_round_2_is_the_one_saved_after_round_1(tmp_path):
    plan = plan_local(tmp_path)
    first, second = Node(plan, 0), Node(plan, 1)
    first.train(1)
    saved = newest_head(store(plan), 0, before_round=2)
    initial = build_model(plan.spec.cfg, seed=plan.spec.cfg.seed).part_state(("head",))
    assert any(not torch.equal(saved[k], initial[k]) for k in initial)
    second.train(1)  # another client trains in between on the same worker (same model object)
    worker = next(iter(client._WORKERS.values()))
    model, restarted = worker.prepare_model(0, first.shared, before_round=2, head_round=1)
    assert not restarted
    for key, value in saved.items():
        assert torch.equal(model.state_dict()[key], value), key
    first.train(2)
    assert set(store(plan).versions(0)) == {1, 2}


def test_evaluation_uses_the_head_trained_this_round_and_changes_nothing(tmp_path):
    plan = plan_local(tmp_path)
    node = Node(plan, 2)
    node.train(1)
    before = newest_head(store(plan), 2, before_round=2)
    first = node.evaluate(1).content["metrics"]
    second = node.evaluate(1).content["metrics"]
    assert (first["accuracy"], first["loss"]) == (second["accuracy"], second["loss"])
    after = newest_head(store(plan), 2, before_round=2)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_client_not_yet_trained_starts_from_the_seeded_initial_head(tmp_path):
    plan = plan_local(tmp_path)
    node = Node(plan, 1)
    node.introduce()
    worker = next(iter(client._WORKERS.values()))
    model, _ = worker.prepare_model(1, node.shared, before_round=1, head_round=0)
    initial = build_model(plan.spec.cfg, seed=plan.spec.cfg.seed)
    for key, value in initial.part_state(("head",)).items():
        assert torch.equal(model.state_dict()[key], value)


def test_fedavg_ft_fine_tunes_for_evaluation_without_keeping_it(tmp_path):
    tuned_plan = plan_local(tmp_path, ["algorithm=fedavg_ft", "finetune_epochs=2"], "tuned")
    plain_plan = plan_local(tmp_path, ["algorithm=fedavg"], "plain")
    tuned = Node(tuned_plan, 0).evaluate(1).content["metrics"]
    untuned = Node(plain_plan, 0).evaluate(1).content["metrics"]
    assert tuned["loss"] != untuned["loss"]
    assert not store(tuned_plan).path(0).exists(), "the fine-tuned head was saved"


def test_a_truncated_head_file_is_a_client_failure_naming_the_file(tmp_path):
    plan = plan_local(tmp_path)
    node = Node(plan, 0)
    node.train(1)
    path = store(plan).path(0)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FedPerError, match="client_0.pt.*delete it"):
        node.train(2)


def test_a_head_with_one_flipped_byte_is_caught_by_its_checksum(tmp_path):
    plan = plan_local(tmp_path)
    node = Node(plan, 0)
    node.train(1)
    path = store(plan).path(0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor bytes: torch.load alone would accept it
    path.write_bytes(bytes(data))
    with pytest.raises(FedPerError, match="client_0.pt is damaged"):
        node.train(2)


def fatal_reason(reply):
    assert not reply.has_error()
    return str(reply.content.config_records["fatal"]["reason"])


def test_a_partition_that_differs_from_the_servers_stops_the_run(tmp_path):
    plan = plan_local(tmp_path)
    wrong = dataclasses.replace(plan, spec=dataclasses.replace(plan.spec, fingerprint="0" * 64))
    assert "partition built on node" in fatal_reason(Node(wrong, 0).introduce())
    with pytest.raises(FedPerError, match="partition built on node .* differs from the server"):
        run_local(wrong)


def test_an_initial_model_that_differs_from_the_servers_stops_the_run(tmp_path):
    plan = plan_local(tmp_path)
    wrong = dataclasses.replace(plan, spec=dataclasses.replace(plan.spec, initial_digest="0"))
    with pytest.raises(FedPerError, match="seeded initial model on node .* differs"):
        run_local(wrong)


def test_a_node_without_the_data_folder_stops_the_run_naming_path_and_node(tmp_path):
    plan = plan_local(tmp_path)
    missing = tmp_path / "nowhere"
    nodes = node_configs(3)
    nodes[2]["data-dir"] = str(missing)
    with pytest.raises(FedPerError, match=f"data_dir {missing} does not exist on node "):
        run_local(plan, nodes)


def test_wrong_num_partitions_is_one_clear_error(tmp_path):
    plan = plan_local(tmp_path)
    with pytest.raises(FedPerError, match="num-partitions=4 but the run has num_clients=3"):
        run_local(plan, node_configs(3, **{"num-partitions": 4}))


def test_two_nodes_claiming_one_partition_id_stop_the_run(tmp_path):
    plan = plan_local(tmp_path)
    nodes = node_configs(3)
    nodes[2]["partition-id"] = 1
    with pytest.raises(FedPerError, match=r"two nodes \(1001 and 1002\) serve partition-id=1"):
        run_local(plan, nodes)


def test_a_node_that_never_connects_fails_the_run_naming_the_missing_clients(tmp_path):
    plan = plan_local(tmp_path, ["engine.connect_timeout=0.3"])
    with pytest.raises(FedPerError, match=r"client\(s\) \[0, 2\] did not connect within "):
        run_local(plan, [node_configs(3)[1]])


def test_each_node_keeps_its_heads_in_its_own_state_dir(tmp_path):
    plan = plan_local(tmp_path, ["num_clients=2", "clients_per_round=2"])
    nodes = [dict(config, **{"state-dir": str(tmp_path / f"node{cid}")})
             for cid, config in enumerate(node_configs(2))]  # fmt: skip
    results = run_local(plan, nodes)
    assert [r["round"] for r in results.rounds] == [1, 2]
    for cid in (0, 1):
        heads = sorted(p.name for p in (tmp_path / f"node{cid}").rglob("*.pt"))
        assert heads == [f"client_{cid}.pt"]
    assert not (tmp_path / "states").exists()


def test_in_process_run_matches_itself_and_records_provenance(tmp_path):
    a = run_local(plan_local(tmp_path, name="a"))
    b = run_local(plan_local(tmp_path, name="b"))
    assert [r["per_client"] for r in a.rounds] == [r["per_client"] for r in b.rounds]
    assert [r["accuracy"] for r in a.rounds] == [r["accuracy"] for r in b.rounds]
    versions, code = a.header["versions"], a.header["code_version"]
    assert torch.__version__.startswith(versions["torch"]) and versions["flwr"] and versions["ray"]
    assert len(code["commit"]) == 40 and isinstance(code["dirty"], bool)  # this is a git checkout
    assert a.header["unused_settings"] == ["finetune_epochs", "fedrep.head_epochs"]


def test_a_client_out_of_gpu_memory_stops_the_run_with_what_to_change(tmp_path, monkeypatch):
    plan = plan_local(tmp_path)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(client, "train", out_of_memory)
    with pytest.raises(FedPerError, match="ran out of GPU memory .*use a smaller batch_size"):
        run_local(plan)


def test_a_run_id_that_is_not_one_never_names_a_folder(tmp_path):
    plan = plan_local(tmp_path)
    hostile = dataclasses.replace(plan, spec=dataclasses.replace(plan.spec, run_id="../../x"))
    assert "is not a fedper run id" in fatal_reason(Node(hostile, 0).introduce())
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_results_record_the_device_the_clients_compute_with(tmp_path):
    results = run_local(plan_local(tmp_path, ["num_rounds=1"]))
    assert results.header["device"]["device"] == "cpu"
    assert results.header["device"]["layout"] == "channels_last"  # MobileNet-v1 on the CPU


class SilentGrid(LocalGrid):
    """A grid whose node for client 1 takes training messages and never replies."""

    def push_messages(self, messages):
        ids = super().push_messages(messages)
        for message_id, msg in zip(ids, messages, strict=True):
            silent = self.nodes[msg.metadata.dst_node_id]["partition-id"] == 1
            if silent and msg.metadata.message_type == MessageType.TRAIN:
                del self.replies[message_id]
        return ids


def test_a_client_that_never_replies_fails_the_round_naming_it(tmp_path):
    plan = plan_local(tmp_path, ["engine.reply_timeout=0.3"])
    with pytest.raises(
        FedPerError, match=r"round 1 train: partition-id\(s\) \[1\] did not reply within 0.3 s"
    ) as caught:
        run_server(SilentGrid(node_configs(3)), plan)
    assert str(caught.value).endswith(
        f"continue with: python -m fedper.main resume={plan.spec.run_dir}"
    )


def test_a_stopped_engine_ends_the_server_loop_while_it_waits(tmp_path):
    # the engine set the stop event (it failed, or was interrupted): the loop does not wait
    # out engine.reply_timeout (which would end this test with a different error)
    plan = plan_local(tmp_path, ["engine.reply_timeout=30"])
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted, match="stopped while waiting for clients"):
        run_server(SilentGrid(node_configs(3)), plan, stop)


def test_an_engine_that_fails_stops_the_server_loop_and_says_why(tmp_path, monkeypatch):
    # e.g. Flower finding no actor it can place (more GPUs asked than Ray sees): the engine's
    # exception ends the run in one line, and the server thread is told to stop
    import flwr.simulation

    seen = {}

    def failing_simulation(server_app, **_):
        seen["stop"] = server_app.stop
        raise RuntimeError("no actor could be placed")

    def recording_server_app(plan, stop, serving):
        return types.SimpleNamespace(stop=stop)

    monkeypatch.setattr(flwr.simulation, "run_simulation", failing_simulation)
    monkeypatch.setattr(server_app, "server_app_for", recording_server_app)
    monkeypatch.setattr(simulation, "ray_for", lambda plan: contextlib.nullcontext())
    with pytest.raises(FedPerError, match="engine stopped: RuntimeError: no actor could be placed"):
        simulation.simulate(plan_local(tmp_path))
    assert seen["stop"].is_set()


def test_the_client_path_imports_none_of_the_heavy_modules():
    """A Deployment Engine message starts a fresh ClientApp process: every module its imports
    pull in is paid per client and phase (the deployment benchmark lists them with their chain)."""
    from fedper.bench.startup import HEAVY_MODULES

    code = (
        "import sys, fedper.client_app\n"
        f"heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_a_held_client_goes_on_once_its_release_file_exists_and_not_forever(tmp_path):
    release = tmp_path / "release"
    release.touch()
    client_app.hold_until(release, 600)  # there already: returns at once
    with pytest.raises(RuntimeError, match=f"held 0.2 s and {tmp_path / 'missing'} never"):
        client_app.hold_until(tmp_path / "missing", 0.2)
