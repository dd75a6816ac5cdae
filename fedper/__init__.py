"""FedPer: federated learning with personalization layers, as a Flower simulation."""

__version__ = "0.1.0"
