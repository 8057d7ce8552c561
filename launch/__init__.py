"""How runs start: the `nucleotron` command dispatcher, Slurm and torchrun launchers, sweeps."""
