"""hpsearch: hyperparameter search for image classifiers, built on Optuna and PyTorch."""

__version__ = "0.1.0"
