"""`python -m fedper.bench [overrides]`: the benchmark preset (conf/bench.yaml), or
`bench=gpu` (the GPU check), `bench=deployment` (the Deployment Engine's cost) and `bench=scale`
(10 to 10,000 clients)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedper import usage  # noqa: F401  (registers the resolvers --help's template reads)
from fedper.errors import FedPerError, exit_with_error
from fedper.preflight import check_command_line


def run(cfg: DictConfig, run_dir: str) -> str:
    """Run the configured mode; return what the console shows."""
    from fedper.bench.settings import BenchSettings

    settings = BenchSettings.from_config(cfg)
    if settings.mode == "deployment":
        from fedper.bench.deployment import format_deployment, run_deployment_bench

        return format_deployment(run_deployment_bench(cfg, run_dir))
    if settings.mode == "scale":
        from fedper.bench.scale import format_scale, run_scale_bench

        return format_scale(run_scale_bench(cfg, run_dir))
    if settings.mode == "gpu_check":
        from fedper.bench.gpu import skip_reason

        if reason := skip_reason():
            return reason
    from fedper.bench.table import format_table
    from fedper.bench.versus_plain import run_benchmark

    return format_table(run_benchmark(cfg, run_dir))


@hydra.main(config_path="../../conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        print(run(cfg, HydraConfig.get().runtime.output_dir))
    except FedPerError as error:
        exit_with_error("fedper.bench", error)


if __name__ == "__main__":
    check_command_line(sys.argv[1:], "bench", program="fedper.bench")
    main()
