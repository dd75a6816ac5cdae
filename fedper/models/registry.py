"""Model registry: `model_name=<name>` picks a ModelSplit subclass registered here."""

from __future__ import annotations

from fedper.models.split import ModelSplit

MODELS: dict[str, type[ModelSplit]] = {}


def register_model(cls: type[ModelSplit]) -> type[ModelSplit]:
    """Class decorator: make a ModelSplit subclass available as `model_name=<cls.name>`."""
    MODELS[cls.name] = cls
    return cls
