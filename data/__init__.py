"""Audio I/O, the embedded synthetic data sets and dataset loading."""
