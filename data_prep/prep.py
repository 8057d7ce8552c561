"""`nucleotron data prep`: sources -> per-record shards (parallel, resumable) -> packs per group/split + manifest."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import tokens as tk
from .chroms import SPLITS, SplitRule, chromosome_of, read_chrom_map
from .errors import DataPrepError
from .fasta import Record, index_fasta, is_gzip, read_record
from .fragments import FragmentRules, cut_arrays, write_documents
from .genes import read_gene_intervals
from .manifest import blend_weights, write_manifest
from .sources import GROUPS, Source, read_sources
from .workdir import building_dir, publish, read_json, slug, write_json_atomic
from .writer import IndexedDatasetWriter

SHARD_VERSION = 1
FRAGMENT_DTYPE = np.dtype([("start", "<i8"), ("length", "<i4"), ("reverse", "u1")])
DOC_DTYPE = np.dtype([("source", "<u2"), ("record", "<u4"), ("start", "<i8"), ("length", "<i4"), ("reverse", "u1")])


@dataclass(frozen=True)
class PrepOptions:
    sources: str
    seq_len: int
    out: str
    min_len: Optional[int] = None          # default seq_len // 4
    n_run: int = 100
    max_n_fraction: float = 0.1
    rc_probability: float = 0.0
    seed: int = 1234
    gene_window: Optional[int] = None      # None: no gene filter
    valid_chroms: Sequence[str] = ()
    test_chroms: Sequence[str] = ()
    workers: int = 0                       # 0: all cores
    work_dir: Optional[str] = None         # default: OUT.work beside OUT
    overwrite: bool = False
    keep_work: bool = False
    progress: bool = True


@dataclass(frozen=True)
class RecordTask:
    source: int
    record: int
    assembly: str
    plain_path: str
    display_path: str
    rec: Record
    shard: str                             # path prefix of the shard files
    genes: Optional[tuple]


def rules_of(opts: PrepOptions) -> FragmentRules:
    min_len = opts.seq_len // 4 if opts.min_len is None else opts.min_len
    if opts.seq_len < 1 or not 1 <= min_len <= opts.seq_len:
        raise DataPrepError(f"--seq-len must be >= 1 and 1 <= --min-len <= --seq-len (got {opts.seq_len}, {min_len})")
    if not 0.0 <= opts.rc_probability <= 1.0 or not 0.0 <= opts.max_n_fraction <= 1.0:
        raise DataPrepError("--rc-probability and --max-n-fraction must be in [0, 1]")
    if opts.n_run < 1:
        raise DataPrepError("--split-n-run must be >= 1")
    return FragmentRules(opts.seq_len, min_len, opts.n_run, opts.max_n_fraction, opts.rc_probability, opts.seed)


# ---------------------------------------------------------------- stage 1: index each source file (cached)

def _index_source(args) -> dict:
    i, source, src_dir, gene_window = args
    os.makedirs(src_dir, exist_ok=True)
    stat = os.stat(source.path)
    key = {"path": source.path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "annotation": source.annotation, "gene_window": gene_window}
    cache = os.path.join(src_dir, "scan.json")
    if os.path.exists(cache):
        scan = read_json(cache)
        if scan["key"] == key and os.path.exists(scan["plain_path"]):
            return scan
        shutil.rmtree(src_dir)
        os.makedirs(src_dir)
    plain_out = os.path.join(src_dir, "decompressed.fa") if is_gzip(source.path) else None
    index = index_fasta(source.path, plain_out)
    scan = {"key": key, "plain_path": index.plain_path, "sha256": index.sha256, "bytes": index.size,
            "records": [[r.name, r.description, r.seq_start, r.seq_end, r.bases] for r in index.records]}
    if source.annotation:
        genes = read_gene_intervals(source.annotation, gene_window)
        names = {r.name for r in index.records}
        if not names & set(genes):
            raise DataPrepError(f"{source.annotation}: no sequence id matches a record of {source.path} "
                                f"(e.g. {sorted(genes)[:3]} vs {sorted(names)[:3]}); the annotation must use the "
                                f"FASTA's record names")
        scan["annotation_sha256"] = _sha256(source.annotation)
        arrays = {}
        for k, record in enumerate(index.records):    # keyed by record number: names may hold any character
            if record.name in genes:
                arrays[f"start{k}"], arrays[f"end{k}"] = genes[record.name]
        np.savez(os.path.join(src_dir, "genes.npz"), **arrays)
    write_json_atomic(cache, scan)
    return scan


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


# ---------------------------------------------------------------- stage 2: one record -> one shard

def _process_record(args) -> int:
    task, rules = args
    raw = read_record(task.plain_path, task.rec)
    tokens = tk.encode(raw)
    pos = tokens.find(tk.ILLEGAL_BYTE)
    if pos != -1:
        char = raw.translate(None, b"\r\n")[pos:pos + 1].decode("latin-1")
        raise DataPrepError(f"{task.display_path}: record {task.rec.name!r}: illegal character "
                            f"{char!r} at base {pos + 1} (1-based); allowed are ACGTN, the IUPAC codes "
                            f"{tk.IUPAC_AMBIGUOUS} (stored as N) and their lower case; fix or remove the record")
    del raw
    starts, lengths, reverse = cut_arrays(tokens, rules, task.assembly, task.rec.name, task.genes)
    table = np.zeros(len(starts), dtype=FRAGMENT_DTYPE)
    table["start"], table["length"], table["reverse"] = starts, lengths, reverse
    fd = os.open(task.shard + ".bin.part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        write_documents(fd, tokens, starts, lengths, reverse)
    finally:
        os.close(fd)
    np.save(task.shard + ".frag.npy", table)
    os.replace(task.shard + ".bin.part", task.shard + ".bin")
    write_json_atomic(task.shard + ".done", {"version": SHARD_VERSION, "documents": len(starts)})
    return task.rec.bases


def _pool_map(fn, items, workers: int, ordered: bool):
    if workers == 1:
        yield from map(fn, items)
        return
    with get_context("fork").Pool(workers) as pool:
        results = pool.imap(fn, items) if ordered else pool.imap_unordered(fn, items)
        yield from results


# ---------------------------------------------------------------- the whole run

def run_prep(opts: PrepOptions) -> dict:
    out = os.path.abspath(opts.out)
    if os.path.exists(out) and not opts.overwrite:
        raise DataPrepError(f"{out} already exists; pass --overwrite to replace it (the swap is atomic) "
                            f"or choose another --out")
    rules = rules_of(opts)
    split_rule = SplitRule(opts.valid_chroms, opts.test_chroms)
    sources = read_sources(opts.sources)
    if opts.gene_window is not None:
        missing = [s.path for s in sources if not s.annotation]
        if missing:
            raise DataPrepError(f"--gene-window needs an 'annotation' column value for every source; missing for "
                                f"{missing[0]} (and {len(missing) - 1} more)")
    chrom_maps = {i: read_chrom_map(s.chrom_map) for i, s in enumerate(sources) if s.chrom_map}
    workers = opts.workers or os.cpu_count() or 1
    fingerprint = hashlib.sha256(json.dumps([SHARD_VERSION, asdict(rules), opts.gene_window]).encode()).hexdigest()
    job_dir = os.path.join(os.path.abspath(opts.work_dir or out + ".work"), fingerprint[:16])
    src_dirs = [os.path.join(job_dir, f"src{i:04d}-{slug(s.assembly)}") for i, s in enumerate(sources)]
    gene_window = opts.gene_window if opts.gene_window is not None else 0

    _log(f"indexing {len(sources)} source file(s) with {workers} worker(s); work dir {job_dir}")
    scans = list(_pool_map(_index_source, [(i, s, src_dirs[i], gene_window) for i, s in enumerate(sources)],
                           min(workers, len(sources)), ordered=True))
    _check_unique_names(sources, scans)

    tasks, total = [], 0
    for i, (source, scan) in enumerate(zip(sources, scans)):
        genes = np.load(os.path.join(src_dirs[i], "genes.npz")) if source.annotation else None
        for k, rec in enumerate(scan["records"]):
            shard = os.path.join(src_dirs[i], f"rec{k:07d}")
            if os.path.exists(shard + ".done"):
                continue
            record = Record(*rec)
            intervals = None
            if genes is not None:
                intervals = (genes[f"start{k}"], genes[f"end{k}"]) if f"start{k}" in genes.files else \
                    (np.zeros(0, np.int64), np.zeros(0, np.int64))
            tasks.append(RecordTask(i, k, source.assembly, scan["plain_path"], source.path, record, shard, intervals))
            total += record.bases
    tasks.sort(key=lambda t: -t.rec.bases)     # largest first keeps all workers busy to the end
    _log(f"{len(tasks)} record(s) to cut ({total:,} bases); "
         f"{sum(len(s['records']) for s in scans) - len(tasks)} already done")
    bar = _progress(total, opts.progress)
    for bases in _pool_map(_process_record, [(t, rules) for t in tasks], workers, ordered=False):
        bar.update(bases)
    bar.close()

    built = building_dir(out)
    if os.path.exists(built):
        shutil.rmtree(built)
    os.makedirs(built)
    try:
        manifest = _merge(sources, scans, src_dirs, chrom_maps, split_rule, rules, opts, built)
        publish(built, out)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    if not opts.keep_work:
        shutil.rmtree(job_dir, ignore_errors=True)
        parent = os.path.dirname(job_dir)
        if os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
    _log(f"wrote {out}")
    return manifest


def _check_unique_names(sources: List[Source], scans: List[dict]) -> None:
    seen: Dict[tuple, str] = {}
    for source, scan in zip(sources, scans):
        for rec in scan["records"]:
            first = seen.setdefault((source.assembly, rec[0]), source.path)
            if first != source.path:
                raise DataPrepError(f"{source.path}: duplicate record name {rec[0]!r} in assembly "
                                    f"{source.assembly!r} (also in {first}); names must be unique within an assembly")


def _merge(sources, scans, src_dirs, chrom_maps, split_rule, rules, opts, built) -> dict:
    """Concatenate shards in source/record order into one indexed dataset per group and split."""
    counts = {a: {"group": g, "splits": {}} for a, g in dict((s.assembly, s.group) for s in sources).items()}
    contig_rows, placement = [], {}
    for i, (source, scan) in enumerate(zip(sources, scans)):
        for k, rec in enumerate(scan["records"]):
            chrom = chromosome_of(rec[0], rec[1], chrom_maps.get(i))
            split = split_rule.split_of(chrom)
            placement.setdefault((source.group, split), []).append((i, k))
            contig_rows.append((source.assembly, rec[0], chrom, split, rec[4]))
    datasets, group_tokens = {}, {}
    with open(os.path.join(built, "contigs.tsv"), "w") as contigs:
        contigs.write("assembly\trecord\tchromosome\tsplit\tbases\tdocuments\n")
        doc_count = {}
        for split in SPLITS:
            for group in GROUPS:
                members = placement.get((group, split), [])
                if not members:
                    continue
                prefix = f"{group}_{split}"
                writer = IndexedDatasetWriter(os.path.join(built, prefix))
                tables = []
                for i, k in members:
                    shard = os.path.join(src_dirs[i], f"rec{k:07d}")
                    frags = np.load(shard + ".frag.npy")
                    writer.add_shard(shard + ".bin", frags["length"].astype(np.int64) + 1)
                    docs = np.zeros(len(frags), dtype=DOC_DTYPE)
                    docs["source"], docs["record"] = i, k
                    for name in ("start", "length", "reverse"):
                        docs[name] = frags[name]
                    tables.append(docs)
                    doc_count[(i, k)] = len(frags)
                    entry = counts[sources[i].assembly]["splits"].setdefault(
                        split, {"documents": 0, "bases": 0, "tokens": 0})
                    entry["documents"] += len(frags)
                    entry["bases"] += int(frags["length"].sum())
                    entry["tokens"] += int(frags["length"].sum()) + len(frags)
                writer.finalize()
                docs = np.concatenate(tables)
                np.save(os.path.join(built, prefix + ".docs.npy"), docs)
                tokens = int(docs["length"].sum()) + len(docs)
                if tokens:
                    datasets[prefix] = {"prefix": prefix, "group": group, "split": split, "documents": len(docs),
                                        "bases": int(docs["length"].sum()), "tokens": tokens}
                    group_tokens.setdefault(split, {})[group] = tokens
        for (i, k), row in zip(((i, k) for i, s in enumerate(scans) for k in range(len(s["records"]))), contig_rows):
            contigs.write("\t".join(map(str, row + (doc_count.get((i, k), 0),))) + "\n")
    blend = {}
    for split in SPLITS:
        present = group_tokens.get(split, {})
        if not present and split != "train" and not (split_rule.valid if split == "valid" else split_rule.test):
            continue
        missing = [g for g in GROUPS if g not in present]
        if missing:
            asked = {"train": "all chromosomes not held out", "valid": split_rule.valid, "test": split_rule.test}[split]
            raise DataPrepError(f"split {split!r} ({asked}) has no {missing[0]} tokens after filtering, so a 1:1 "
                                f"human:non-human mix is impossible; check the chromosome names (see contigs "
                                f"naming in configs/data/README.md), --max-n-fraction, --min-len or --gene-window")
        names = [f"{g}_{split}" for g in GROUPS]
        weights = blend_weights({n: datasets[n]["tokens"] for n in names}, {n: datasets[n]["group"] for n in names})
        share = {g: sum(weights[n] for n in names if datasets[n]["group"] == g) for g in GROUPS}
        ratio = present["human"] / present["nonhuman"]
        blend[split] = {"prefixes": names, "weights": [weights[n] for n in names], "groups": list(GROUPS),
                        "expected_token_share": share, "on_disk_tokens": present,
                        "statement": f"expected human:non-human token ratio {share['human'] / share['nonhuman']:.6f}"
                                     f":1 under the blend; on disk {ratio:.6f}:1 (the blend repeats the smaller "
                                     f"group {max(ratio, 1 / ratio):.3f}x as often per token)"}
    by_group = {}
    for d in datasets.values():
        by_group.setdefault(d["group"], {})[d["split"]] = {k: d[k] for k in ("documents", "bases", "tokens")}
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
                      "gene_window": opts.gene_window, "upper_case": True,
                      "iupac_to_n": tk.IUPAC_AMBIGUOUS},
        "strand": {"policy": "random" if rules.rc_probability > 0 else "forward",
                   "rc_probability": rules.rc_probability, "seed": rules.seed,
                   "rule": "per contig, numpy default_rng([seed, blake2b-64(assembly NUL contig)]) draws one "
                           "u~U[0,1) per cut fragment in contig order; reverse complement when u < rc_probability"},
        "splits": {"valid": split_rule.valid, "test": split_rule.test, "train": "every other chromosome",
                   "normalisation": "see nucleotron.data_prep.chroms; per record in contigs.tsv"},
        "sources": [_source_entry(s, scan) for s, scan in zip(sources, scans)],
        "datasets": datasets,
        "counts": {"by_assembly": counts, "by_group": by_group},
        "blend": blend,
    }
    write_manifest(built, content)
    return {"format_version": 1, **content}


def _source_entry(source: Source, scan: dict) -> dict:
    entry = {"path": source.path, "assembly": source.assembly, "group": source.group, "species": source.species,
             "sha256": scan["sha256"], "bytes": scan["bytes"], "records": len(scan["records"])}
    if source.annotation:
        entry.update(annotation=source.annotation, annotation_sha256=scan["annotation_sha256"])
    if source.chrom_map:
        entry["chrom_map"] = source.chrom_map
    return entry


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit="b", unit_scale=True, desc="cutting", file=sys.stderr, disable=not enabled,
                smoothing=0.05)


def _log(message: str) -> None:
    print(f"nucleotron data prep: {message}", file=sys.stderr)
