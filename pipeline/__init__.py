"""CSRA models, heads, backbones, checkpoints and datasets."""
