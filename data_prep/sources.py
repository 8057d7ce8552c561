"""The SOURCES.tsv table that `data prep` reads: which FASTA files, which group, which assembly."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from .errors import DataPrepError
from .groups import DEFAULT, SETTING, GroupWeights

REQUIRED_COLUMNS = ("path", "group", "assembly")
OPTIONAL_COLUMNS = ("species", "annotation", "chrom_map")
GROUPS = DEFAULT.groups            # the default groups (human, nonhuman); others come with --group-weights


@dataclass(frozen=True)
class Source:
    """One FASTA file (an assembly may span several rows/files)."""
    path: str                  # absolute
    group: str                 # 'human' | 'nonhuman' by default; any group declared with --group-weights
    assembly: str
    species: str = ""
    annotation: Optional[str] = None   # absolute path of a GFF3/GTF, for the gene-proximity filter
    chrom_map: Optional[str] = None    # absolute path of a 2-column TSV: record name -> chromosome
    line: int = field(default=0, compare=False)   # line in SOURCES.tsv, for messages


def _resolve(base: str, value: str) -> str:
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(base, value))


def read_sources(tsv_path: str, weights: GroupWeights = DEFAULT) -> List[Source]:
    """Parse and validate SOURCES.tsv; every problem names the file, line and column. A row's group must be one of
    `weights` (the default human/nonhuman, or those given with --group-weights)."""
    if not os.path.isfile(tsv_path):
        raise DataPrepError(f"{tsv_path}: sources file not found; pass --sources PATH to a tab-separated table "
                            f"with columns {', '.join(REQUIRED_COLUMNS)}")
    base = os.path.dirname(os.path.abspath(tsv_path))
    with open(tsv_path, newline="", encoding="utf-8-sig") as handle:     # utf-8-sig: a leading BOM is dropped
        reader = csv.DictReader((line for line in handle if not line.startswith("#")), delimiter="\t")
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataPrepError(f"{tsv_path}: missing column(s) {', '.join(repr(c) for c in missing)} in the header "
                                f"(found {header}); the header needs {', '.join(REQUIRED_COLUMNS)} separated by tabs")
        unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if unknown:
            raise DataPrepError(f"{tsv_path}: unknown column(s) {unknown}; allowed: "
                                f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
        sources, group_of = [], {}
        for line_no, row in enumerate(reader, start=2):
            where = f"{tsv_path} line {line_no}"
            for column in REQUIRED_COLUMNS:
                if not (row.get(column) or "").strip():
                    raise DataPrepError(f"{where}: column {column!r} is empty")
            group, assembly = row["group"].strip(), row["assembly"].strip()
            if group not in weights.groups:
                known = ", ".join(weights.groups)
                raise DataPrepError(
                    f"{where}: column 'group' has unknown group {group!r}; the groups are {known} "
                    + (f"(from {SETTING})" if weights.declared else
                       f"(the default 1:1 mix); declare other groups with their token shares, e.g. "
                       f"{SETTING} {group}=1 for one group or {SETTING} human=0.5,{group}=0.5")
                    + ("" if not weights.declared else f"; add {group!r} with its weight to {SETTING}"))
            if group_of.setdefault(assembly, group) != group:
                raise DataPrepError(f"{where}: assembly {assembly!r} is listed as both {group_of[assembly]!r} and "
                                    f"{group!r}; one assembly belongs to one group")
            path = _resolve(base, row["path"].strip())
            if not os.path.isfile(path):
                raise DataPrepError(f"{where}: column 'path': file not found: {path}")
            extra = {}
            for column in ("annotation", "chrom_map"):
                value = (row.get(column) or "").strip()
                if value:
                    extra[column] = _resolve(base, value)
                    if not os.path.isfile(extra[column]):
                        raise DataPrepError(f"{where}: column {column!r}: file not found: {extra[column]}")
            sources.append(Source(path=path, group=group, assembly=assembly,
                                  species=(row.get("species") or "").strip(), line=line_no, **extra))
    if not sources:
        raise DataPrepError(f"{tsv_path}: no rows; add one line per FASTA file")
    return sources


def check_distinct(sources: List[Source], tsv_path: str, sha256s: Optional[Sequence[str]] = None) -> None:
    """Refuse one file listed twice (by its real path) or, given the files' checksums, two rows with identical
    contents (e.g. the same assembly as human and as non-human): its tokens would silently count twice."""
    keys = [(os.path.realpath(s.path), "the same file") for s in sources]
    if sha256s is not None:
        keys = [(sha, f"files with identical contents, sha256 {sha[:16]}...") for sha in sha256s]
    first = {}
    for source, (key, what) in zip(sources, keys):
        other = first.setdefault(key, source)
        if other is not source:
            raise DataPrepError(
                f"{tsv_path}: lines {other.line} and {source.line} are {what} ({other.path} as {other.group} "
                f"{other.assembly!r}; {source.path} as {source.group} {source.assembly!r}), so its tokens would "
                f"count twice; remove one row, or pass --allow-duplicate-sources if that is intended")
