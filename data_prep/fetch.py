"""`nucleotron data fetch MANIFEST --out DIR`: parallel, resumable, checksum-verified downloads.

A file is downloaded to NAME.part (resumed with an HTTP Range request after an interruption), verified, and only then
renamed to NAME, so NAME exists only when complete and verified. Checksum column values:
  sha256:<hex> / md5:<hex>  verify against this value;
  ncbi-md5                  verify against the md5checksums.txt NCBI publishes in the same folder as the file;
  md5-file:<url>            verify against the md5 in a sidecar file (HPRC publishes NAME.fa.gz.md5);
  none                      nothing to verify against: the sha256 we compute is recorded (trust on first download).
The sha256 of every file is written to NAME.sha256 (marks it as verified) and DIR/sources.tsv is written for `data prep`.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional

from .errors import DataPrepError
from .groups import check_group_name

COLUMNS = ("assembly", "group", "species", "accession", "url", "checksum")
BLOCK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    assembly: str
    group: str
    species: str
    accession: str
    url: str
    checksum: str

    @property
    def filename(self) -> str:
        return os.path.basename(self.url.split("?", 1)[0])


def read_fetch_manifest(path: str) -> List[RemoteFile]:
    if not os.path.isfile(path):
        raise DataPrepError(f"{path}: manifest not found; see configs/data/README.md for the shipped manifests")
    with open(path, newline="") as handle:
        reader = csv.DictReader((l for l in handle if not l.startswith("#")), delimiter="\t")
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataPrepError(f"{path}: missing column(s) {missing}; a fetch manifest has {', '.join(COLUMNS)}")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            checksum = row["checksum"].strip()
            if not (checksum in ("ncbi-md5", "none") or checksum.startswith(("sha256:", "md5:", "md5-file:"))):
                raise DataPrepError(f"{path} line {line_no}: column 'checksum' must be sha256:<hex>, md5:<hex>, "
                                    f"md5-file:<url>, ncbi-md5 or none, not {checksum!r}")
            check_group_name(row["group"].strip(), f"{path} line {line_no}: column 'group'")
            rows.append(RemoteFile(**{c: row[c].strip() for c in COLUMNS}))
    return rows


def _get_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, OSError) as err:
        raise DataPrepError(f"{url}: cannot fetch the checksum file ({err}); retry later or put an md5:/sha256: "
                            f"checksum in the manifest") from None


class _NcbiChecksums:
    """md5checksums.txt per remote folder, fetched once."""

    def __init__(self):
        self.cache: Dict[str, Dict[str, str]] = {}
        self.lock = threading.Lock()

    def md5_of(self, url: str) -> str:
        folder, name = url.rsplit("/", 1)
        with self.lock:
            if folder not in self.cache:
                text = _get_text(folder + "/md5checksums.txt")
                table = {}
                for line in text.splitlines():
                    parts = line.split()
                    if len(parts) == 2:
                        table[os.path.basename(parts[1])] = parts[0].lower()
                self.cache[folder] = table
        if name not in self.cache[folder]:
            raise DataPrepError(f"{folder}/md5checksums.txt has no entry for {name}")
        return self.cache[folder][name]


def _hashes(path: str):
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _transfer(url: str, part: str, advance) -> None:
    """One attempt: append to `part` from where it stops; raises on an incomplete transfer."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:      # nothing left to fetch: the .part is already whole
            return
        raise
    with resp:
        if have and resp.status == 206:
            mode, total = "ab", int(resp.headers.get("Content-Range", "*/-1").rsplit("/", 1)[1])
        else:
            mode, have = "wb", 0
            total = int(resp.headers.get("Content-Length", -1))
        with open(part, mode) as out:
            while True:
                block = resp.read(BLOCK)
                if not block:
                    break
                out.write(block)
                have += len(block)
                advance(len(block))
    if total >= 0 and have != total:
        raise http.client.IncompleteRead(b"", total - have)


