"""Base -> token id mapping (the public Gengram tokenizer ids) and reverse complement on token arrays.

Lower case (soft-masked repeats) maps like upper case; IUPAC ambiguity codes R Y K M S W B D H V map to N.
Every other byte (including U, '-', '*', spaces) is illegal: genomic DNA assemblies never contain it, so its presence
means a corrupt or non-DNA file, and we stop rather than guess.

Optional soft-mask bit (`data prep --soft-mask`): a lower-case base is stored as its id | SOFT_MASK_BIT (128), like
Savanna keeping lower case in storage, so training can down-weight repeats at no storage cost. Ids stay < 128, the
bit never collides with them, and the training side strips it before the model sees a token.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np

PAD, C, G, T, A, N, EOD = 0, 5, 6, 7, 8, 9, 12
VOCAB = {"PAD": PAD, "C": C, "G": G, "T": T, "A": A, "N": N, "EOD": EOD}
VOCAB_SIZE = 128
IUPAC_AMBIGUOUS = "RYKMSWBDHV"
ILLEGAL = 255

BYTE_TO_TOKEN = np.full(256, ILLEGAL, dtype=np.uint8)
for _base, _tid in (("A", A), ("C", C), ("G", G), ("T", T), ("N", N)):
    BYTE_TO_TOKEN[ord(_base)] = BYTE_TO_TOKEN[ord(_base.lower())] = _tid
for _code in IUPAC_AMBIGUOUS:
    BYTE_TO_TOKEN[ord(_code)] = BYTE_TO_TOKEN[ord(_code.lower())] = N
_ENCODE_TABLE = BYTE_TO_TOKEN.tobytes()          # bytes.translate runs at memory speed; numpy fancy indexing does not
LINE_BREAKS = b"\r\n"

SOFT_MASK_BIT = 0x80
ID_BITS = 0xFF & ~SOFT_MASK_BIT
_SOFT_TABLE = BYTE_TO_TOKEN.copy()
for _byte in range(ord("a"), ord("z") + 1):
    if _SOFT_TABLE[_byte] != ILLEGAL:
        _SOFT_TABLE[_byte] |= SOFT_MASK_BIT
_SOFT_ENCODE_TABLE = _SOFT_TABLE.tobytes()

EOD_BYTE = bytes([EOD])
N_BYTE = bytes([N])
ILLEGAL_BYTE = bytes([ILLEGAL])

TOKEN_TO_BYTE = np.full(256, ord("?"), dtype=np.uint8)
for _base, _tid in (("A", A), ("C", C), ("G", G), ("T", T), ("N", N)):
    TOKEN_TO_BYTE[_tid] = ord(_base)
    TOKEN_TO_BYTE[_tid | SOFT_MASK_BIT] = ord(_base.lower())

# The complement pairs C<->G (5<->6) and T<->A (7<->8) are ((t - 5) ^ 1) + 5, and no byte of it carries into the
# next, so it runs on uint64 words, 8 bases per element: reversing the word order plus a byteswap reverses the bytes.
# That is ~1.5x faster than the same on uint8 and ~3x faster than a reversed bytes slice plus translate. N (9) is not
# part of a pair, so its positions are written separately. The soft-mask bit rides along: every byte is >= 5, so
# nothing borrows, and (bit | t) stays below 256 throughout.
_PAIR_BASE = C
_PAIR_BASES = np.uint64(int.from_bytes(bytes([C] * 8), "little"))
_ONES = np.uint64(int.from_bytes(bytes([1] * 8), "little"))
assert all(((t - _PAIR_BASE) ^ 1) + _PAIR_BASE == c for bit in (0, SOFT_MASK_BIT)
           for t, c in ((A | bit, T | bit), (T | bit, A | bit), (C | bit, G | bit), (G | bit, C | bit)))


def encode(raw) -> bytes:
    """FASTA sequence lines -> token ids, one byte per base; line breaks are dropped, illegal bytes become ILLEGAL."""
    return raw.translate(_ENCODE_TABLE, LINE_BREAKS)


def encode_soft_masked(raw) -> bytes:
    """Like encode, with SOFT_MASK_BIT set on lower-case bases (call after encode found no illegal byte)."""
    return raw.translate(_SOFT_ENCODE_TABLE, LINE_BREAKS)


def reverse_complement_into(tokens: np.ndarray, start: int, end: int, out: np.ndarray,
                            n_spans: Iterable[Tuple[int, int]] = ()) -> None:
    """out[:end - start] = reverse complement of tokens[start:end], which holds only A C G T N ids (soft-mask bit
    allowed: the arithmetic below keeps it) and has N exactly at the [s, e) spans given (the caller knows them from
    the N-run scan, so no pass looks for them). Fastest when `out` is 8-byte aligned."""
    words = (end - start) // 8
    head = end - 8 * words                  # tokens[start:head], < 8 of them, end up last in out
    if words:
        flipped = out[:8 * words].view(np.uint64)
        np.subtract(tokens[head:end].view(np.uint64)[::-1], _PAIR_BASES, out=flipped)
        flipped.byteswap(inplace=True)
        np.bitwise_xor(flipped, _ONES, out=flipped)
        np.add(flipped, _PAIR_BASES, out=flipped)
    if head > start:
        tail = out[8 * words:end - start]
        np.subtract(tokens[head - 1:start - 1 if start else None:-1], _PAIR_BASE, out=tail)
        np.bitwise_xor(tail, 1, out=tail)
        np.add(tail, _PAIR_BASE, out=tail)
    view = out[:end - start]
    for n_start, n_end in n_spans:              # N is no pair: rewrite it, keeping a soft-mask bit
        span = view[end - n_end:end - n_start]
        np.bitwise_and(span, SOFT_MASK_BIT, out=span)
        np.bitwise_or(span, N, out=span)


def decode(tokens) -> str:
    """Token ids -> 'ACGTN' string, lower case where the soft-mask bit is set (EOD must be stripped first; unknown
    ids show as '?')."""
    return TOKEN_TO_BYTE[np.frombuffer(bytes(tokens), dtype=np.uint8)].tobytes().decode("ascii")
