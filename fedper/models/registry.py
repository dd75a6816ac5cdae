"""Model registry: `model_name=<name>` picks a ModelSplit subclass registered here.

`@MODELS.add` on a ModelSplit subclass registers it under its `name` (docs/extending.md).
"""

from __future__ import annotations

from fedper.models.split import ModelSplit
from fedper.registry import Registry

MODELS: Registry[type[ModelSplit]] = Registry("model_name")
