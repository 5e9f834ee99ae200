"""W&B sweeps: the sweep file (spec), its distributions, hyperband, and the local (Optuna) and wandb backends."""
