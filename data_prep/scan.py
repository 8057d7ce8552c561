"""Stage 1 of `data prep`: index each source file once (records, sha256, gzip decompression, gene intervals).

The scan is cached in the source's work folder as scan.json and reused while the file's path, size and mtime (and
the annotation settings) are unchanged, so a resumed run does not read finished assemblies again.
"""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np

from .errors import DataPrepError, os_error
from .fasta import index_fasta, is_gzip
from .genes import read_gene_intervals
from .workdir import read_json, write_json_atomic
from .workers import raise_if_stopping


def scan_source(args) -> dict:
    """Index one source file (and its annotation), or reuse the cached scan if the file has not changed."""
    source, src_dir, gene_window = args
    raise_if_stopping()
    try:
        return _scan_source(source, src_dir, gene_window)
    except OSError as err:                   # disk full in the work dir, unreadable input: one line, no traceback
        raise os_error(src_dir, err) from None


def _scan_source(source, src_dir: str, gene_window: int) -> dict:
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
            "records": [[r.name, r.description, r.seq_start, r.seq_end] for r in index.records]}
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
