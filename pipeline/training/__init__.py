"""What training is made of: the loss table, optimisers and LR schedules, the --recipe presets."""
