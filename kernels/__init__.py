"""k-mer gather + window mean: the PyTorch reference, the Triton kernels and the autograd Function."""
from .kmer_gather import kmer_window_mean
from .reference import document_starts, kmer_window_mean_reference

__all__ = ["kmer_window_mean", "kmer_window_mean_reference", "document_starts"]
