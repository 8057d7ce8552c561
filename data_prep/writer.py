"""megatron-core's indexed dataset (.bin/.idx) byte-for-byte as IndexedDatasetBuilder writes it, without torch.

The .bin is the documents back to back (workers write it in place, see layout.py); this module writes and reads the
.idx. We write the format ourselves so that `data prep` needs neither torch nor megatron-core at run time; tests
check the bytes equal IndexedDatasetBuilder's and that IndexedDataset reads them. Each document is one sequence
(fragment + EOD), as the builder's add_item + end_document produces.
"""
from __future__ import annotations

import struct

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"   # megatron.core.datasets.indexed_dataset._INDEX_HEADER
INDEX_VERSION = 1
DTYPE_CODE_UINT8 = 1                # megatron.core.datasets.indexed_dataset.DType.uint8


def write_index(prefix: str, lengths: np.ndarray) -> None:
    """PREFIX.idx for documents of the given lengths (tokens, EOD included) stored back to back in PREFIX.bin."""
    lengths = np.asarray(lengths, dtype=np.int64)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths):
        np.cumsum(lengths[:-1], out=pointers[1:])
    with open(prefix + ".idx", "wb") as idx:
        idx.write(INDEX_HEADER)
        idx.write(struct.pack("<Q", INDEX_VERSION))
        idx.write(struct.pack("<B", DTYPE_CODE_UINT8))
        idx.write(struct.pack("<Q", len(lengths)))
        idx.write(struct.pack("<Q", len(lengths) + 1))
        idx.write(lengths.astype(np.int32).tobytes())
        idx.write(pointers.tobytes())
        idx.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())


def read_document_lengths(prefix: str) -> np.ndarray:
    """Sequence lengths from an .idx file written as above (no megatron import needed)."""
    with open(prefix + ".idx", "rb") as idx:
        header = idx.read(len(INDEX_HEADER) + 9)
        if header[:len(INDEX_HEADER)] != INDEX_HEADER:
            raise ValueError(f"{prefix}.idx is not a megatron indexed dataset index")
        (count,) = struct.unpack("<Q", idx.read(8))
        idx.read(8)
        return np.frombuffer(idx.read(4 * count), dtype=np.int32).astype(np.int64)
