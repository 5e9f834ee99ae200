"""Running a model, below training, evaluation and export alike: how each step runs (device,
precision, memory format), the probability reading of logits, batched prediction, and the metrics.

Nothing here imports src.training, src.evaluation or src.deploy: they all import this."""
