"""What each algorithm shares: the one table the client and the server consult."""

from __future__ import annotations

from dataclasses import dataclass

from fedper.models.split import PARTS


@dataclass(frozen=True)
class Algorithm:
    name: str
    shared_parts: tuple[str, ...]  # leave the client and are averaged by the server
    finetune_head: bool = False  # fine-tune the head before evaluating, without keeping it
    description: str = ""

    @property
    def personal_parts(self) -> tuple[str, ...]:
        """Never leave the client: kept in its state file between rounds."""
        return tuple(part for part in PARTS if part not in self.shared_parts)


ALGORITHMS = {
    a.name: a
    for a in (
        Algorithm("fedper", ("base",), description="base averaged, head personal"),
        Algorithm("fedavg", ("base", "head"), description="whole model averaged"),
        Algorithm(
            "fedavg_ft",
            ("base", "head"),
            finetune_head=True,
            description="FedAvg, head fine-tuned locally before each evaluation",
        ),
        Algorithm("local", (), description="every client trains alone, nothing is shared"),
    )
}
