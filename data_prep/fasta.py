"""Streaming FASTA indexing and per-record reads, bounded by one record's size, never the file's.

One pass over the file computes its sha256, finds every record (name, header text, byte span, base count) and
checks the structure (a header first, no empty records, no duplicate names). Gzip/bgzip input is decompressed in the
same pass into a work file, so later per-record reads are plain seeks. We do not use pyfaidx here because its index
rejects files whose lines are not all the same length and needs Biopython for bgzip; the benchmark compares our
throughput against a bare pyfaidx read.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO, List, Optional

from .errors import DataPrepError

CHUNK = 16 << 20
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Record:
    name: str          # header up to the first whitespace
    description: str   # the rest of the header line
    seq_start: int     # byte offset of the first sequence line in the (decompressed) file
    seq_end: int       # byte offset where the next header starts (or the file size)
    bases: int


@dataclass(frozen=True)
class FastaIndex:
    source: str        # the file the user named
    plain_path: str    # the uncompressed FASTA that records point into (source itself unless gzip)
    sha256: str        # of the source file as given (compressed bytes for .gz)
    size: int
    records: List[Record]


def is_gzip(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


class _HashingReader:
    """A file wrapper that hashes what passes through read(), so gzip input is hashed in the same pass."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.sha = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.sha.update(data)
        return data

    def readinto(self, buffer) -> int:
        size = self.handle.readinto(buffer)
        self.sha.update(memoryview(buffer)[:size])
        return size


def index_fasta(source: str, plain_out: Optional[str] = None, progress=None) -> FastaIndex:
    """Index `source`; if it is gzip, decompress it to `plain_out` (written to plain_out.part, then renamed)."""
    size = os.path.getsize(source)
    with open(source, "rb") as raw:
        hashing = _HashingReader(raw)
        if raw.read(2) == GZIP_MAGIC:
            if plain_out is None:
                raise DataPrepError(f"{source}: gzip input needs a work directory to decompress into")
            raw.seek(0)
            hashing.sha = hashlib.sha256()
            part = plain_out + ".part"
            try:
                with gzip.GzipFile(fileobj=hashing, mode="rb") as stream, open(part, "wb") as out:
                    headers = _scan(stream, source, out, progress)
            except (EOFError, OSError, zlib.error) as err:
                if os.path.exists(part):
                    os.remove(part)
                raise DataPrepError(f"{source}: corrupt or truncated gzip ({err}); download the file again "
                                    f"(`nucleotron data fetch` verifies checksums)") from None
            os.replace(part, plain_out)
            plain = plain_out
        else:
            raw.seek(0)
            headers = _scan(hashing, source, None, progress)
            plain = source
        while hashing.read(CHUNK):   # hash any bytes the scanner did not pull (trailing gzip padding)
            pass
    records = _records(plain, source, headers)
    return FastaIndex(source=source, plain_path=plain, sha256=hashing.sha.hexdigest(), size=size, records=records)


def _scan(stream, source: str, copy_to: Optional[BinaryIO], progress) -> List[tuple]:
    """Return [(header_offset, line_breaks_before_header)] plus a final (end_offset, total_line_breaks)."""
    headers, offset, breaks, at_line_start, seen_content = [], 0, 0, True, False
    buffer = bytearray(CHUNK)             # reused: no fresh 16 MiB allocation (and its page faults) per chunk
    while True:
        size = stream.readinto(buffer)
        if not size:
            break
        chunk = buffer if size == len(buffer) else buffer[:size]
        if copy_to is not None:
            copy_to.write(chunk)
        if not seen_content:
            stripped = chunk.lstrip()
            if stripped:
                seen_content = True
                if not stripped.startswith(b">"):
                    raise DataPrepError(f"{source}: no FASTA header: the first non-blank line does not start with "
                                        f"'>' (byte {len(chunk) - len(stripped)}); is this a FASTA file?")
        positions = []
        found = chunk.find(b">")          # one-byte search is memchr-fast; '>' is rare outside headers
        while found != -1:
            if (chunk[found - 1:found] == b"\n") if found else at_line_start:
                positions.append(found)
            found = chunk.find(b">", found + 1)
        last, has_cr = 0, chunk.find(b"\r") != -1   # memchr-fast; most files have no CR, so skip counting them
        for pos in positions:
            breaks += chunk.count(b"\n", last, pos) + (chunk.count(b"\r", last, pos) if has_cr else 0)
            headers.append((offset + pos, breaks))
            last = pos
        breaks += chunk.count(b"\n", last) + (chunk.count(b"\r", last) if has_cr else 0)
        at_line_start = chunk.endswith(b"\n")
        offset += len(chunk)
        if progress is not None:
            progress(len(chunk))
    if not headers:
        raise DataPrepError(f"{source}: contains no FASTA records (no line starting with '>')")
    headers.append((offset, breaks))
    return headers


def _records(plain: str, source: str, headers: List[tuple]) -> List[Record]:
    records, seen = [], set()
    with open(plain, "rb") as handle:
        for (start, breaks), (end, breaks_next) in zip(headers, headers[1:]):
            handle.seek(start)
            line = handle.readline()
            text = line[1:].rstrip(b"\r\n").decode("ascii", errors="replace")
            parts = text.split(None, 1)
            if not parts:
                raise DataPrepError(f"{source}: header at byte {start} has no name; give every record a name")
            name = parts[0]
            if name in seen:
                raise DataPrepError(f"{source}: duplicate record name {name!r} (second one at byte {start}); "
                                    f"record names must be unique within an assembly")
            seen.add(name)
            line_breaks_in_header = line.count(b"\n") + line.count(b"\r")
            seq_start = start + len(line)
            bases = (end - seq_start) - (breaks_next - breaks - line_breaks_in_header)
            if bases <= 0:
                raise DataPrepError(f"{source}: record {name!r} is empty (header at byte {start}); remove it")
            records.append(Record(name, parts[1] if len(parts) > 1 else "", seq_start, end, bases))
    return records


def read_record(plain_path: str, record: Record) -> bytes:
    """The record's sequence lines exactly as in the file (line breaks included; tokens.encode drops them)."""
    with open(plain_path, "rb") as handle:
        handle.seek(record.seq_start)
        return handle.read(record.seq_end - record.seq_start)
