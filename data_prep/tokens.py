"""Base -> token id mapping (the public Gengram tokenizer ids) and reverse complement on token arrays.

Lower case (soft-masked repeats) maps like upper case; IUPAC ambiguity codes R Y K M S W B D H V map to N.
Every other byte (including U, '-', '*', spaces) is illegal: genomic DNA assemblies never contain it, so its presence
means a corrupt or non-DNA file, and we stop rather than guess.
"""
from __future__ import annotations

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

COMPLEMENT = np.arange(256, dtype=np.uint8)
COMPLEMENT[[A, T, C, G]] = [T, A, G, C]
_COMPLEMENT_TABLE = COMPLEMENT.tobytes()
EOD_BYTE = bytes([EOD])
N_BYTE = bytes([N])
ILLEGAL_BYTE = bytes([ILLEGAL])

TOKEN_TO_BYTE = np.full(256, ord("?"), dtype=np.uint8)
for _base, _tid in (("A", A), ("C", C), ("G", G), ("T", T), ("N", N)):
    TOKEN_TO_BYTE[_tid] = ord(_base)


def encode(raw: bytes) -> bytes:
    """FASTA sequence lines -> token ids, one byte per base; line breaks are dropped, illegal bytes become ILLEGAL."""
    return raw.translate(_ENCODE_TABLE, b"\r\n")


def reverse_complement(tokens: bytes) -> bytes:
    return tokens[::-1].translate(_COMPLEMENT_TABLE)


def reverse_complement_range(tokens: bytes, start: int, end: int) -> bytes:
    """reverse_complement(tokens[start:end]) without the intermediate forward copy."""
    if start >= end:
        return b""
    return tokens[end - 1:start - 1 if start else None:-1].translate(_COMPLEMENT_TABLE)


def decode(tokens) -> str:
    """Token ids -> 'ACGTN' string (EOD must be stripped first; unknown ids show as '?')."""
    return TOKEN_TO_BYTE[np.frombuffer(bytes(tokens), dtype=np.uint8)].tobytes().decode("ascii")
