"""Every shipped source manifest in configs/data parses, and each NCBI row's URL is the accession's real folder
layout (GCA/000/235/385/ACCESSION_NAME/ACCESSION_NAME_genomic.fna.gz): a typo there is a 404 after hours of fetching."""
import glob
import os
import re

import pytest

from nucleotron.data_prep.fetch import read_fetch_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "configs", "data", "*.tsv")))
NCBI = re.compile(r"https://ftp\.ncbi\.nlm\.nih\.gov/genomes/all/(GC[AF])/(\d{3})/(\d{3})/(\d{3})/"
                  r"((GC[AF])_(\d{9})\.\d+_[^/]+)/\5_genomic\.fna\.gz$")


def test_the_manifests_are_all_found():
    names = {os.path.basename(m) for m in MANIFESTS}
    assert {"references.tsv", "hprc_r2.tsv", "primates_refseq.tsv", "primates_genos.tsv"} <= names


@pytest.mark.parametrize("manifest", MANIFESTS, ids=os.path.basename)
def test_manifest_rows_are_well_formed(manifest):
    rows = read_fetch_manifest(manifest)
    assert rows
    assert len({r.assembly for r in rows}) == len(rows), "assembly names must be unique"
    assert len({r.filename for r in rows}) == len(rows), "two rows would download to the same file name"
    for row in rows:
        if "ncbi.nlm.nih.gov" not in row.url:
            continue
        match = NCBI.match(row.url)
        assert match, row.url
        prefix, a, b, c, folder, prefix2, digits = match.groups()
        assert prefix == prefix2 and digits == a + b + c, row.url
        assert folder.startswith(row.accession + "_"), (row.accession, row.url)
        assert row.checksum == "ncbi-md5"
