"""Stop before a chromosome split silently leaks: a human assembly whose records carry no chromosome names.

With --valid-chroms/--test-chroms set, a record goes to valid/test only if its name says which chromosome it is.
HPRC contigs ('HG00438#1#JAHBCB010000001.1') say nothing, so without a chrom_map every one of them lands in train,
including the copies of the held-out chromosomes; as HPRC haplotypes are ~99.9% identical to each other and to the
references, validation would then measure memorisation. So a human assembly in which no record maps to a nuclear
chromosome is an error, unless the user opts in with --allow-unsplit-human (then the manifest lists it). Non-human
assemblies are often scaffold-level with no chromosome assignment at all; for them we only log a note.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from .chroms import MITOCHONDRION, SplitRule, is_nuclear_chromosome
from .errors import DataPrepError
from .sources import Source


def unsplit_assemblies(sources: List[Source], scans: List[dict], chromosomes: List[List[Tuple[str, str]]],
                       split_rule: SplitRule, sources_path: str, allow_human: bool,
                       log: Callable[[str], None]) -> List[str]:
    """Assemblies none of whose records maps to a nuclear chromosome (MT-only assemblies are fine: nothing is
    unnamed), when chromosomes are held out; raises for a human one unless `allow_human`. Returns those let through."""
    if not split_rule.holds_out:
        return []
    files: Dict[str, List[int]] = {}
    for i, source in enumerate(sources):
        files.setdefault(source.assembly, []).append(i)
    unsplit = []
    for assembly, members in files.items():
        names = [(scans[i]["records"][k][0], chrom) for i in members for k, (chrom, _) in enumerate(chromosomes[i])]
        if any(is_nuclear_chromosome(chrom) for _, chrom in names):
            continue
        unnamed = [(name, chrom) for name, chrom in names if chrom != MITOCHONDRION]
        if not unnamed:
            continue
        group, paths = sources[members[0]].group, ", ".join(sources[i].path for i in members)
        example = ", ".join(f"{name!r} -> {chrom!r}" for name, chrom in unnamed[:2])
        if group == "human" and not allow_human:
            raise DataPrepError(
                f"human assembly {assembly!r} ({paths}): none of its {len(names)} record(s) maps to a chromosome "
                f"(e.g. {example}), so all of them would go to train while --valid-chroms/--test-chroms hold those "
                f"chromosomes out: held-out sequence would leak into train. Add a 'chrom_map' column for it in "
                f"{sources_path} (a 2-column TSV: record name, chromosome), or pass --allow-unsplit-human to put "
                f"such assemblies entirely in train (the manifest then lists them)")
        log(f"note: {group} assembly {assembly!r} has no record named after a chromosome (e.g. {example}); "
            f"all of it goes to train")
        unsplit.append(assembly)
    return unsplit
