"""``mdctr tune``: Optuna studies of a train config's ``tune:`` space (space, objective, study)."""
