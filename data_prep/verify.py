"""Is a pack on disk still the pack `data prep` wrote? Checked by training at start-up and by `data verify`.

At prep time the manifest's `integrity` section records, for every .bin/.idx file, its size, the sha256 of the whole
file and the sha256 of a sample: the file size followed by `blocks` blocks of `block_bytes` at evenly spaced offsets
from the first byte to the last (the whole file when it is smaller than the sample). The default check reads only
the sample (~1 MiB per file, milliseconds) plus each .idx header and lengths, so it can run before every training
start; `full=True` hashes every byte. Both catch a missing file, a truncated or extended file, a foreign .idx header,
and a file overwritten with other bytes of the same size (the sampled check when the change touches a sampled block,
which a wholesale overwrite always does; the full check for any change).

Packs made before the integrity section get the size checks (each .bin against what its .idx describes) and a
warning.
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

import numpy as np

from nucleotron.configs.cores import usable_cores

from .errors import DataPrepError
from .manifest import load_manifest
from .writer import DTYPE_CODE_UINT8, INDEX_HEADER, INDEX_VERSION

BLOCK_BYTES = 64 << 10
BLOCKS = 16
_READ = 4 << 20
_HEADER = struct.Struct("<QBQQ")    # version, dtype code, sequence count, document count (after the magic)
_log = logging.getLogger(__name__)
REBUILD = "re-run `nucleotron data prep` to rebuild the pack (or restore it from a copy)"


def sample_offsets(size: int, block_bytes: int = BLOCK_BYTES, blocks: int = BLOCKS) -> List[int]:
    """Where the sampled blocks start: evenly spaced from 0 to size - block_bytes (whole file if it is small)."""
    if size <= block_bytes * blocks:
        return list(range(0, size, block_bytes))
    return [i * (size - block_bytes) // (blocks - 1) for i in range(blocks)]


def sampled_sha256(path: str, block_bytes: int = BLOCK_BYTES, blocks: int = BLOCKS) -> str:
    size = os.path.getsize(path)
    sha = hashlib.sha256(struct.pack("<Q", size))
    with open(path, "rb") as handle:
        for offset in sample_offsets(size, block_bytes, blocks):
            handle.seek(offset)
            sha.update(handle.read(block_bytes))
    return sha.hexdigest()


def full_sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_READ)
        view = memoryview(buffer)
        while True:
            got = handle.readinto(buffer)
            if not got:
                return sha.hexdigest()
            sha.update(view[:got])        # hashlib releases the GIL for large updates: files hash in parallel


def integrity_entry(directory: str, names: List[str]) -> dict:
    """The manifest's `integrity` section for these files of `directory` (hashed in parallel threads)."""
    def one(name: str) -> Dict[str, object]:
        path = os.path.join(directory, name)
        return {"bytes": os.path.getsize(path), "sha256": full_sha256(path), "sampled_sha256": sampled_sha256(path)}

    with ThreadPoolExecutor(max(1, min(len(names), usable_cores()))) as pool:
        entries = dict(zip(names, pool.map(one, names)))
    return {"block_bytes": BLOCK_BYTES, "blocks": BLOCKS,
            "rule": "sampled_sha256 = sha256(file size as 8 bytes little-endian, then `blocks` blocks of "
                    "`block_bytes` at offsets i*(size-block_bytes)//(blocks-1), or the whole file when smaller); "
                    "checked by `nucleotron data verify` and at training start-up",
            "files": entries}


