"""What each algorithm shares and how a client trains: the one table client and server consult.

The model's base/head split decides what can be shared; an algorithm picks which parts leave
the client (and are averaged by the server) and whether its BatchNorm layers stay behind.
Everything a client does not share is personal: it stays in the client's head store.
`ALGORITHMS.add(Algorithm(...))` registers another (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from fedper.models.split import PARTS, ModelSplit
from fedper.registry import Registry


@dataclass(frozen=True)
class Algorithm:
    name: str
    shared_parts: tuple[str, ...]  # leave the client and are averaged by the server
    label: str  # display name in figures and tables
    style: str | tuple  # matplotlib line style of its curves (a name or a dash pattern)
    finetune_head: bool = False  # fine-tune the head before evaluating, without keeping it
    local_batchnorm: bool = False  # every BatchNorm layer (affine and statistics) stays local
    head_then_base: bool = False  # FedRep: head epochs with the base frozen, then the base

    def check(self, cfg: DictConfig) -> None:
        """The settings only this algorithm reads (none for the built-in ones: the keys they
        read, finetune_epochs and fedrep.head_epochs, are in every config and checked there)."""

    @property
    def personal_parts(self) -> tuple[str, ...]:
        """Parts that never leave the client (BatchNorm layers aside)."""
        return tuple(part for part in PARTS if part not in self.shared_parts)

    def shared_keys(self, model: ModelSplit, local_bn: bool = False) -> list[str]:
        """The state keys a client sends: its shared parts minus what stays local.

        `local_bn` (`model.local_bn=true`) keeps the BatchNorm running statistics of the
        shared parts on each client, while their affine weights are still averaged.
        """
        if self.local_batchnorm:
            local = model.batchnorm_keys(PARTS, affine=True)
        elif local_bn:
            local = model.batchnorm_keys(self.shared_parts, affine=False)
        else:
            local = set()
        return [key for key in model.part_keys(self.shared_parts) if key not in local]

    def personal_keys(self, model: ModelSplit, local_bn: bool = False) -> list[str]:
        """The state keys a client keeps in its head store: everything it does not send."""
        shared = set(self.shared_keys(model, local_bn))
        return [key for key in model.state_dict() if key not in shared]


# In display order: figures and tables list the algorithms in the order they were added.
ALGORITHMS: Registry[Algorithm] = Registry("algorithm")
# Arivazhagan et al. 2019, arXiv:1912.00818
ALGORITHMS.add(Algorithm("fedper", ("base",), label="FedPer", style="-"))
# McMahan et al. 2017, arXiv:1602.05629
ALGORITHMS.add(Algorithm("fedavg", ("base", "head"), label="FedAvg", style="--"))
ALGORITHMS.add(
    Algorithm("fedavg_ft", ("base", "head"), label="FedAvg+FT", style="-.", finetune_head=True)
)
ALGORITHMS.add(Algorithm("local", (), label="Local", style=":"))
# Collins et al. 2021, arXiv:2102.07078
ALGORITHMS.add(
    Algorithm("fedrep", ("base",), label="FedRep", style=(0, (5, 1)), head_then_base=True)
)
# Liang et al. 2020, arXiv:2001.01523
ALGORITHMS.add(Algorithm("lg_fedavg", ("head",), label="LG-FedAvg", style=(0, (3, 1, 1, 1, 1, 1))))
# Li et al. 2021, arXiv:2102.07623
ALGORITHMS.add(Algorithm("fedbn", ("base", "head"), label="FedBN", style=(0, (1, 1)),
                         local_batchnorm=True))  # fmt: skip
