"""Training engines behind the seam in train/engine.py, one module each."""
