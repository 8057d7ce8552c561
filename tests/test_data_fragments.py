"""The per-record fast path against plain-Python references: N runs, fragment filters, reverse complement, writing."""
import os

import numpy as np
import pytest

from nucleotron.data_prep import documents
from nucleotron.data_prep import tokens as tk
from nucleotron.data_prep.fragments import FragmentRules, cut_arrays, n_runs

COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def random_tokens(seed, size, n_density, run_lengths=(1, 3, 150)):
    rng = np.random.default_rng(seed)
    arr = rng.choice(np.array([tk.A, tk.C, tk.G, tk.T], np.uint8), size)
    for _ in range(int(size * n_density)):
        start = int(rng.integers(0, size))
        arr[start:start + int(rng.choice(run_lengths))] = tk.N
    return arr.tobytes()


def reference_runs(tokens):
    is_n = np.frombuffer(tokens, np.uint8) == tk.N
    edges = np.flatnonzero(np.diff(np.concatenate([[0], is_n.astype(np.int8), [0]])))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


@pytest.mark.parametrize("density", [0.0, 0.0005, 0.05, 0.4])       # the two dense ones leave the memchr hops
def test_n_runs_match_a_full_scan(density):
    for seed in range(3):
        tokens = bytearray(random_tokens(seed, 50_000, density))
        starts, ends = n_runs(tokens)
        assert list(zip(starts.tolist(), ends.tolist())) == reference_runs(tokens)
    all_n = tk.N_BYTE * 5000
    assert [r.tolist() for r in n_runs(all_n)] == [[0], [5000]]


def test_cut_drops_gaps_short_tails_and_n_rich_fragments():
    tokens = random_tokens(7, 60_000, 0.002, run_lengths=(1, 2, 40, 120))
    rules = FragmentRules(seq_len=1000, min_len=300, n_run=100, max_n_fraction=0.02, rc_probability=0.5, seed=3)
    starts, lengths, reverse = cut_arrays(len(tokens), n_runs(tokens), rules, "asm", "chr1")
    text = tokens.translate(tk.TOKEN_TO_BYTE.tobytes()).decode()
    expected, cursor = [], 0
    for gap_start, gap_end in [r for r in reference_runs(tokens) if r[1] - r[0] >= 100] + [(len(text), len(text))]:
        for start in range(cursor, gap_start, 1000):
            length = min(1000, gap_start - start)
            if length >= 300 and text.count("N", start, start + length) <= 0.02 * length:
                expected.append((start, length))
        cursor = gap_end
    assert list(zip(starts.tolist(), lengths.tolist())) == expected
    assert 0 < reverse.sum() < len(reverse)


def test_reverse_complement_into_with_n_spans():
    text = "ACGTTNNAGGCNATTACCA"
    tokens = np.frombuffer(text.encode().translate(tk.BYTE_TO_TOKEN.tobytes()), np.uint8)
    for start, end in [(0, len(text)), (3, 12), (6, 7)]:
        out = np.full(32, 99, np.uint8)
        spans = [(max(s, start), min(e, end)) for s, e in [(5, 7), (11, 12)] if s < end and e > start]
        tk.reverse_complement_into(tokens, start, end, out, spans)
        assert tk.decode(out[:end - start]) == text[start:end][::-1].translate(COMPLEMENT)
        assert out[end - start] == 99, "writes nothing past its slice"


@pytest.mark.parametrize("batch", [1, 3, 512])
def test_write_documents_equals_concatenated_documents(tmp_path, monkeypatch, batch):
    monkeypatch.setattr(documents, "_DOCS_PER_CALL", batch)
    tokens = bytearray(random_tokens(11, 20_000, 0.001, run_lengths=(1, 5)))
    rules = FragmentRules(seq_len=700, min_len=1, n_run=100, max_n_fraction=1.0, rc_probability=0.6, seed=1)
    runs = n_runs(tokens)
    starts, lengths, reverse = cut_arrays(len(tokens), runs, rules, "asm", "chr9")
    text = bytes(tokens).translate(tk.TOKEN_TO_BYTE.tobytes()).decode()
    expected = "".join((text[s:s + n][::-1].translate(COMPLEMENT) if r else text[s:s + n]) + "|"
                       for s, n, r in zip(starts.tolist(), lengths.tolist(), reverse.tolist()))
    path = tmp_path / "pack.bin"
    path.write_bytes(b"\xee" * 100)
    fd = os.open(path, os.O_WRONLY)
    try:
        written = documents.write_documents(fd, 100, tokens, runs, starts, lengths, reverse)
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data[:100] == b"\xee" * 100 and written == len(data) - 100
    body = np.frombuffer(data[100:], np.uint8)
    got = "".join("|" if t == tk.EOD else tk.decode(bytes([t])) for t in body.tolist())
    assert got == expected
