"""The process a script runs as: torchrun ranks, the thread count, OpenMP settings, the inference session."""
