"""One FASTA record -> its documents, written in place in its pack's data file (the unit of parallel work).

Per record: one read into a reused buffer, one bytes.translate (line breaks dropped, case folded, IUPAC -> N, bases
-> token ids, all in C), a memchr for illegal bytes, memchr hops over the N runs, the vectorised cut, then pwritev
straight from the token buffer (see documents.py). With the soft-mask bit, a second translate gives the buffer that is
written (N runs and cuts still come from the plain ids). The fragment table and a done marker are written last, so a
crash leaves the record to redo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import tokens as tk
from .documents import write_documents
from .errors import DataPrepError, os_error
from .fasta import Record, read_record
from .fragments import cut_arrays, n_runs
from .layout import Slot, claim_offset
from .workdir import write_json_atomic
from .workers import raise_if_stopping

RECORD_VERSION = 2
FRAGMENT_DTYPE = np.dtype([("start", "<i8"), ("length", "<i4"), ("reverse", "u1")])


@dataclass(frozen=True)
class RecordTask:
    source: int
    record: int
    assembly: str
    plain_path: str        # the (decompressed) FASTA the record's offsets point into
    display_path: str      # the file the user listed, for messages
    rec: Record
    genes: Optional[tuple]
    slot: Slot
    data_path: str         # its pack's data file
    work_prefix: str       # path prefix of its .frag.npy and .done
    sizes_path: str


_read_buffer = bytearray()       # per process, reused across records


def cut_record(args) -> int:
    """Process one record; return the bytes of FASTA it covered (for the progress bar)."""
    global _read_buffer
    task, rules, soft_mask = args
    raise_if_stopping()
    try:
        with open(task.plain_path, "rb", buffering=0) as handle:
            raw = _read_buffer = read_record(handle, task.rec, _read_buffer)
    except OSError as err:
        raise os_error(task.display_path, err) from None
    tokens = tk.encode(raw)
    bad = tokens.find(tk.ILLEGAL_BYTE)
    if bad != -1:
        char = raw.translate(None, tk.LINE_BREAKS)[bad:bad + 1].decode("latin-1")
        raise DataPrepError(f"{task.display_path}: record {task.rec.name!r}: illegal character "
                            f"{char!r} at base {bad + 1} (1-based); allowed are ACGTN, the IUPAC codes "
                            f"{tk.IUPAC_AMBIGUOUS} (stored as N) and their lower case; fix or remove the record")
    runs = n_runs(tokens)
    starts, lengths, reverse = cut_arrays(len(tokens), runs, rules, task.assembly, task.rec.name, task.genes)
    size = int(lengths.sum()) + len(lengths)
    offset = claim_offset(task.sizes_path, task.slot, size)
    stored = tk.encode_soft_masked(raw) if soft_mask else tokens
    try:
        fd = os.open(task.data_path, os.O_WRONLY)
        try:
            write_documents(fd, offset, stored, runs, starts, lengths, reverse)
        finally:
            os.close(fd)
        table = np.zeros(len(starts), dtype=FRAGMENT_DTYPE)
        table["start"], table["length"], table["reverse"] = starts, lengths, reverse
        np.save(task.work_prefix + ".frag.npy", table)
        write_json_atomic(task.work_prefix + ".done", {"version": RECORD_VERSION, "documents": len(starts),
                                                       "bases": len(tokens), "tokens": size})
    except OSError as err:                   # disk full, quota, I/O: one line naming the file, not a traceback
        raise os_error(task.data_path, err) from None
    return task.rec.seq_end - task.rec.seq_start
