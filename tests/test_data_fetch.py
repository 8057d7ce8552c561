"""`data fetch` against a local HTTP server on 127.0.0.1: Range resume, checksum checks, no partial final files."""
import hashlib
import http.server
import os
import threading

import pytest

from nucleotron.data_prep.cli import main as data_main
from nucleotron.data_prep.errors import DataPrepError
from nucleotron.data_prep.fetch import fetch_manifest

PAYLOADS = {"a_genomic.fna.gz": os.urandom(300_000), "b_genomic.fna.gz": os.urandom(123_457)}


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOADS and an NCBI-style md5checksums.txt; honours Range; can cut the first response short."""
    cut_once = set()      # file names whose next full-body response is cut in the middle
    log = []

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name.endswith(".md5") and name[:-4] in PAYLOADS:
            return self._send(200, f"{hashlib.md5(PAYLOADS[name[:-4]]).hexdigest()}  {name[:-4]}\n".encode(), {})
        if name == "md5checksums.txt":
            body = "".join(f"{hashlib.md5(v).hexdigest()}  ./{k}\n" for k, v in PAYLOADS.items()).encode()
            return self._send(200, body, {})
        if name not in PAYLOADS:
            return self._send(404, b"missing", {})
        data, start = PAYLOADS[name], 0
        header = self.headers.get("Range")
        self.log.append((name, header))
        if header:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if header else {}
        if name in self.cut_once:
            self.cut_once.discard(name)
            self.send_response(206 if header else 200)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(206 if header else 200, body, extra)

    def _send(self, code, body, headers):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.log.clear()
    RangeHandler.cut_once.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/genomes/all"
    httpd.shutdown()
    httpd.server_close()


def manifest(tmp_path, base, checks):
    lines = ["assembly\tgroup\tspecies\taccession\turl\tchecksum"]
    for (name, check), group in zip(checks.items(), ("human", "nonhuman")):
        lines.append(f"{name[0]}\t{group}\tsp {name[0]}\tGCA_0\t{base}/{name}\t{check}")
    path = tmp_path / "m.tsv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_parallel_fetch_verifies_and_writes_sources(tmp_path, server):
    sha_a = hashlib.sha256(PAYLOADS["a_genomic.fna.gz"]).hexdigest()
    m = manifest(tmp_path, server, {"a_genomic.fna.gz": f"sha256:{sha_a}", "b_genomic.fna.gz": "ncbi-md5"})
    assert data_main(["fetch", m, "--out", str(tmp_path / "dl"), "--jobs", "2"]) == 0
    for name, data in PAYLOADS.items():
        assert (tmp_path / "dl" / name).read_bytes() == data
        assert (tmp_path / "dl" / f"{name}.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "dl" / "sources.tsv").read_text().splitlines() == [
        "path\tgroup\tassembly\tspecies", "a_genomic.fna.gz\thuman\ta\tsp a", "b_genomic.fna.gz\tnonhuman\tb\tsp b"]
    RangeHandler.log.clear()
    fetch_manifest(m, str(tmp_path / "dl"))
    assert RangeHandler.log == [], "verified files are not downloaded again"


def test_resumes_with_range_after_interruption(tmp_path, server):
    RangeHandler.cut_once.add("a_genomic.fna.gz")
    m = manifest(tmp_path, server, {"a_genomic.fna.gz": f"md5-file:{server}/a_genomic.fna.gz.md5"})
    fetch_manifest(m, str(tmp_path / "dl"), retries=3)
    assert (tmp_path / "dl" / "a_genomic.fna.gz").read_bytes() == PAYLOADS["a_genomic.fna.gz"]
    assert RangeHandler.log == [("a_genomic.fna.gz", None), ("a_genomic.fna.gz", "bytes=100000-")]


def test_unverifiable_file_records_its_sha256(tmp_path, server):
    fetch_manifest(manifest(tmp_path, server, {"b_genomic.fna.gz": "none"}), str(tmp_path / "dl"))
    digest = hashlib.sha256(PAYLOADS["b_genomic.fna.gz"]).hexdigest()
    assert (tmp_path / "dl" / "b_genomic.fna.gz.sha256").read_text() == f"{digest}  b_genomic.fna.gz\n"


def test_resumes_a_part_file_left_by_a_killed_run(tmp_path, server):
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "b_genomic.fna.gz.part").write_bytes(PAYLOADS["b_genomic.fna.gz"][:5000])
    fetch_manifest(manifest(tmp_path, server, {"b_genomic.fna.gz": "ncbi-md5"}), str(tmp_path / "dl"))
    assert RangeHandler.log == [("b_genomic.fna.gz", "bytes=5000-")]
    assert (tmp_path / "dl" / "b_genomic.fna.gz").read_bytes() == PAYLOADS["b_genomic.fna.gz"]
    assert not (tmp_path / "dl" / "b_genomic.fna.gz.part").exists()


def test_checksum_mismatch_leaves_no_file_under_the_final_name(tmp_path, server):
    m = manifest(tmp_path, server, {"a_genomic.fna.gz": "md5:" + "0" * 32})
    with pytest.raises(DataPrepError, match="a_genomic.fna.gz: md5 .* does not match the expected 0000"):
        fetch_manifest(m, str(tmp_path / "dl"))
    assert os.listdir(tmp_path / "dl") == []


def test_missing_url_is_reported(tmp_path, server, capsys):
    m = manifest(tmp_path, server, {"zzz.fna.gz": "none"})
    assert data_main(["fetch", m, "--out", str(tmp_path / "dl")]) == 1
    assert f"{server}/zzz.fna.gz: HTTP 404" in capsys.readouterr().err
