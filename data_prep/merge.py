"""Finish a pack directory from the work dir: each pack's data file moves in (a rename: workers already wrote the
documents in place), then its .idx and .docs.npy, contigs.tsv, the counts, the blend of the declared group shares
(1:1 human:nonhuman by default, see groups.py), the files' sizes and checksums (verify.py) and manifest.json."""
from __future__ import annotations

import os
import shutil
from typing import Dict, List, Tuple

import numpy as np

from . import tokens as tk
from .chroms import SPLITS, SplitRule
from .errors import DataPrepError
from .fragments import FragmentRules
from .layout import PackLayout
from .manifest import blend_weights, write_manifest
from .groups import DEFAULT, SETTING, GroupWeights
from .sources import Source
from .verify import integrity_entry
from .writer import write_index

DOC_DTYPE = np.dtype([("source", "<u2"), ("record", "<u4"), ("start", "<i8"), ("length", "<i4"), ("reverse", "u1")])


def build_pack(built: str, sources: List[Source], scans: List[dict], chromosomes: List[List[Tuple[str, str]]],
               unsplit: List[str], layout: PackLayout, done: Dict[Tuple[int, int], dict], rules: FragmentRules,
               split_rule: SplitRule, gene_window, soft_mask: bool, keep_work: bool,
               weights: GroupWeights = DEFAULT) -> dict:
    """Write the pack into `built`; `chromosomes[i][k]` is record k of source i's (chromosome, split); `unsplit`
    lists assemblies that went wholly to train for want of chromosome names (see leakage.py); `weights` are the
    groups' token shares (the manifest records them when declared)."""
    counts = {a: {"group": g, "splits": {}} for a, g in dict((s.assembly, s.group) for s in sources).items()}
    datasets, group_tokens, written = {}, {}, []
    for split in SPLITS:
        for group in weights.groups:
            prefix = f"{group}_{split}"
            if prefix not in layout.packs:
                continue
            tables = []
            for i, k in layout.packs[prefix]:
                frags = np.load(layout.record_prefix((i, k)) + ".frag.npy")
                docs = np.zeros(len(frags), dtype=DOC_DTYPE)
                docs["source"], docs["record"] = i, k
                for name in ("start", "length", "reverse"):
                    docs[name] = frags[name]
                tables.append(docs)
                entry = counts[sources[i].assembly]["splits"].setdefault(
                    split, {"documents": 0, "bases": 0, "tokens": 0})
                entry["documents"] += len(frags)
                entry["bases"] += int(frags["length"].sum())
                entry["tokens"] += int(frags["length"].sum()) + len(frags)
            docs = np.concatenate(tables)
            lengths = docs["length"].astype(np.int64) + 1
            _adopt_data(layout.data_path(prefix), os.path.join(built, prefix + ".bin"), int(lengths.sum()),
                        keep_work)
            write_index(os.path.join(built, prefix), lengths)
            written += [prefix + ".bin", prefix + ".idx"]
            np.save(os.path.join(built, prefix + ".docs.npy"), docs)
            tokens = int(lengths.sum())
            if tokens:
                datasets[prefix] = {"prefix": prefix, "group": group, "split": split, "documents": len(docs),
                                    "bases": int(docs["length"].sum()), "tokens": tokens}
                group_tokens.setdefault(split, {})[group] = tokens
    _write_contigs(os.path.join(built, "contigs.tsv"), sources, scans, chromosomes, done)
    content = {
        "created_by": "nucleotron data prep",
        "seq_len": rules.seq_len,
        "dtype": "uint8",
        "vocab": dict(tk.VOCAB), "vocab_size": tk.VOCAB_SIZE, "eod": tk.EOD, "pad": tk.PAD,
        "documents": "each fragment is one document: <= seq_len bases then one EOD token; megatron's GPTDataset "
                     "concatenates documents and cuts samples of seq_len + 1 tokens across EOD boundaries; "
                     "PREFIX.docs.npy gives each document's source, record, start, length and strand",
        "fragments": {"seq_len": rules.seq_len, "min_len": rules.min_len, "split_n_run": rules.n_run,
                      "max_n_fraction": rules.max_n_fraction,
                      "gene_window": gene_window, "upper_case": True,
                      "iupac_to_n": tk.IUPAC_AMBIGUOUS},
        "soft_mask": {"bit": tk.SOFT_MASK_BIT,
                      "meaning": "a soft-masked (lower-case) base is stored as its id | bit; strip it (id & "
                                 f"{tk.ID_BITS}) before use"} if soft_mask else None,
        "strand": {"policy": "random" if rules.rc_probability > 0 else "forward",
                   "rc_probability": rules.rc_probability, "seed": rules.seed,
                   "rule": "per contig, numpy default_rng([seed, blake2b-64(assembly NUL contig)]) draws one "
                           "u~U[0,1) per cut fragment in contig order; reverse complement when u < rc_probability"},
        "splits": _splits_entry(split_rule, unsplit),
        "sources": [_source_entry(s, scan) for s, scan in zip(sources, scans)],
        "datasets": datasets,
        "counts": {"by_assembly": counts, "by_group": _by_group(datasets)},
        "blend": _blend(datasets, group_tokens, split_rule, weights),
        "integrity": integrity_entry(built, written),
    }
    if weights.declared:     # the default pack's manifest stays byte-identical to earlier versions'
        content["group_weights"] = dict(weights.weights)
    return write_manifest(built, content)


