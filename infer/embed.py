"""`nucleotron embed MODEL --sequences FILE --out OUT.{parquet,npy}`: frozen features for downstream use.

Layer L's output (0 = token embedding, L = the last layer before the final norm; the default, "final", is the
final-normed output the LM head reads) at every base of each sequence, read after an EOD like in training.
`--pool mean` (default) writes one vector per sequence; `--pool none` writes every position: Parquet rows with a
list of vectors, or a [sequences, length, hidden] .npy when all sequences have the same length.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch

from .sequences import InputError, encoder, read_sequences


def layer_index(layer: str, num_layers: int) -> Optional[int]:
    """None for "final" (after the final norm), else 0..num_layers."""
    if layer == "final":
        return None
    if not layer.lstrip("-").isdigit() or not -num_layers - 1 <= int(layer) <= num_layers:
        raise InputError(f"--layer {layer!r}: use 'final' or a layer number 0..{num_layers} (0 = token embedding)")
    return int(layer) % (num_layers + 1)


@torch.no_grad()
def embed(lm, sequences: Sequence[str], layer: str = "final", pool: str = "mean", batch_size: int = 8,
          names: Optional[Sequence[str]] = None, progress: bool = False) -> List[np.ndarray]:
    """One float32 array per sequence: [hidden] (pool="mean") or [bases, hidden] (pool="none")."""
    from tqdm import tqdm

    model = lm.model
    index = layer_index(layer, model.config.num_hidden_layers)
    encode = encoder(lm.vocab)
    names = names or [str(i) for i in range(len(sequences))]
    tokens = []
    for name, sequence in zip(names, sequences):
        ids = encode(sequence, f"sequence {name!r}")
        if not 0 < len(ids) < lm.seq_len:
            raise InputError(f"sequence {name!r} has {len(ids)} bases; embeddings need 1..{lm.seq_len - 1} "
                             f"(the model's context): split longer sequences")
        tokens.append(np.concatenate([[lm.vocab["EOD"]], ids]))
    out: List[Optional[np.ndarray]] = [None] * len(tokens)
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    device = lm.device
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress or len(starts) < 2):
        chosen = order[start:start + batch_size]
        length = max(len(tokens[i]) for i in chosen)
        ids = torch.full((len(chosen), length), lm.vocab["PAD"], dtype=torch.long)
        for row, i in enumerate(chosen):
            ids[row, :len(tokens[i])] = torch.from_numpy(tokens[i].astype(np.int64))
        final, states = model.model(ids.to(device), output_hidden_states=index is not None)
        hidden = (final if index is None else states[index]).float().cpu().numpy()
        for row, i in enumerate(chosen):
            per_base = hidden[row, 1:len(tokens[i])]          # the bases, not the leading EOD
            out[i] = per_base.mean(axis=0) if pool == "mean" else per_base
    return out


def write_embeddings(path: str, names: Sequence[str], vectors: List[np.ndarray], pool: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    if path.endswith(".npy"):
        if pool == "none" and len({v.shape for v in vectors}) > 1:
            raise InputError(f"{path}: per-position embeddings of sequences of different lengths do not fit one "
                             f".npy array; write .parquet instead")
        with open(tmp, "wb") as handle:
            np.save(handle, np.stack(vectors))
    elif path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        column = [v.tolist() for v in vectors]
        pq.write_table(pa.table({"id": list(names), "embedding": column}), tmp)
    else:
        raise InputError(f"{path}: write .parquet or .npy")
    os.replace(tmp, path)


def main(argv: List[str]) -> int:
    from .score import add_model_arguments

    parser = argparse.ArgumentParser(prog="nucleotron embed", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--sequences", required=True, help="FASTA or table (.tsv/.csv/.parquet)")
    parser.add_argument("--sequence-column", default="sequence")
    parser.add_argument("--layer", default="final", help="'final' (default) or 0..num_layers (0 = token embedding)")
    parser.add_argument("--pool", choices=["mean", "none"], default="mean", help="mean over bases, or every base")
    parser.add_argument("--out", required=True, help="OUT.parquet (id, embedding) or OUT.npy")
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .loading import load_model

    try:
        names, sequences = read_sequences(args.sequences, args.sequence_column)
        lm = load_model(args.model, args.device)
        vectors = embed(lm, sequences, args.layer, args.pool, args.batch_size, names, progress=True)
        write_embeddings(args.out, names, vectors, args.pool)
    except (InputError, CheckpointError) as err:
        print(f"nucleotron embed: {err}", file=sys.stderr)
        return 2
    print(f"embedded {len(vectors)} sequence(s) -> {args.out}")
    return 0
