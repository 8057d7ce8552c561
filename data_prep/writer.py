"""Writes megatron-core's indexed dataset (.bin/.idx) byte-for-byte as IndexedDatasetBuilder does, but streaming.

We write the format ourselves so that `data prep` needs neither torch nor megatron-core at run time and can append
whole shard files; tests check the bytes equal IndexedDatasetBuilder's and that IndexedDataset reads them.
Each document is one sequence (fragment + EOD), as the builder's add_item + end_document produces.
"""
from __future__ import annotations

import os
import shutil
import struct
from typing import List

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"   # megatron.core.datasets.indexed_dataset._INDEX_HEADER
INDEX_VERSION = 1
DTYPE_CODE_UINT8 = 1                # megatron.core.datasets.indexed_dataset.DType.uint8


class IndexedDatasetWriter:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.bin = open(prefix + ".bin", "wb")
        self.lengths: List[np.ndarray] = []

    def add_documents(self, data: np.ndarray, lengths: np.ndarray) -> None:
        self.bin.write(np.ascontiguousarray(data, dtype=np.uint8).tobytes())
        self.lengths.append(np.asarray(lengths, dtype=np.int64))

    def add_shard(self, bin_path: str, lengths: np.ndarray) -> None:
        """Append a shard file holding documents of the given lengths back to back."""
        self.bin.flush()
        with open(bin_path, "rb") as handle:
            size, copied = os.fstat(handle.fileno()).st_size, 0
            try:                      # in-kernel copy: no trip through user space for the largest write of the run
                while copied < size:
                    done = os.copy_file_range(handle.fileno(), self.bin.fileno(), size - copied)
                    if done == 0:
                        break
                    copied += done
            except (AttributeError, OSError):
                pass
            if copied < size:
                handle.seek(copied)
                shutil.copyfileobj(handle, self.bin, 16 << 20)
        self.lengths.append(np.asarray(lengths, dtype=np.int64))

    def finalize(self) -> None:
        self.bin.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths):
            np.cumsum(lengths[:-1], out=pointers[1:])
        with open(self.prefix + ".idx", "wb") as idx:
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
