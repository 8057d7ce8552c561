"""Check that the installed packages satisfy pyproject.toml; the GPU image runs it at build time.

The base image brings its own torch, Triton, TransformerEngine and flash-attn (built together against its CUDA);
this fails the build when one of them, or anything pip added, falls outside what pyproject.toml asks for, instead
of the mismatch surfacing on a GPU node hours later.

    python docker/check_versions.py [--gpu] [--pyproject PATH]
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path
from typing import List, Tuple

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def requirements(pyproject: Path, gpu: bool) -> List[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    texts = list(project["dependencies"]) + (list(project["optional-dependencies"]["gpu"]) if gpu else [])
    return [Requirement(text) for text in texts]


def check(reqs: List[Requirement]) -> List[Tuple[str, str, str, bool]]:
    """(name, wanted, installed, ok) per requirement; NGC's pre-release builds (2.10.0a0+...) count as their version."""
    rows = []
    for req in reqs:
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            rows.append((req.name, str(req.specifier) or "any", "missing", False))
            continue
        ok = req.specifier.contains(installed, prereleases=True)
        rows.append((req.name, str(req.specifier) or "any", installed, ok))
    return rows


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="also check the `gpu` extra (flash-attn, transformer-engine)")
    p.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = p.parse_args(argv)
    rows = check(requirements(args.pyproject, args.gpu))
    for name, wanted, installed, ok in rows:
        print(f"{'ok ' if ok else 'BAD'}  {name:<22} {wanted:<14} {installed}")
    bad = [name for name, _, _, ok in rows if not ok]
    if bad:
        print(f"check_versions: {', '.join(bad)} do not satisfy {args.pyproject}; pick a base image that has them "
              f"or change the pins", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
