"""fedper's Hydra sweeper for the paper's figures (a Hydra plugin must live in hydra_plugins)."""