def verify_pack(directory: str, full: bool = False) -> None:
    """Raise DataPrepError naming the first file of the pack that is missing, truncated, foreign or changed."""
    manifest = load_manifest(directory)
    integrity = manifest.raw.get("integrity")
    if integrity is not None:
        recorded = integrity.get("files") if isinstance(integrity, dict) else None
        if not isinstance(recorded, dict):
            raise DataPrepError(f"{os.path.join(directory, 'manifest.json')}: malformed integrity section; {REBUILD}")
    else:
        recorded = None
    prefixes = list(dict.fromkeys([*(p for b in manifest.blend.values() for p in b.prefixes),
                                   *manifest.raw.get("datasets", {}),
                                   *(name.rsplit(".", 1)[0] for name in recorded or {})]))
    for prefix in prefixes:
        base = os.path.join(manifest.directory, prefix)
        for path in (base + ".idx", base + ".bin"):
            if not os.path.isfile(path):
                raise DataPrepError(f"{path} is missing from the pack; {REBUILD}")
        described = _described_bytes(base + ".idx")
        size = os.path.getsize(base + ".bin")
        if size != described:
            raise DataPrepError(f"{base}.bin holds {size} bytes but its index {prefix}.idx describes {described}: "
                                f"the file is {'truncated' if size < described else 'longer than its index'}; "
                                f"{REBUILD}")
        if recorded is not None:
            for name in (prefix + ".idx", prefix + ".bin"):
                _check_recorded(os.path.join(manifest.directory, name), recorded.get(name), integrity, full)
    if recorded is None:
        _log.warning(f"{manifest.directory}: pack made before pack checksums; only sizes were checked (re-run "
                     f"`nucleotron data prep` to add them)")


def _described_bytes(idx_path: str) -> int:
    """Total document bytes an .idx describes, after checking its header and its own size."""
    size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as handle:
        magic = handle.read(len(INDEX_HEADER))
        fields = handle.read(_HEADER.size)
        if magic != INDEX_HEADER or len(fields) < _HEADER.size:
            raise DataPrepError(f"{idx_path}: not a megatron indexed-dataset index (header {magic[:9]!r}, expected "
                                f"{INDEX_HEADER!r}); {REBUILD}")
        version, dtype_code, count, documents = _HEADER.unpack(fields)
        if version != INDEX_VERSION or dtype_code != DTYPE_CODE_UINT8:
            raise DataPrepError(f"{idx_path}: index version {version} with dtype code {dtype_code}; data prep writes "
                                f"version {INDEX_VERSION} with dtype code {DTYPE_CODE_UINT8} (uint8); {REBUILD}")
        expected = len(INDEX_HEADER) + _HEADER.size + 12 * count + 8 * documents
        if size != expected:
            raise DataPrepError(f"{idx_path}: {size} bytes but its header describes {count} sequences "
                                f"({expected} bytes): the index is {'truncated' if size < expected else 'damaged'}; "
                                f"{REBUILD}")
        lengths = np.frombuffer(handle.read(4 * count), dtype="<i4")
    if count and lengths.min() < 0:
        raise DataPrepError(f"{idx_path}: negative sequence length; the index is damaged; {REBUILD}")
    return int(lengths.sum(dtype=np.int64))


def _check_recorded(path: str, entry: Optional[dict], integrity: dict, full: bool) -> None:
    try:
        recorded_size, whole, sampled = int(entry["bytes"]), entry["sha256"], entry["sampled_sha256"]
        block_bytes, blocks = int(integrity["block_bytes"]), int(integrity["blocks"])
    except (KeyError, TypeError, ValueError):
        raise DataPrepError(f"{path}: its entry in manifest.json's integrity section is malformed; {REBUILD}") \
            from None
    size = os.path.getsize(path)
    if size != recorded_size:
        raise DataPrepError(f"{path}: {size} bytes, but data prep wrote {recorded_size}: the file was "
                            f"{'truncated' if size < recorded_size else 'extended'} or replaced; {REBUILD}")
    kind, found, wanted = (("sha256", full_sha256(path), whole) if full
                           else ("sampled sha256", sampled_sha256(path, block_bytes, blocks), sampled))
    if found != wanted:
        raise DataPrepError(f"{path}: content differs from what data prep wrote ({kind} {found[:16]}..., recorded "
                            f"{wanted[:16]}...): the file was changed or corrupted after the pack was made; {REBUILD}")
