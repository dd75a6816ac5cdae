"""The `bench:` keys of the config: what the benchmark measures and how often."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from fedper.errors import ConfigError

BENCH_JSON = "bench.json"
MODES = ("federated", "gpu_check", "deployment", "scale")
PLAIN_MODES = ("parallel", "sequential")
# what the issues ask of this machine; the report says which were met
TARGETS = {
    "round_ratio_max": 1.05,
    "client_preparation_ms_max": 50.0,
    "peak_memory_gb_max": 3.0,
    "cold_start_seconds_max": 1.5,
}


@dataclass
class BenchSettings:
    """The `bench:` keys of the config; every key is optional."""

    # federated: a federated run against the plain loop; gpu_check: the same, only on CUDA
    # (skipped with a message elsewhere); deployment: the Deployment Engine's cost; scale: how
    # the cost grows with the number of clients
    mode: str = "federated"
    plain_mode: str = "parallel"  # parallel: one process per Ray actor; sequential: one process
    prep_pool_sizes: list[int] = field(default_factory=lambda: [60000, 6000])
    prep_client_size: int = 1000  # images of the client whose preparation is timed
    prep_image_size: int = 32
    prep_repeats: int = 7
    memory_interval: float = 0.25  # seconds between memory samples (~2 ms of CPU each)
    repeats: int = 1  # deployment: simulation/deployment run pairs, interleaved
    cold_starts: int = 3  # deployment: fresh ClientApp processes timed (after one warm-up)
    start_timeout: float = 120.0  # deployment: seconds a SuperLink/SuperNode may take to listen
    scale_clients: list[int] = field(default_factory=lambda: [10, 100, 1000, 10000])  # scale
    images_per_client: int = 20  # scale: every size gets this many images per client

    @classmethod
    def from_config(cls, cfg: DictConfig) -> BenchSettings:
        values = OmegaConf.to_container(cfg.get("bench") or OmegaConf.create({}), resolve=True)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"bench.{unknown[0]} is not a benchmark setting: use one of "
                f"{', '.join(cls.__dataclass_fields__)}"
            )
        settings = cls(**values)
        for key, allowed in (("mode", MODES), ("plain_mode", PLAIN_MODES)):
            value = getattr(settings, key)
            if value not in allowed:
                raise ConfigError(
                    f"bench.{key}={value} is unknown: use one of {', '.join(allowed)}"
                )
        for key in ("prep_repeats", "repeats", "cold_starts", "images_per_client"):
            value = getattr(settings, key)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"bench.{key}={value} must be a whole number >= 1")
        sizes = settings.scale_clients
        if not sizes or not all(isinstance(n, int) and n >= 1 for n in sizes):
            raise ConfigError(
                f"bench.scale_clients={sizes} must list numbers of clients, each >= 1, e.g. "
                "[10,100,1000]"
            )
        return settings
