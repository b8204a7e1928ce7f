"""Self-supervised training (needs the `train` extra: torch). Writes a model bundle."""
