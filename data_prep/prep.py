"""`nucleotron data prep`: index sources -> place records in packs -> cut records in parallel, each written in place
in its pack's data file (resumable) -> finish the packs (rename, .idx, manifest) -> publish atomically."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nucleotron.configs.cores import usable_cores

from .chroms import SPLITS, SplitRule, chromosome_of, read_chrom_map
from .errors import DataPrepError, os_error
from .fasta import Record
from .fragments import FragmentRules
from .groups import DEFAULT, GroupWeights, check_sources, declare
from .layout import PackLayout
from .leakage import unsplit_assemblies
from .lock import pack_lock, remove_dead_building_dirs
from .merge import build_pack
from .records import RECORD_VERSION, RecordTask, cut_record
from .scan import scan_source
from .sources import Source, check_distinct, read_sources
from .workdir import building_dir, check_out, publish, read_json, slug
from .workers import worker_pool


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
    soft_mask: bool = False                # keep lower case as a bit on the token (tokens.SOFT_MASK_BIT)
    valid_chroms: Sequence[str] = ()
    test_chroms: Sequence[str] = ()
    allow_unsplit_human: bool = False      # let human assemblies without chromosome names go wholly to train
    allow_duplicate_sources: bool = False  # let one file (or identical contents) appear in several rows
    group_weights: Optional[Mapping[str, float]] = None   # group -> relative token share; None: human=nonhuman=0.5
    workers: Optional[int] = None          # None: all cores
    work_dir: Optional[str] = None         # default: OUT.work beside OUT
    overwrite: bool = False
    keep_work: bool = False
    progress: bool = True


def rules_of(opts: PrepOptions) -> FragmentRules:
    min_len = opts.seq_len // 4 if opts.min_len is None else opts.min_len
    if opts.seq_len < 1 or not 1 <= min_len <= opts.seq_len:
        raise DataPrepError(f"--seq-len must be >= 1 and 1 <= --min-len <= --seq-len (got {opts.seq_len}, {min_len})")
    if not 0.0 <= opts.rc_probability <= 1.0 or not 0.0 <= opts.max_n_fraction <= 1.0:
        raise DataPrepError("--rc-probability and --max-n-fraction must be in [0, 1]")
    if opts.n_run < 1:
        raise DataPrepError("--split-n-run must be >= 1")
    return FragmentRules(opts.seq_len, min_len, opts.n_run, opts.max_n_fraction, opts.rc_probability, opts.seed)


def run_prep(opts: PrepOptions) -> dict:
    """Build the pack at opts.out under its lock (lock.py); returns the manifest."""
    out = os.path.abspath(opts.out)
    if opts.workers is not None and opts.workers < 1:
        raise DataPrepError(f"--workers {opts.workers} must be at least 1 (leave it out to use all "
                            f"{usable_cores()} usable cores)")
    rules = rules_of(opts)
    weights = DEFAULT if opts.group_weights is None else declare(opts.group_weights)
    sources = read_sources(opts.sources, weights)
    check_sources(sources, weights, opts.sources)
    inputs = [p for s in sources for p in (s.path, s.annotation, s.chrom_map) if p]
    if opts.work_dir and os.path.realpath(opts.work_dir).startswith(os.path.realpath(out) + os.sep):
        raise DataPrepError(f"--work-dir {opts.work_dir} lies inside --out {out}, which is replaced at the end; "
                            f"put it beside the pack (the default is {out}.work)")
    check_out(out, opts.overwrite, inputs)
    if not opts.allow_duplicate_sources:
        check_distinct(sources, opts.sources)
    try:
        with pack_lock(out, _log):
            check_out(out, opts.overwrite, inputs)       # again: the lock's holder may just have published
            remove_dead_building_dirs(out, _log)
            return _prep_locked(opts, out, rules, sources, inputs, weights)
    except OSError as err:        # the lock, the work dir's own files (workers name theirs, see records.py)
        raise os_error(opts.work_dir or out + ".work", err) from None


def _prep_locked(opts: PrepOptions, out: str, rules: FragmentRules, sources: List[Source], inputs,
                 weights: GroupWeights) -> dict:
    split_rule = SplitRule(opts.valid_chroms, opts.test_chroms)
    if opts.gene_window is not None:
        missing = [s.path for s in sources if not s.annotation]
        if missing:
            raise DataPrepError(f"--gene-window needs an 'annotation' column value for every source; missing for "
                                f"{missing[0]} (and {len(missing) - 1} more)")
    chrom_maps = {i: read_chrom_map(s.chrom_map) for i, s in enumerate(sources) if s.chrom_map}
    workers = opts.workers or usable_cores()
    settings = [RECORD_VERSION, asdict(rules), opts.gene_window, opts.soft_mask]
    fingerprint = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
    job_dir = os.path.join(os.path.abspath(opts.work_dir or out + ".work"), fingerprint[:16])
    src_dirs = [os.path.join(job_dir, f"src{i:04d}-{slug(s.assembly)}") for i, s in enumerate(sources)]
    gene_window = opts.gene_window if opts.gene_window is not None else 0

    _log(f"indexing {len(sources)} source file(s) with {workers} worker(s); work dir {job_dir}")
    os.makedirs(job_dir, exist_ok=True)
    with worker_pool(workers, os.path.join(job_dir, "stop")) as pool_map:
        scan_args = [(source, src_dirs[i], gene_window) for i, source in enumerate(sources)]
        scans = list(pool_map(scan_source, scan_args, ordered=True))
        if not opts.allow_duplicate_sources:
            check_distinct(sources, opts.sources, [scan["sha256"] for scan in scans])
        _check_unique_names(sources, scans)
        chromosomes = [[(chrom, split_rule.split_of(chrom))
                        for chrom in (chromosome_of(rec[0], rec[1], chrom_maps.get(i)) for rec in scan["records"])]
                       for i, scan in enumerate(scans)]
        unsplit = unsplit_assemblies(sources, scans, chromosomes, split_rule, opts.sources,
                                     opts.allow_unsplit_human, _log)
        layout = PackLayout(job_dir, _packs(sources, chromosomes, weights.groups), [scan["sha256"] for scan in scans])
        done = layout.prepare()
        tasks = _record_tasks(sources, scans, src_dirs, layout, done)
        total = sum(t.rec.seq_end - t.rec.seq_start for t in tasks)
        _log(f"{len(tasks)} record(s) to cut ({total / 1e6:,.1f} MB of sequence lines); {len(done)} already done")
        bar = _progress(total, opts.progress)
        for covered in pool_map(cut_record, [(t, rules, opts.soft_mask) for t in tasks], ordered=False):
            bar.update(covered)
        bar.close()

    built = building_dir(out)
    try:
        if os.path.exists(built):
            shutil.rmtree(built)
        os.makedirs(built)
        markers = {member: read_json(layout.record_prefix(member) + ".done") for member in layout.slots}
        manifest = build_pack(built, sources, scans, chromosomes, unsplit, layout, markers, rules, split_rule,
                              opts.gene_window, opts.soft_mask, opts.keep_work, weights)
        check_out(out, opts.overwrite, inputs)
        publish(built, out)
    except BaseException as err:
        shutil.rmtree(built, ignore_errors=True)
        if isinstance(err, OSError):
            raise os_error(built, err) from None
        raise
    if not opts.keep_work:
        shutil.rmtree(job_dir, ignore_errors=True)
        parent = os.path.dirname(job_dir)
        if os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
    _log(f"wrote {out}")
    return manifest


def _packs(sources: List[Source], chromosomes: List[List[Tuple[str, str]]],
           groups: Sequence[str]) -> Dict[str, List[Tuple[int, int]]]:
    """Pack name -> its records (source, record), in source/record order; packs in split, group order."""
    packs = {}
    for split in SPLITS:
        for group in groups:
            members = [(i, k) for i, source in enumerate(sources) if source.group == group
                       for k, (_, record_split) in enumerate(chromosomes[i]) if record_split == split]
            if members:
                packs[f"{group}_{split}"] = members
    return packs


def _record_tasks(sources, scans, src_dirs, layout: PackLayout, done) -> List[RecordTask]:
    """The records still to cut, in source/record order (the order offsets are agreed in, see layout.py)."""
    tasks = []
    for i, (source, scan) in enumerate(zip(sources, scans)):
        genes = np.load(os.path.join(src_dirs[i], "genes.npz")) if source.annotation else None
        for k, rec in enumerate(scan["records"]):
            if (i, k) in done:
                continue
            intervals = None
            if genes is not None:
                intervals = (genes[f"start{k}"], genes[f"end{k}"]) if f"start{k}" in genes.files else \
                    (np.zeros(0, np.int64), np.zeros(0, np.int64))
            slot = layout.slots[(i, k)]
            tasks.append(RecordTask(i, k, source.assembly, scan["plain_path"], source.path, Record(*rec), intervals,
                                    slot, layout.data_path(slot.prefix), layout.record_prefix((i, k)),
                                    layout.sizes_path))
    return tasks


def _check_unique_names(sources: List[Source], scans: List[dict]) -> None:
    seen: Dict[tuple, str] = {}
    for source, scan in zip(sources, scans):
        for rec in scan["records"]:
            first = seen.setdefault((source.assembly, rec[0]), source.path)
            if first != source.path:
                raise DataPrepError(f"{source.path}: duplicate record name {rec[0]!r} in assembly "
                                    f"{source.assembly!r} (also in {first}); names must be unique within an assembly")


class _NoProgress:
    def update(self, _) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()     # importing tqdm alone costs ~75 ms
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, desc="cutting", file=sys.stderr, smoothing=0.05)


def _log(message: str) -> None:
    print(f"nucleotron data prep: {message}", file=sys.stderr)
