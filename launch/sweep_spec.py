"""Sweep files: a matrix of config choices expanded into named runs (configs/sweeps/ has the paper's ablations).

    name: layers                      # study name: first part of every run name, and a W&B tag
    config: ../../experiments/ablations-50b/moe-1.2b-gqa.yaml   # paths are relative to the sweep file
    overrides: [model.gengram.window=null]          # for every run
    tags: [ablations-50b]                           # W&B tags for every run (plus the study and value names)
    run_root: runs/ablations-50b                    # RUN_DIR = run_root/<run name>; null: the config's run.dir
    launch: {nodes: 1, gpus_per_node: 8, time: "24:00:00"}   # `launch slurm` options; the command line wins
    matrix:                                         # a list of matrices; each is the product of its axes
      - layer:
          - {name: L1, overrides: ["model.gengram.layers=[1]"]}
          - {name: L2, overrides: ["model.gengram.layers=[2]"]}
    include: [other-sweep.yaml]                     # runs of other sweep files, as those files define them

A run is named `<name>-<value>-<value>...`; an axis value may also set `config` (at most one per run).
The file is read with OmegaConf onto the dataclasses below, so unknown keys and wrong types name the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nucleotron.configs import resolve_config_path

from .quoting import LaunchError
from .slurm_options import SlurmOptions, check

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class AxisValue:
    name: str = MISSING
    config: Optional[str] = None
    overrides: List[str] = field(default_factory=list)


@dataclass
class SweepFile:
    name: str = MISSING
    config: Optional[str] = None
    overrides: List[str] = field(default_factory=list)
    tags: List[str] = field(default_factory=list)
    run_root: Optional[str] = None
    launch: SlurmOptions = field(default_factory=SlurmOptions)
    matrix: List[Dict[str, List[AxisValue]]] = field(default_factory=list)
    include: List[str] = field(default_factory=list)


@dataclass
class SweepRun:
    """One expanded run: enough to call `prepare_run` and `launch_run`."""

    name: str
    config: Path
    overrides: List[str]
    options: SlurmOptions
    source: Path  # the sweep file it came from


def read_sweep(path: Path) -> SweepFile:
    try:
        raw = OmegaConf.load(path)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SweepFile), raw))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f" at '{key}'" if key else ""
        message = str(getattr(err, "msg", err)).splitlines()[0]
        raise LaunchError(f"{path}: bad sweep file{where}: {message}. A sweep file has: name, config, overrides, "
                          f"tags, run_root, launch, matrix, include (see nucleotron.launch.sweep_spec)") from None
    except OSError as err:
        raise LaunchError(f"sweep file {path}: {err.strerror}") from None


def _checked_name(text: str, path: Path, what: str) -> str:
    if not NAME.fullmatch(text):
        raise LaunchError(f"{path}: {what} {text!r} must use only letters, digits, '.', '_' and '-' "
                          f"(it becomes part of a run name, a directory and a W&B tag)")
    return text


def _combinations(matrix: Dict[str, List[AxisValue]], path: Path) -> List[List[AxisValue]]:
    combos: List[List[AxisValue]] = [[]]
    for axis, values in matrix.items():
        if not values:
            raise LaunchError(f"{path}: matrix axis {axis!r} has no values")
        combos = [combo + [value] for combo in combos for value in values]
    return combos


def _one_run(sweep: SweepFile, combo: Sequence[AxisValue], path: Path) -> SweepRun:
    names = [_checked_name(value.name, path, "value name") for value in combo]
    name = "-".join([sweep.name, *names])
    configs = [value.config for value in combo if value.config]
    if len(configs) > 1:
        raise LaunchError(f"{path}: run {name!r} gets a config from more than one axis value ({configs}); "
                          f"set `config` on one axis only")
    config = configs[0] if configs else sweep.config
    if config is None:
        raise LaunchError(f"{path}: run {name!r} has no config: set `config:` at the top of the sweep file or "
                          f"on one axis's values")
    tags = list(dict.fromkeys([*sweep.tags, sweep.name, *names]))
    overrides = [*sweep.overrides, *(text for value in combo for text in value.overrides),
                 f"run.name={name}", f"logging.wandb_tags=[{','.join(tags)}]"]
    if sweep.run_root:
        overrides.append(f"run.dir={Path(sweep.run_root) / name}")
    return SweepRun(name=name, config=resolve_config_path(config, path.parent), overrides=overrides,
                    options=sweep.launch, source=path)


def expand(path: Path, seen: Sequence[Path] = ()) -> List[SweepRun]:
    """Every run of a sweep file (includes first), in file order; run names must be unique."""
    path = path.resolve()
    if path in seen:
        raise LaunchError(f"sweep files include each other in a cycle: {' -> '.join(map(str, (*seen, path)))}")
    sweep = read_sweep(path)
    _checked_name(sweep.name, path, "sweep name")
    check(sweep.launch)
    runs: List[SweepRun] = []
    for include in sweep.include:
        runs += expand(resolve_config_path(include, path.parent), (*seen, path))
    for matrix in sweep.matrix:
        runs += [_one_run(sweep, combo, path) for combo in _combinations(matrix, path)]
    counts: Dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise LaunchError(f"{path}: run names repeat: {', '.join(repeated)}; give axis values distinct names")
    return runs
