"""What each algorithm shares: the one table the client and the server consult."""

from __future__ import annotations

from dataclasses import dataclass

from fedper.models.split import PARTS


@dataclass(frozen=True)
class Algorithm:
    name: str
    shared_parts: tuple[str, ...]  # leave the client and are averaged by the server
    label: str  # display name in figures and tables
    style: str  # matplotlib line style of its curves
    finetune_head: bool = False  # fine-tune the head before evaluating, without keeping it

    @property
    def personal_parts(self) -> tuple[str, ...]:
        """Never leave the client: kept in its state file between rounds."""
        return tuple(part for part in PARTS if part not in self.shared_parts)


# In display order: figures and tables list the algorithms as this table does.
ALGORITHMS = {
    a.name: a
    for a in (
        Algorithm("fedper", ("base",), label="FedPer", style="-"),
        Algorithm("fedavg", ("base", "head"), label="FedAvg", style="--"),
        Algorithm("fedavg_ft", ("base", "head"), label="FedAvg+FT", style="-.", finetune_head=True),
        Algorithm("local", (), label="Local", style=":"),
    )
}
