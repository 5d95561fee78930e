"""The scheduled retraining cadence: state, tick, promotion gate, schedules."""
