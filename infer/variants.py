"""Zero-shot variant effect: log P(alt window) - log P(ref window), the window centred on the variant.

The reference window holds `window` bases of the reference starting `window // 2` bases before the variant (clipped
at the chromosome ends); the alternative window is the same left flank, ALT instead of REF, and the same right
flank, so an indel changes its length by len(ALT) - len(REF). Both are scored from an EOD, like any sequence.

Bad lines (malformed, a chromosome missing from the FASTA, REF not matching the FASTA, a symbolic or too long
allele) are reported with their line number; `on_error="skip"` reports and goes on, "stop" raises at the first.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Iterator, List, Tuple

from .sequences import InputError, open_text

BASES = set("ACGTN")


@dataclass(frozen=True)
class Variant:
    line: int
    chrom: str
    pos: int      # 1-based, as in the VCF
    ref: str
    alt: str


def parse_vcf(path: str, report: Callable[[str], None]) -> Iterator[Variant]:
    """Variants of a VCF (one per ALT allele); a malformed line goes to `report`."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            where = f"{path} line {number}"
            if len(fields) < 5:
                report(f"{where}: malformed VCF line ({len(fields)} tab-separated fields, need at least 5: "
                       f"CHROM POS ID REF ALT)")
                continue
            chrom, pos, _, ref, alts = fields[:5]
            if not pos.isdigit() or int(pos) < 1:
                report(f"{where}: POS {pos!r} is not a positive integer")
                continue
            ref = ref.upper()
            if not ref or set(ref) - BASES:
                report(f"{where}: REF {fields[3]!r} is not a DNA allele")
                continue
            for alt in alts.split(","):
                if not alt or set(alt.upper()) - BASES:
                    report(f"{where}: ALT {alt!r} is not supported (only SNVs and short indels spelled out in "
                           f"A/C/G/T/N; symbolic alleles such as <DEL> or '*' are not scored)")
                    continue
                yield Variant(number, chrom, int(pos), ref, alt.upper())


class Reference:
    """Random access to a FASTA (pyfaidx; writes a .fai index beside it on first use)."""

    def __init__(self, path: str):
        import pyfaidx

        self.path = path
        self.fasta = pyfaidx.Fasta(path, as_raw=True, sequence_always_upper=True, rebuild=False)

    def has(self, chrom: str) -> bool:
        return chrom in self.fasta

    def length(self, chrom: str) -> int:
        return len(self.fasta[chrom])

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """Bases [start, end) 0-based."""
        return str(self.fasta[chrom][start:end])


def variant_windows(variant: Variant, reference: Reference, window: int) -> Tuple[str, str]:
    """(ref window, alt window), or InputError when the variant does not fit the reference or the window."""
    where = f"line {variant.line} ({variant.chrom}:{variant.pos} {variant.ref}>{variant.alt})"
    if not reference.has(variant.chrom):
        raise InputError(f"{where}: chromosome {variant.chrom!r} is not in {reference.path}")
    start0 = variant.pos - 1
    end0 = start0 + len(variant.ref)
    if end0 > reference.length(variant.chrom):
        raise InputError(f"{where}: the allele ends past {variant.chrom}'s length {reference.length(variant.chrom)}")
    actual = reference.fetch(variant.chrom, start0, end0)
    if actual != variant.ref:
        raise InputError(f"{where}: REF {variant.ref} does not match the reference {actual!r} at "
                         f"{variant.chrom}:{variant.pos} in {reference.path} (wrong assembly or coordinates?)")
    longest = max(len(variant.ref), len(variant.alt))
    if longest > window // 2:
        raise InputError(f"{where}: allele of {longest} bases does not fit a {window}-base window centred on it "
                         f"(only SNVs and short indels are scored); use a larger --window")
    left_start = max(0, start0 - window // 2)
    left = reference.fetch(variant.chrom, left_start, start0)
    right_len = window - len(left) - len(variant.ref)
    right = reference.fetch(variant.chrom, end0, end0 + max(right_len, 0))
    return left + variant.ref + right, left + variant.alt + right


def collect_windows(vcf: str, reference: Reference, window: int, on_error: str
                    ) -> Tuple[List[Variant], List[Tuple[str, str]], int]:
    """(variants, their (ref, alt) windows, number of bad lines skipped)."""
    bad = [0]

    def report(message: str) -> None:
        if on_error == "stop":
            raise InputError(f"{message}; fix the input or pass --on-error skip")
        bad[0] += 1
        print(f"nucleotron score: skipped {message}", file=sys.stderr)

    variants, pairs = [], []
    for variant in parse_vcf(vcf, report):
        try:
            pairs.append(variant_windows(variant, reference, window))
            variants.append(variant)
        except InputError as err:
            report(f"{vcf} {err}")
    return variants, pairs, bad[0]
