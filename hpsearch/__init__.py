"""hpsearch: hyperparameter search for image classifiers, built on Optuna and PyTorch.

In a notebook: `hpsearch.run(...)`, `hpsearch.load(...)`, `hpsearch.load_model(...)` and
`hpsearch.dashboard(...)` (see hpsearch.api). They load on first use, so that the command
line starts without them.
"""

__version__ = "0.1.0"

_API = ("run", "load", "load_model", "dashboard", "Study", "Model", "HpsearchError")


def __getattr__(name: str):
    if name in _API:
        from hpsearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
