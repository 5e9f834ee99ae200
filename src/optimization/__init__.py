"""Hyperparameter search with Optuna: search space, storage, per-trial objective, the study runner
(runner.run_study, runner.train_best) and the report."""
