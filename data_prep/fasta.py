"""Streaming FASTA indexing and per-record reads, bounded by one record's size, never the file's.

One pass over the file computes its sha256, finds every record (name, header text, byte span) and checks the
structure (a header first, no empty records, no duplicate names). Base counts are not taken here: the worker that
tokenises a record gets them for free (the token string's length), so this pass costs one read and one hash.
Gzip/bgzip input is decompressed in the same pass into a work file, so later per-record reads are plain seeks. We do
not use pyfaidx here because its index rejects files whose lines are not all the same length and needs Biopython for
bgzip; the benchmark compares our throughput against a bare pyfaidx read.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from dataclasses import dataclass
from typing import BinaryIO, List, Optional

from .errors import DataPrepError

CHUNK = 16 << 20
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"      # some editors write it at the start of a text file; it is skipped, not a base
_NON_BLANK = re.compile(rb"\S")


@dataclass(frozen=True)
class Record:
    name: str          # header up to the first whitespace
    description: str   # the rest of the header line
    seq_start: int     # byte offset of the first sequence line in the (decompressed) file
    seq_end: int       # byte offset where the next header starts (or the file size)


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
                if isinstance(err, OSError) and err.errno is not None:
                    raise                     # disk full or I/O while decompressing, not a bad gzip
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


def _scan(stream, source: str, copy_to: Optional[BinaryIO], progress) -> List[int]:
    """Return the byte offset of every header line plus, last, the end of the data."""
    headers, offset, at_line_start, seen_content = [], 0, True, False
    buffer = bytearray(CHUNK)             # reused: no fresh 16 MiB allocation (and its page faults) per chunk
    while True:
        size = stream.readinto(buffer)
        if not size:
            break
        chunk = buffer if size == len(buffer) else buffer[:size]
        if copy_to is not None:
            copy_to.write(chunk)
        skip = len(UTF8_BOM) if offset == 0 and chunk.startswith(UTF8_BOM) else 0   # the file's first line starts
        if not seen_content:                                                          # after the BOM
            first = _NON_BLANK.search(chunk, skip)
            if first:
                seen_content = True
                if chunk[first.start()] != ord(">"):
                    raise DataPrepError(f"{source}: no FASTA header: the first non-blank line does not start with "
                                        f"'>' (byte {offset + first.start()}); is this a FASTA file?")
        found = chunk.find(b">", skip)    # one-byte search is memchr-fast; '>' is rare outside headers
        while found != -1:
            if (chunk[found - 1:found] == b"\n") if found > skip else at_line_start:
                headers.append(offset + found)
            found = chunk.find(b">", found + 1)
        at_line_start = chunk.endswith(b"\n")
        offset += len(chunk)
        if progress is not None:
            progress(len(chunk))
    if not headers:
        raise DataPrepError(f"{source}: contains no FASTA records (no line starting with '>')")
    headers.append(offset)
    return headers


def _records(plain: str, source: str, headers: List[int]) -> List[Record]:
    records, seen = [], set()
    with open(plain, "rb") as handle:
        for start, end in zip(headers, headers[1:]):
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
            seq_start = start + len(line)
            if not _has_bases(handle, end - seq_start):
                raise DataPrepError(f"{source}: record {name!r} is empty (header at byte {start}); remove it")
            records.append(Record(name, parts[1] if len(parts) > 1 else "", seq_start, end))
    return records


def _has_bases(handle: BinaryIO, span: int) -> bool:
    """Whether the next `span` bytes hold anything but line breaks; stops at the first block that does."""
    while span > 0:
        block = handle.read(min(span, 1 << 16))
        if not block:
            return False
        if block.strip(b"\r\n"):
            return True
        span -= len(block)
    return False


def read_record(handle: BinaryIO, record: Record, buffer: bytearray) -> bytearray:
    """The record's sequence lines exactly as in the file (line breaks included), in `buffer` or, if it is too
    small, a new one. Reusing the buffer across records spares large reads from page-faulting fresh memory."""
    size = record.seq_end - record.seq_start
    if len(buffer) < size:
        buffer = bytearray(size)
    elif len(buffer) > size:
        del buffer[size:]
    view, done = memoryview(buffer), 0
    handle.seek(record.seq_start)
    while done < size:                     # one read(2) returns at most ~2 GiB
        got = handle.readinto(view[done:])
        if not got:
            raise DataPrepError(f"{handle.name}: ends inside record {record.name!r}; the file changed after "
                                f"indexing, re-run `data prep`")
        done += got
    return buffer
