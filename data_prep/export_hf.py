"""`nucleotron data export-hf DIR OUT`: a pack as Parquet files that `datasets.load_dataset` reads offline.

Layout: OUT/data/{split}-00000-of-00001.parquet with one row per document (every group in each split), columns
sequence (ACGTN string, as stored: reverse-complemented where strand says so; acgtn where a `--soft-mask` pack
marks a base soft-masked), group, assembly, record, start, length, strand ('+' or '-'). Written one row group per
dataset chunk, so memory stays bounded.
`datasets.load_dataset("parquet", data_files={"train": "OUT/data/train-*.parquet", ...})` or
`load_dataset("OUT")` load it.
"""
from __future__ import annotations

import csv
import os

import numpy as np

from . import tokens as tk
from .errors import DataPrepError
from .manifest import load_manifest
from .writer import read_document_lengths

ROWS_PER_GROUP = 256


def export_hf(directory: str, out: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = load_manifest(directory)
    if os.path.exists(out):
        raise DataPrepError(f"{out} already exists; choose a new output folder")
    assemblies = [s["assembly"] for s in manifest.raw["sources"]]
    with open(os.path.join(manifest.directory, "contigs.tsv")) as handle:
        names = [row["record"] for row in csv.DictReader(handle, delimiter="\t")]
    record_offset = np.cumsum([0] + [s["records"] for s in manifest.raw["sources"]])
    schema = pa.schema([("sequence", pa.string()), ("group", pa.string()), ("assembly", pa.string()),
                        ("record", pa.string()), ("start", pa.int64()), ("length", pa.int32()),
                        ("strand", pa.string())])
    tmp = out + ".part"
    os.makedirs(os.path.join(tmp, "data"), exist_ok=True)
    splits = sorted({d["split"] for d in manifest.raw["datasets"].values()})
    for split in splits:
        with pq.ParquetWriter(os.path.join(tmp, "data", f"{split}-00000-of-00001.parquet"), schema) as writer:
            for name, entry in manifest.raw["datasets"].items():
                if entry["split"] != split:
                    continue
                prefix = os.path.join(manifest.directory, entry["prefix"])
                data = np.memmap(prefix + ".bin", dtype=np.uint8, mode="r")
                lengths = read_document_lengths(prefix)
                offsets = np.concatenate(([0], np.cumsum(lengths)))
                docs = np.load(prefix + ".docs.npy")
                for lo in range(0, len(docs), ROWS_PER_GROUP):
                    rows = range(lo, min(lo + ROWS_PER_GROUP, len(docs)))
                    batch = {
                        "sequence": [tk.decode(data[offsets[i]:offsets[i + 1] - 1]) for i in rows],
                        "group": [entry["group"]] * len(rows),
                        "assembly": [assemblies[docs["source"][i]] for i in rows],
                        "record": [names[record_offset[docs["source"][i]] + docs["record"][i]] for i in rows],
                        "start": [int(docs["start"][i]) for i in rows],
                        "length": [int(docs["length"][i]) for i in rows],
                        "strand": ["-" if docs["reverse"][i] else "+" for i in rows],
                    }
                    writer.write_table(pa.table(batch, schema=schema))
    os.rename(tmp, out)
