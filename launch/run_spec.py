"""One run to launch: its config file, overrides, the loaded config, and RUN_DIR as an absolute path.

The config is loaded (and so validated) here, before anything is queued: a typo should fail in a second on the
login node, not hours later on a GPU node. The training command pins `run.dir` to the absolute RUN_DIR, so the
requeued job, whatever directory it starts in, finds its checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from nucleotron.configs import NucleotronConfig, load_config, resolve_config_path, to_yaml

from .quoting import LaunchError


def slurm_folder(run_dir: Path) -> Path:
    """RUN_DIR/slurm: job scripts, their logs, the job ids and the submitted (frozen) config."""
    return run_dir / "slurm"


@dataclass
class RunSpec:
    config_path: Path  # absolute
    overrides: List[str]  # the user's dotted overrides, without run.dir (pinned separately)
    cfg: NucleotronConfig
    run_dir: Path  # absolute
    workdir: Path  # where the job starts; relative paths in overrides (data.packs=...) are relative to it

    @property
    def name(self) -> str:
        return self.cfg.run.name

    def train_args(self) -> List[str]:
        """Arguments after `nucleotron`: the same command a user would type to (re)start this run."""
        return ["train", "--config", str(self.config_path), *self.overrides, f"run.dir={self.run_dir}"]

    @property
    def frozen_config(self) -> Path:
        """Where a Slurm submission writes the resolved config (see `freeze`)."""
        return slurm_folder(self.run_dir) / "config.yaml"

    def frozen_train_args(self) -> List[str]:
        return ["train", "--config", str(self.frozen_config), f"run.dir={self.run_dir}"]

    def freeze(self) -> Path:
        """Write the resolved config into RUN_DIR: a queued or requeued job then trains exactly what was submitted
        (later edits to the YAML do not leak in), and a container needs only RUN_DIR and the packs mounted, not
        configs/. Paths become absolute, so the job does not depend on the directory it starts in."""
        packs = self.packs_path()
        cfg = dataclasses.replace(self.cfg, run=dataclasses.replace(self.cfg.run, dir=str(self.run_dir)),
                                  data=dataclasses.replace(self.cfg.data, packs=str(packs) if packs else None))
        self.frozen_config.parent.mkdir(parents=True, exist_ok=True)
        self.frozen_config.write_text(to_yaml(cfg))
        return self.frozen_config

    def packs_path(self) -> Optional[Path]:
        packs = self.cfg.data.packs
        return None if packs is None else self.workdir / packs


def prepare_run(config: str, overrides: Sequence[str], workdir: Optional[Path] = None) -> RunSpec:
    """Load and validate the config; raises ConfigError (naming the key) or LaunchError."""
    workdir = Path(workdir or os.getcwd()).resolve()
    config_path = resolve_config_path(config)
    cfg = load_config(config_path, overrides)
    kept = [text for text in overrides if not text.strip().startswith("run.dir=")]
    run_dir = Path(cfg.run.dir)
    run_dir = run_dir if run_dir.is_absolute() else workdir / run_dir
    return RunSpec(config_path=config_path, overrides=kept, cfg=cfg, run_dir=Path(os.path.normpath(run_dir)),
                   workdir=workdir)


def check_packs(spec: RunSpec) -> None:
    """Training needs token packs; say how to get them before a job waits in the queue for nothing."""
    packs = spec.packs_path()
    if packs is None:
        raise LaunchError(f"data.packs is not set for run {spec.name!r}: add data.packs=DIR (a pack directory "
                          f"made by `nucleotron data prep`) to the command line or the config")
    if not (packs / "manifest.json").is_file():
        raise LaunchError(f"data.packs={spec.cfg.data.packs} has no manifest.json (looked in {packs}): make the "
                          f"packs with `nucleotron data prep ... --out {spec.cfg.data.packs}` or point data.packs "
                          f"at an existing pack directory")
