"""k-mer gather + window mean (the definition of m) and Gengram's key/value from projected tables; the gate."""
from .kmer_gather import kmer_window_mean
from .projected import kmer_key_value
from .reference import document_starts, kmer_window_mean_reference

__all__ = ["kmer_window_mean", "kmer_key_value", "kmer_window_mean_reference", "document_starts"]
