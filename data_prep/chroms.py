"""Chromosome names across assemblies, so one --valid-chroms/--test-chroms list splits every assembly the same way.

A record's chromosome is, in order:
  1. the value given for it in the source's chrom_map file (2 columns: record name, chromosome), else
  2. the 'chromosome X' phrase of an NCBI header ('>NC_000020.11 Homo sapiens chromosome 20, GRCh38.p14 ...'), else
  3. the record name, with any PanSN prefix 'SAMPLE#HAP#' dropped.
The result is normalised: a leading 'chr' (any case) is dropped, anything from the first '_' on is dropped
(chr20_KI270869v1_random -> 20) and letters are upper-cased, so 'chr20', 'Chr20', '20', 'HG002#1#chr20' and an NCBI
'chromosome 20' record all become '20'; 'M' and 'MT' both become 'MT'.
Records whose chromosome is in neither list (unplaced contigs included) go to train.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Optional

from .errors import DataPrepError

_NCBI_CHROMOSOME = re.compile(r"\bchromosome[: ]+([A-Za-z0-9]+)")
SPLITS = ("train", "valid", "test")


def normalise(name: str) -> str:
    name = name.strip()
    if name[:3].lower() == "chr":
        name = name[3:]
    name = name.split("_", 1)[0].upper()
    return "MT" if name == "M" else name


def chromosome_of(name: str, description: str, chrom_map: Optional[Dict[str, str]] = None) -> str:
    if chrom_map and name in chrom_map:
        return normalise(chrom_map[name])
    match = _NCBI_CHROMOSOME.search(description)
    if match:
        return normalise(match.group(1))
    return normalise(name.rsplit("#", 1)[-1])


def read_chrom_map(path: str) -> Dict[str, str]:
    mapping = {}
    with open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise DataPrepError(f"{path} line {line_no}: expected 2 tab-separated columns "
                                    f"(record name, chromosome), found {len(fields)}")
            mapping[fields[0]] = fields[1]
    return mapping


class SplitRule:
    """Maps a normalised chromosome name to 'train', 'valid' or 'test'."""

    def __init__(self, valid: Iterable[str] = (), test: Iterable[str] = ()):
        self.valid = sorted({normalise(c) for c in valid if c.strip()})
        self.test = sorted({normalise(c) for c in test if c.strip()})
        both = set(self.valid) & set(self.test)
        if both:
            raise DataPrepError(f"chromosome(s) {sorted(both)} are in both --valid-chroms and --test-chroms")

    def split_of(self, chromosome: str) -> str:
        if chromosome in self.valid:
            return "valid"
        if chromosome in self.test:
            return "test"
        return "train"
