"""Training: data sets and splits, the training loop, evaluation metrics and reports, plots, and the recipe of the
shipped models. It builds on :mod:`mcdrop.core` and writes checkpoints; it never imports :mod:`mcdrop.serving`."""