def fetch_file(remote: RemoteFile, out_dir: str, retries: int, ncbi: _NcbiChecksums, advance=lambda n: None) -> str:
    """Download one file; returns its sha256. Skips a file already verified (NAME + NAME.sha256 present)."""
    dest = os.path.join(out_dir, remote.filename)
    part, stamp = dest + ".part", dest + ".sha256"
    if os.path.exists(dest) and os.path.exists(stamp):
        with open(stamp) as handle:
            return handle.read().split()[0]
    if os.path.exists(dest):              # complete but unverified (e.g. copied in by hand): verify it in place
        os.replace(dest, part)
    restarted = False
    for attempt in range(1, retries + 1):
        try:
            _transfer(remote.url, part, advance)
        except urllib.error.HTTPError as err:
            if 400 <= err.code < 500 and err.code not in (408, 429):
                raise DataPrepError(f"{remote.url}: HTTP {err.code} {err.reason}; check the URL in the manifest "
                                    f"(assembly {remote.assembly})") from None
            _wait(attempt, retries, remote, err)
            continue
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            _wait(attempt, retries, remote, err)
            continue
        sha256, md5 = _hashes(part)
        expected = _expected(remote, ncbi)
        got = {"sha256": sha256, "md5": md5}.get(expected[0]) if expected else None
        if expected and got != expected[1]:
            os.remove(part)
            if restarted:
                raise DataPrepError(f"{remote.filename}: {expected[0]} {got} does not match the expected "
                                    f"{expected[1]} (downloaded twice from {remote.url}); the partial file was "
                                    f"deleted; check the manifest's checksum column")
            restarted = True          # a stale .part can poison a resume: one clean download before giving up
            continue
        os.replace(part, dest)
        with open(stamp, "w") as handle:
            handle.write(f"{sha256}  {remote.filename}\n")
        return sha256
    raise DataPrepError(f"{remote.url}: gave up after {retries} attempts; run the same command again to resume "
                        f"from {part}")


def _expected(remote: RemoteFile, ncbi: _NcbiChecksums) -> Optional[tuple]:
    if remote.checksum == "none":
        return None
    if remote.checksum == "ncbi-md5":
        return "md5", ncbi.md5_of(remote.url)
    kind, value = remote.checksum.split(":", 1)
    if kind == "md5-file":
        words = _get_text(value).split()
        if not words or len(words[0]) != 32:
            raise DataPrepError(f"{value}: not an md5 sidecar file (expected '<32 hex digits>  NAME')")
        return "md5", words[0].lower()
    return kind, value.lower()


def _wait(attempt: int, retries: int, remote: RemoteFile, err: Exception) -> None:
    print(f"nucleotron data fetch: {remote.filename}: attempt {attempt}/{retries} failed ({err}); resuming",
          file=sys.stderr)
    if attempt < retries:
        time.sleep(min(30.0, 0.2 * 2 ** attempt))


def fetch_manifest(manifest: str, out_dir: str, jobs: int = 4, retries: int = 5,
                   only: Optional[List[str]] = None) -> str:
    """Fetch every file (optionally only some assemblies); write OUT/sources.tsv; return its path."""
    from tqdm import tqdm

    remotes = read_fetch_manifest(manifest)
    if only:
        unknown = set(only) - {r.assembly for r in remotes}
        if unknown:
            raise DataPrepError(f"--only: assemblies {sorted(unknown)} are not in {manifest}")
        remotes = [r for r in remotes if r.assembly in only]
    os.makedirs(out_dir, exist_ok=True)
    ncbi = _NcbiChecksums()
    bar = tqdm(unit="B", unit_scale=True, desc="fetching", file=sys.stderr)
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        digests = list(pool.map(lambda r: fetch_file(r, out_dir, retries, ncbi, advance), remotes))
    bar.close()
    sources = os.path.join(out_dir, "sources.tsv")
    with open(sources + ".part", "w") as handle:
        handle.write("path\tgroup\tassembly\tspecies\n")
        for remote in remotes:
            handle.write(f"{remote.filename}\t{remote.group}\t{remote.assembly}\t{remote.species}\n")
    os.replace(sources + ".part", sources)
    for remote, digest in zip(remotes, digests):
        print(f"{digest}  {remote.filename}")
    return sources
