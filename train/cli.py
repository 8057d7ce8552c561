"""`nucleotron train --config FILE [dotted overrides]`: one process, or one per rank under torchrun / srun."""
from __future__ import annotations

import argparse
import sys
from typing import List

from nucleotron.configs import ConfigError, load_config


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nucleotron train",
        description="Train on token packs (data.packs=DIR). Re-running the same command resumes from "
                    "RUN_DIR/checkpoints/latest; SIGTERM/SIGUSR1 save and exit 75 (requeue).")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/experiments/tiny-cpu.yaml")
    parser.add_argument("overrides", nargs="*",
                        help="dotted overrides, e.g. data.packs=packs/8k run.dir=runs/a train.max_steps=100")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"nucleotron train: {err}", file=sys.stderr)
        return 2

    import warnings

    # Expected without TransformerEngine/Apex (CPU mode, or GPUs without the extras): megatron falls back to torch.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex) (and Apex )?(is|are) not installed")
    warnings.filterwarnings("ignore", message="full scope is deprecated")
    from nucleotron.data_prep.errors import DataPrepError

    from .checkpoint import CheckpointError
    from .trainer import BadLossError, train

    try:
        return train(cfg)
    except (ConfigError, DataPrepError, CheckpointError) as err:
        print(f"nucleotron train: {err}", file=sys.stderr)
        return 2
    except BadLossError as err:
        print(f"nucleotron train: {err}", file=sys.stderr)
        return 1
