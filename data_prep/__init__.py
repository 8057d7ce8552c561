"""FASTA -> single-nucleotide token packs (.bin/.idx) with a manifest proving the groups' token mix (1:1 human:non-human
by default, any declared groups and weights with --group-weights)."""
