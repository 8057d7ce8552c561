"""Chromosome names across assemblies, so one --valid-chroms/--test-chroms list splits every assembly the same way.

A record's chromosome is, in order:
  1. the value given for it in the source's chrom_map file (2 columns: record name, chromosome), else
  2. what its header's description says: Ensembl 'chromosome:GRCh38:7:...', NCBI/GenBank '... chromosome 7, ...'
     (unlocalized scaffolds and patches say 'chromosome 7 unlocalized genomic scaffold' and so belong to 7),
     '... mitochondrion, complete genome' (MT), '... unplaced genomic scaffold' (UN), else
  3. the record name, with any PanSN prefix 'SAMPLE#HAP#' dropped.
The result is normalised: a leading 'chr' (any case) is dropped, and for such UCSC names anything from the first '_'
too (chr20_KI270869v1_random -> 20, chrUn_KI270302v1 -> UN); letters are upper-cased; M, chrM and chrMT become MT.
So 'chr20', 'Chr20', '20', 'HG002#1#chr20' and an NCBI 'chromosome 20' record all become '20'.
Records whose chromosome is in neither list (unplaced contigs included) go to train.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Optional

from .errors import DataPrepError

SPLITS = ("train", "valid", "test")
MITOCHONDRION = "MT"
UNPLACED = "UN"

_ENSEMBL_CHROMOSOME = re.compile(r"\bchromosome:[^:\s]*:([^:\s]+):")
_NCBI_CHROMOSOME = re.compile(r"\bchromosome\s+([A-Za-z0-9]+)\b", re.IGNORECASE)
_MITOCHONDRION = re.compile(r"\bmitochondri(?:on|al)\b", re.IGNORECASE)
_UNPLACED = re.compile(r"\bunplaced\b", re.IGNORECASE)
_NUCLEAR = re.compile(r"\d{1,2}[A-Z]?|X|Y")     # 1..22, X, Y; ape 2A/2B


def normalise(name: str) -> str:
    name = name.strip()
    if name[:3].lower() == "chr":
        name = name[3:].split("_", 1)[0]
    name = name.upper()
    return MITOCHONDRION if name == "M" else name


def chromosome_of(name: str, description: str, chrom_map: Optional[Dict[str, str]] = None) -> str:
    if chrom_map and name in chrom_map:
        return normalise(chrom_map[name])
    for pattern in (_ENSEMBL_CHROMOSOME, _NCBI_CHROMOSOME):
        match = pattern.search(description)
        if match:
            return normalise(match.group(1))
    if _MITOCHONDRION.search(description):
        return MITOCHONDRION
    if _UNPLACED.search(description):
        return UNPLACED
    return normalise(name.rsplit("#", 1)[-1])


def is_nuclear_chromosome(chromosome: str) -> bool:
    """Whether a normalised name is an autosome or sex chromosome (not MT, not an unplaced or unnamed contig)."""
    return _NUCLEAR.fullmatch(chromosome) is not None


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

    @property
    def holds_out(self) -> bool:
        return bool(self.valid or self.test)

    def split_of(self, chromosome: str) -> str:
        if chromosome in self.valid:
            return "valid"
        if chromosome in self.test:
            return "test"
        return "train"
