"""Training: loss, metrics, optimiser and scheduler, callbacks and the functional loop."""
