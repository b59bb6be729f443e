"""vr: train, export, evaluate and submit image classifiers."""

__version__ = "0.1.0"
