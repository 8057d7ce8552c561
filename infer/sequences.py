"""Sequences in (FASTA records or a table), token ids out, and batched log-likelihoods from a loaded model.

Every scored or embedded sequence is read as the model saw documents in training: EOD, then the bases. The EOD in
front gives the first base a prediction, so log P(sequence) sums over every base. Sequences longer than the model's
window (seq_len - 1 bases) are scored window by window, each window again after an EOD.
"""
from __future__ import annotations

import gzip
import os
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch

AMBIGUOUS = "RYKMSWBDHV"


class InputError(ValueError):
    """Bad user input (a record, a line, a column); the message names it and says what to do."""


def open_text(path: str):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path)


def read_fasta(path: str) -> Iterator[Tuple[str, str]]:
    """(record name, sequence) pairs; the name is the header up to the first whitespace."""
    name, parts = None, []
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if line.startswith(">"):
                if name is not None:
                    yield name, "".join(parts)
                name, parts = (line[1:].split() or [f"record{number}"])[0], []
            elif line:
                if name is None:
                    raise InputError(f"{path} line {number}: sequence before the first '>' header; is it FASTA?")
                parts.append(line)
    if name is not None:
        yield name, "".join(parts)


def read_table(path: str, sequence_column: str = "sequence", id_column: str = "id",
               extra_columns: Sequence[str] = ()) -> dict:
    """Columns of a CSV/TSV/Parquet file as lists; ids default to row numbers."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.endswith(".parquet"):
        table = pq.read_table(path)
    else:
        delimiter = "\t" if path.endswith((".tsv", ".tsv.gz", ".txt")) else ","
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    columns = table.column_names
    for column in (sequence_column, *extra_columns):
        if column not in columns:
            raise InputError(f"{path}: no column {column!r} (columns: {', '.join(columns)}); name it with the "
                             f"column option")
    data = {"sequence": [str(s) for s in table.column(sequence_column).to_pylist()]}
    data["id"] = ([str(i) for i in table.column(id_column).to_pylist()] if id_column in columns
                  else [str(i) for i in range(table.num_rows)])
    for column in extra_columns:
        data[column] = table.column(column).to_pylist()
    return data


def read_sequences(path: str, sequence_column: str = "sequence") -> Tuple[List[str], List[str]]:
    """(ids, sequences) from FASTA (.fa/.fasta/.fna[.gz]) or a table (.tsv/.csv/.parquet)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    if path.endswith((".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")):
        records = list(read_fasta(path))
        return [r[0] for r in records], [r[1] for r in records]
    data = read_table(path, sequence_column)
    return data["id"], data["sequence"]


def encoder(vocab: dict):
    """str -> int64 token ids with the model's vocabulary: lower case like upper, IUPAC codes as N."""
    table = np.full(256, -1, dtype=np.int64)
    for base in "ACGTN":
        table[ord(base)] = table[ord(base.lower())] = vocab[base]
    for code in AMBIGUOUS:
        table[ord(code)] = table[ord(code.lower())] = vocab["N"]

    def encode(sequence: str, what: str) -> np.ndarray:
        raw = np.frombuffer(sequence.encode("ascii", errors="replace"), dtype=np.uint8)
        ids = table[raw]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            raise InputError(f"{what}: character {sequence[bad[0]]!r} at position {bad[0] + 1} is not a DNA base "
                             f"(A, C, G, T, N or an IUPAC code)")
        return ids

    return encode


def windows(ids: np.ndarray, eod: int, window: int) -> List[np.ndarray]:
    """EOD + each consecutive chunk of at most `window - 1` bases."""
    step = window - 1
    return [np.concatenate([[eod], ids[i:i + step]]) for i in range(0, max(len(ids), 1), step)]


@torch.no_grad()
def log_likelihoods(model, token_lists: Sequence[np.ndarray], batch_size: int, pad: int,
                    progress: str = "") -> List[float]:
    """sum over t >= 1 of log P(x_t | x_<t) for each token list (natural log), right-padded batches of similar
    length. The first token of each list is context only."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    result = [0.0] * len(token_lists)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress or "scoring", unit="batch", disable=not progress or len(starts) < 2):
        chosen = order[start:start + batch_size]
        length = max(len(token_lists[i]) for i in chosen)
        ids = torch.full((len(chosen), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chosen), length - 1), dtype=torch.bool)
        for row, i in enumerate(chosen):
            ids[row, :len(token_lists[i])] = torch.from_numpy(np.asarray(token_lists[i], dtype=np.int64))
            mask[row, :len(token_lists[i]) - 1] = True
        ids = ids.to(device)
        logits = model(ids).logits[:, :-1].float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        sums = (picked * mask.to(device)).sum(dim=1).double().cpu().tolist()
        for row, i in enumerate(chosen):
            result[i] = sums[row]
    return result
