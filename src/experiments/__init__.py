"""Experiments made of several runs, above training and evaluation: k-fold cross-validation."""
