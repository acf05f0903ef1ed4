"""What the scripts write and show: atomic writers, progress and ETA, prediction records, heatmaps."""
