"""Stages as Ray job entrypoints, the retraining cadence and tuning."""
