"""`nucleotron model info --config FILE [overrides]`: the architecture and parameter counts as JSON."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List

from nucleotron.configs import ConfigError, load_config

from .params import architecture


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="nucleotron model", description="Inspect a model config.")
    sub = parser.add_subparsers(dest="action", required=True)
    info = sub.add_parser("info", help="print architecture and total/active parameter counts as JSON "
                                       "(counted from the config, nothing is allocated)")
    info.add_argument("--config", required=True, help="YAML config, e.g. configs/models/tiny.yaml")
    info.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.num_layers=24")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"nucleotron model: {err}", file=sys.stderr)
        return 2
    print(json.dumps(architecture(cfg.model), indent=2))
    return 0
