"""FedPer: federated learning with personalization layers, as a Flower simulation."""

from pathlib import Path

__version__ = "0.1.0"
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout: conf/, pyproject.toml
CONF_DIR = PROJECT_ROOT / "conf"
