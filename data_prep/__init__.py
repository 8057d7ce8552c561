"""FASTA -> single-nucleotide token packs (.bin/.idx) with a manifest proving the human:non-human mix."""
