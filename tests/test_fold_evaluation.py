"""`engine.fold_evaluation`: round r's evaluation rides in round r+1's training messages. The
metrics are those of separate evaluate messages, fewer messages go out, and a run stopped after
a round's training but before its evaluation came back resumes to the uninterrupted results."""

import pytest
from flwr.app import MessageType
from helpers import LocalGrid, node_configs, plan_local, resume_run, set_task_identity, start_run

from fedper.client import ClientWorker
from fedper.errors import FedPerError
from fedper.results import load_results
from fedper.server_app import run_server

FOLD = "engine.fold_evaluation=true"
# every number of every round but those that say how the round was carried: wall seconds,
# timing and the bytes sent (a folded round sends its arrays once, not twice)
CARRIAGE = ("seconds", "timing", "bytes_down")


def comparable(results: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in CARRIAGE} for r in results["rounds"]]


def run_with_grid(tmp_path, overrides, name):
    """A run through an in-process grid; its results and the messages the server sent."""
    plan = plan_local(tmp_path, overrides, name)
    set_task_identity()
    grid = LocalGrid(node_configs(plan.spec.cfg.num_clients))
    run_server(grid, plan)
    return load_results(tmp_path / name), grid.sent


# sampled training and evaluation: some clients evaluate without training in the next round
# (an evaluate message beside the training ones), some train without evaluating; a round
# without evaluation between; FedAvg+FT fine-tunes with a generator seeded by the round it
# evaluates, so a wrong round would change its metrics
SAMPLED = ["num_clients=4", "clients_per_round=2", "clients_per_evaluation=3", "num_rounds=5",
           "evaluate_every=2", "algorithm=fedavg_ft", "finetune_epochs=1"]  # fmt: skip


@pytest.mark.parametrize("setting", [["algorithm=fedper"], SAMPLED], ids=["all", "sampled"])
def test_folded_evaluation_measures_what_separate_messages_measure(tmp_path, setting):
    separate, sent_separate = run_with_grid(tmp_path, setting, "separate")
    folded, sent_folded = run_with_grid(tmp_path, [*setting, FOLD], "folded")
    assert comparable(folded) == comparable(separate)
    rounds = folded["rounds"]
    evaluated = [r["round"] for r in rounds if r["evaluated"]]
    assert [r["round"] for r in rounds if r["timing"].get("evaluation_folded")] == evaluated[:-1]
    assert sum(r["bytes_down"] for r in rounds) < sum(r["bytes_down"] for r in separate["rounds"])
    kinds = (MessageType.TRAIN, MessageType.EVALUATE)
    count = [sum(m.metadata.message_type in kinds for m in sent)
             for sent in (sent_separate, sent_folded)]  # fmt: skip
    folded_into_training = sum(
        m.metadata.message_type == MessageType.TRAIN and "evaluate-round" in m.content["config"]
        for m in sent_folded
    )
    assert folded_into_training > 0
    assert count[1] == count[0] - folded_into_training
    if setting == ["algorithm=fedper"]:  # 3 clients, 2 rounds: training, training with round
        assert count == [12, 9]  # 1's evaluation, round 2's evaluation


def test_a_run_stopped_before_its_folded_evaluation_came_back_resumes_to_the_same_results(
    tmp_path, monkeypatch
):
    run = ["num_rounds=4", FOLD]
    reference = start_run(tmp_path, run, run="reference")
    # client 1 fails in round 3's training, whose message carries round 2's evaluation: round 2
    # is not committed, yet clients 0 and 2 have saved their heads of round 3
    train = ClientWorker.train

    def failing(self, cid, round_num, *args, **kwargs):
        if (cid, round_num) == (1, 3):
            raise RuntimeError("lost")
        return train(self, cid, round_num, *args, **kwargs)

    monkeypatch.setattr(ClientWorker, "train", failing)
    with pytest.raises(FedPerError, match=r"^round 2 evaluate: only 2 of 3 client\(s\)"):
        start_run(tmp_path, run, run="stopped")
    monkeypatch.setattr(ClientWorker, "train", train)
    assert [r["round"] for r in load_results(tmp_path / "stopped")["rounds"]] == [1]
    assert comparable(resume_run(tmp_path / "stopped")) == comparable(reference)
