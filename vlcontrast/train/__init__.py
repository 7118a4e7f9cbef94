"""Training: optimizer and schedule, checkpoints, metric logs and the loop."""
