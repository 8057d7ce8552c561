"""k-mer gather + window mean: the PyTorch reference, the Triton kernels and the autograd Function."""
