"""Use trained models: export and import, sequence and variant scoring, embeddings, probes, analysis."""
