"""`python -m fedper.bench bench=scale` end to end at 10 and 1,000 clients: every number there,
and a round at 1,000 clients that costs about what a round at 10 does, so that anything that
grows with the number of clients per round (every client evaluating, a message per node, a
results entry per client) fails here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
# generous: a round where all 1,000 clients took part would cost 30-100x a round of 10
ROUND_FACTOR = 4.0


def run_bench(tmp_path: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedper.bench", "bench=scale", *overrides,
         f"data_dir={tmp_path / 'data'}", f"state_dir={tmp_path / 'states'}",
         f"hydra.run.dir={tmp_path / 'bench'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip


def test_a_round_at_a_thousand_clients_costs_about_a_round_at_ten(tmp_path):
    done = run_bench(tmp_path, ["bench.scale_clients=[10,1000]", "num_rounds=4",
                                "bench.images_per_client=12"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    small, large = report["sizes"]
    assert (small["num_clients"], large["num_clients"]) == (10, 1000)
    assert (small["nodes"], large["nodes"]) == (10, 256)  # engine.max_nodes' default
    for size in (small, large):
        assert len(size["round_seconds_each"]) == 2  # rounds 2 and 3
        assert size["startup_seconds"] > 0 and size["round_seconds"] > 0
        assert size["startup_parts"]["prepare"] > 0 and size["startup_parts"]["engine"] > 0
        assert size["peak_all_processes_bytes"] > 0
        assert size["bytes_written_per_round"] > 0  # results, checkpoint and heads
        assert size["last_round_evaluated"] == size["num_clients"]
    assert large["round_seconds"] <= ROUND_FACTOR * small["round_seconds"], report
    # the results a round adds do not grow with the clients that did not take part: the
    # 1,000-client file holds one partition list of 1,000 entries, not one per round
    assert large["results_json_bytes"] < 20 * small["results_json_bytes"] + 200_000
    assert (tmp_path / "bench" / "scale.png").stat().st_size > 10_000
    assert "later rounds, largest against smallest" in done.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["bench.scale_clients=[]"], "bench.scale_clients=[] must list numbers of clients"),
        (["num_rounds=2"], "bench=scale needs num_rounds>=3 (got 2)"),
    ],
)
def test_a_scale_setting_that_cannot_work_is_one_line(tmp_path, overrides, message):
    done = run_bench(tmp_path, overrides)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert message in done.stderr.strip().splitlines()[-1]
