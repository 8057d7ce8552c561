"""Parallel state, datasets over packs, optimizer, schedule, the training loop, checkpoints, CPU-mode patches."""