def _splits_entry(split_rule: SplitRule, unsplit: List[str]) -> dict:
    entry = {"valid": split_rule.valid, "test": split_rule.test, "train": "every other chromosome",
             "normalisation": "see nucleotron.data_prep.chroms; per record in contigs.tsv"}
    if unsplit:
        entry["unsplit_assemblies"] = unsplit
    return entry


def _adopt_data(work_path: str, pack_path: str, size: int, keep_work: bool) -> None:
    """Move (or, to keep the work dir resumable, copy) a finished data file into the pack."""
    on_disk = os.path.getsize(work_path)
    if on_disk < size:
        raise DataPrepError(f"{work_path}: holds {on_disk} bytes but its finished records need {size}; the work dir "
                            f"is damaged: delete it and re-run")
    if on_disk > size:
        os.truncate(work_path, size)
    if not keep_work:
        try:
            os.replace(work_path, pack_path)
            return
        except OSError:                       # --work-dir on another file system
            pass
    shutil.copyfile(work_path, pack_path)


def _write_contigs(path: str, sources, scans, chromosomes, done) -> None:
    with open(path, "w") as contigs:
        contigs.write("assembly\trecord\tchromosome\tsplit\tbases\tdocuments\n")
        for i, (source, scan) in enumerate(zip(sources, scans)):
            for k, rec in enumerate(scan["records"]):
                chrom, split = chromosomes[i][k]
                marker = done[(i, k)]
                row = (source.assembly, rec[0], chrom, split, marker["bases"], marker["documents"])
                contigs.write("\t".join(map(str, row)) + "\n")


def _by_group(datasets: dict) -> dict:
    by_group = {}
    for d in datasets.values():
        by_group.setdefault(d["group"], {})[d["split"]] = {k: d[k] for k in ("documents", "bases", "tokens")}
    return by_group


def _blend(datasets: dict, group_tokens: dict, split_rule: SplitRule, weights: GroupWeights) -> dict:
    groups = list(weights.groups)
    blend = {}
    for split in SPLITS:
        present = group_tokens.get(split, {})
        if not present and split != "train" and not (split_rule.valid if split == "valid" else split_rule.test):
            continue
        missing = [g for g in groups if g not in present]
        if missing:
            asked = {"train": "all chromosomes not held out", "valid": split_rule.valid, "test": split_rule.test}[split]
            mix = (f"the declared mix ({SETTING} {weights.describe()})" if weights.declared
                   else "a 1:1 human:non-human mix")
            raise DataPrepError(f"split {split!r} ({asked}) has no {missing[0]} tokens after filtering, so {mix} "
                                f"is impossible; check the chromosome names (see contigs naming in "
                                f"configs/data/README.md), --max-n-fraction, --min-len or --gene-window")
        names = [f"{g}_{split}" for g in groups]
        dataset_weights = blend_weights({n: datasets[n]["tokens"] for n in names},
                                        {n: datasets[n]["group"] for n in names}, weights.weights)
        share = {g: sum(dataset_weights[n] for n in names if datasets[n]["group"] == g) for g in groups}
        blend[split] = {"prefixes": names, "weights": [dataset_weights[n] for n in names], "groups": groups,
                        "expected_token_share": share, "on_disk_tokens": present,
                        "statement": _statement(share, present, weights)}
    return blend


def _statement(share: Dict[str, float], present: Dict[str, int], weights: GroupWeights) -> str:
    """The blend in words: the default 1:1 pack keeps its original sentence."""
    if list(share) == ["human", "nonhuman"] and share["human"] == share["nonhuman"]:
        ratio = present["human"] / present["nonhuman"]
        return (f"expected human:non-human token ratio {share['human'] / share['nonhuman']:.6f}:1 under the blend; "
                f"on disk {ratio:.6f}:1 (the blend repeats the smaller group {max(ratio, 1 / ratio):.3f}x as often "
                f"per token)")
    total = sum(present.values())
    expected = ", ".join(f"{g} {s:.6f}" for g, s in share.items())
    on_disk = ", ".join(f"{g} {present[g] / total:.6f}" for g in share)
    return (f"expected token shares under the blend: {expected} (the declared weights"
            f"{'' if weights.declared else ', default'}); on disk: {on_disk} (a group is drawn share / on-disk "
            f"share times as often per token)")


def _source_entry(source: Source, scan: dict) -> dict:
    entry = {"path": source.path, "assembly": source.assembly, "group": source.group, "species": source.species,
             "sha256": scan["sha256"], "bytes": scan["bytes"], "records": len(scan["records"])}
    if source.annotation:
        entry.update(annotation=source.annotation, annotation_sha256=scan["annotation_sha256"])
    if source.chrom_map:
        entry["chrom_map"] = source.chrom_map
    return entry
