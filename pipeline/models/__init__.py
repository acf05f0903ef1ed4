"""The model: backbones (the table and timm's), the heads (CSRA, GAP, the head table), the model that joins them,
and how it runs (device, precision, memory format, normalisation)."""
