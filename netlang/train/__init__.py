"""Training: data sets, augmentation, optimizers, schedules, metrics, checkpoints, the loop."""
