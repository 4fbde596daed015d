"""hpsearch in a notebook cell: run a study, open one, read its results and use its model.

```python
import hpsearch
study = hpsearch.run("studies/photos.toml", trials=30, data="folder:/content/drive/MyDrive/photos")
study.best              # values, validation and test accuracy
study.plot("history")   # any chart of the report, as a matplotlib Figure
model = study.best_model()
model.predict(["new.jpg"], top_k=3)
```

`run` takes the study the way `hpsearch run` does (hpsearch.runs: one path for both), every
flag as a keyword and every `--set` key as one too (`image_size=64`, `pruner="sha"`,
`space={"depth": [2, 3]}`). Bad input raises HpsearchError with the command line's one-line
message. The kernel's stop button stops a run at its next safe point, as Ctrl-C does; the
cell then ends with one line and running it again resumes the study.
"""

from __future__ import annotations

import functools
import signal
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

# tqdm.auto, which Optuna imports, warns in a notebook without ipywidgets and falls back to
# its text bar, which is what hpsearch shows there anyway.
warnings.filterwarnings("ignore", message="IProgress not found")

from hpsearch.errors import HpsearchError, ReportError  # noqa: E402
from hpsearch.storage import DEFAULT_STORAGE  # noqa: E402
from hpsearch.trained import Model, load_model  # noqa: E402

__all__ = ["run", "load", "load_model", "dashboard", "Study", "Best", "Model",
           "HpsearchError"]


def _user_facing(fn):
    """Bad input surfaces as the HpsearchError it is, without hpsearch's frames (IPython
    hides the wrapper's too: __tracebackhide__)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        __tracebackhide__ = True  # noqa: F841 (read by IPython and pytest)
        try:
            return fn(*args, **kwargs)
        except HpsearchError as err:
            raise err.with_traceback(None) from None

    return wrapper


def _setting_keys() -> dict:
    """{keyword: "section.key"} of every setting of a study file's [study], [data] and
    [train], with `data` for data.dataset and `study_name` for study.name."""
    from hpsearch.config import DataConfig, StudyConfig, TrainConfig

    keys = {f.name: f"{section}.{f.name}" for section, cls in
            (("study", StudyConfig), ("data", DataConfig), ("train", TrainConfig))
            for f in fields(cls)}
    keys.update(data="data.dataset", study_name="study.name")
    del keys["name"]  # study_name, as the flag says it
    return keys


@_user_facing
def run(config: Union[str, Path, None] = None, *, storage: str = DEFAULT_STORAGE,
        device: str = "auto", workers: int = 1, artifacts: Optional[str] = None,
        timeout: Optional[float] = None, quiet: bool = False, verbose: bool = False,
        live: bool = True, set: tuple = (), space: Optional[dict] = None,
        **settings) -> Optional["Study"]:
    """Run the study of the study file `config` (default: the digits study) to its target,
    as `hpsearch run` does, and return it as a Study; a rerun continues it (`trials` and
    `time` are the study's totals). Keywords: the flags of `hpsearch run` (`trials`, `time`,
    `epochs`, `seed`, `backup`, `study_name`, `storage`, `device`, `workers`, `artifacts`,
    `timeout`, `quiet`, `verbose`), any key of the study file's [study], [data] and [train]
    by its name (`data` for the dataset: "folder:PATH"), `space` as a dict like [space], and
    `set` as `--set KEY=VALUE` strings; `live=False` draws no live figure in the cell.
    Stopped by the kernel's stop button: one line, and the Study as stored (None if it was
    not created yet)."""
    from hpsearch import console
    from hpsearch.config import load_config
    from hpsearch.runs import run_study
    from hpsearch.session import RunOptions

    keys = _setting_keys()
    unknown = sorted(k for k in settings if k not in keys)
    if unknown:
        raise HpsearchError(f"run() takes no keyword {', '.join(map(repr, unknown))}; it takes "
                            f"the flags of `hpsearch run` and the keys of a study file: "
                            f"{', '.join(sorted(keys))}")
    flags = {keys[k]: v for k, v in settings.items() if v is not None}
    flags.update({f"space.{k}": v for k, v in (space or {}).items()})
    overrides = [set] if isinstance(set, str) else list(set)
    console.configure_logging(verbose)
    cfg = load_config(config, overrides, flags)
    options = RunOptions(storage=storage, device=device, workers=workers, artifacts=artifacts,
                         timeout=timeout)
    try:
        with _stop_button():
            outcome = run_study(cfg, options, quiet, watch=None if quiet or not live
                                else _live_figure)
    except KeyboardInterrupt:
        console.say("Stopped: the study is intact; run this cell again to continue it (an "
                    "unfinished trial starts again).")
        return _stored(cfg.study.name, storage, artifacts)
    return Study(outcome.session.study, storage, artifacts)


def _live_figure(session):
    from hpsearch.live import in_cell

    return in_cell(session)


@contextmanager
def _stop_button():
    """Ctrl-C and SIGTERM (the kernel's stop button sends the former) recorded and acted on
    at the run's next safe point (see interrupts), for this run only: the notebook's own
    handlers come back afterwards, and no request outlives the run."""
    from hpsearch import interrupts

    names = ("SIGINT", "SIGTERM")
    try:
        before = {name: signal.getsignal(getattr(signal, name)) for name in names}
        interrupts.install()
    except ValueError:  # not the main thread: signals stay the notebook's
        before = None
    try:
        yield
    finally:
        if before is not None:
            for name, handler in before.items():
                signal.signal(getattr(signal, name), handler)
        interrupts.forget()


def _stored(name: str, storage: str, artifacts: Optional[str]) -> Optional["Study"]:
    try:
        return load(name, storage=storage, artifacts=artifacts)
    except HpsearchError:
        return None


@_user_facing
def load(study_name: Optional[str] = None, *, storage: str = DEFAULT_STORAGE,
         config: Union[str, Path, None] = None, artifacts: Optional[str] = None) -> "Study":
    """The stored study `study_name` (default: the study file's name, the digits study's
    without `config`), without running it."""
    from hpsearch.config import load_config
    from hpsearch.storage import load_named_study, open_existing_storage, parse_storage

    spec = parse_storage(storage)
    name = study_name or load_config(config).study.name
    study = load_named_study(open_existing_storage(spec), name)
    return Study(study, storage, artifacts)


@dataclass(frozen=True)
class Best:
    """The best completed trial: its number, every value it trained with, its validation
    accuracy and, once a report or best_model() measured it, its test accuracy."""

    trial: int
    val_accuracy: float
    params: dict
    test_accuracy: Optional[float]
    test_size: Optional[int]
    record: dict  # best_config.json's content

    def __repr__(self) -> str:
        test = ("" if self.test_accuracy is None
                else f", test accuracy {self.test_accuracy:.4f} ({self.test_size} images)")
        values = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        return f"Best(trial {self.trial}: validation accuracy {self.val_accuracy:.4f}{test}; " \
               f"{values})"


class Study:
    """A stored study as objects: `best`, `trials`, `plot(name)`, `report()`, `compare()`,
    `best_model()`. Each reads the store when asked, so it is current while workers run."""

    def __init__(self, study, storage: str = DEFAULT_STORAGE, artifacts: Optional[str] = None):
        from hpsearch.storage import parse_storage

        self.optuna = study  # the optuna.Study itself
        self.name = study.study_name
        self.storage = storage
        self._spec = parse_storage(storage)
        self._artifacts = artifacts

    def __repr__(self) -> str:
        from hpsearch.records import count_finished

        best = self._best_trial()
        found = "no completed trial yet" if best is None else \
            f"best {best.value:.4f} (trial {best.number})"
        return f"<hpsearch Study {self.name!r}: {count_finished(self.optuna)} trials " \
               f"finished, {found}>"

    def _best_trial(self):
        from hpsearch.report.collect import best_trial

        return best_trial(self.optuna.get_trials(deepcopy=False))

    def _record(self, trial) -> dict:
        from hpsearch import records
        from hpsearch.report import collect

        settings = collect.study_settings(self.optuna)
        return collect.best_config(self.optuna, trial, settings, records.config_of(settings))

    @property
    def best(self) -> Optional[Best]:
        """The best completed trial (None before one completes)."""
        from hpsearch.records import tested_of

        trial = self._best_trial()
        if trial is None:
            return None
        tested = tested_of(self.optuna, trial.number) or {}
        record = self._record(trial)
        return Best(trial.number, float(trial.value), record["params"],
                    tested.get("test_accuracy"), tested.get("test_size"), record)

    @property
    def trials(self):
        """One row per trial: number, state, validation accuracy (a pruned trial's last),
        epochs run, seconds and its searched values; a pandas DataFrame where pandas is
        installed, else a list of dicts."""
        from hpsearch.records import history_of

        rows = []
        for t in self.optuna.get_trials(deepcopy=False):
            last = t.intermediate_values[max(t.intermediate_values)] \
                if t.intermediate_values else None
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
                if t.datetime_complete and t.datetime_start else None
            rows.append({"trial": t.number, "state": t.state.name,
                         "val_accuracy": t.value if t.value is not None else last,
                         "epochs": len(t.intermediate_values), "seconds": seconds,
                         "train_seconds": sum(history_of(t).get("epoch_seconds") or []),
                         **t.params})
        try:
            import pandas
        except ImportError:
            return rows
        return pandas.DataFrame(rows).set_index("trial") if rows else pandas.DataFrame()

    def plot(self, name: str = "history"):
        """The report's chart `name` as a matplotlib Figure (shown inline when it ends a
        cell): history, epochs, curves, comparison, parallel or importance."""
        from hpsearch.report.results import FIGURE_NAMES, study_figure

        if name not in FIGURE_NAMES:
            raise HpsearchError(f"no chart {name!r}; the charts are {', '.join(FIGURE_NAMES)}")
        figure = study_figure(self.optuna, name)
        if figure is None:
            raise HpsearchError(f"study {self.name!r} has too few finished trials for the "
                                f"{name} chart yet")
        _inline_figures()
        return figure

    @_user_facing
    def report(self, out: Union[str, Path, None] = None, show: bool = True,
               retrain: bool = False, device: str = "auto") -> Path:
        """Write the report (report.md, .html, .pdf, charts, best_config.json, next.toml)
        into `out` (default: reports/<study> beside the store), show it in the cell, and
        return its folder."""
        from hpsearch.board import report_and_attach
        from hpsearch.storage import beside_store
        from hpsearch.train import resolve_device

        folder = Path(out).expanduser().resolve() if out else \
            beside_store(self._spec, "reports") / self.name
        report_and_attach(self.optuna, self._spec, folder, self._artifacts,
                          retrain_device=resolve_device(device) if retrain else None)
        if show:
            _show_html(folder / "report.html")
        return folder

    @_user_facing
    def compare(self, *others: "Study", out: Union[str, Path, None] = None,
                show: bool = True) -> Path:
        """This study beside `others` of the same store: histories, best against time and a
        table, written into `out` and shown in the cell; returns the folder."""
        from hpsearch.report.compare import make_comparison
        from hpsearch.storage import beside_store

        if not others:
            raise HpsearchError("compare() needs another study: study.compare(other)")
        studies = [self.optuna, *(o.optuna for o in others)]
        default = beside_store(self._spec, "reports") / \
            ("compare-" + "-".join(s.study_name for s in studies))[:120]
        folder = Path(out).expanduser().resolve() if out else default
        make_comparison(studies, folder)
        if show:
            _show_html(folder / "report.html")
        return folder

    @_user_facing
    def best_model(self, device: str = "cpu") -> Model:
        """The best trial's model with what it needs to predict (see trained.Model): its own
        weights from the artifact folder, or, where it saved none, retrained with its seed
        on its training split (said in one line)."""
        from hpsearch import best as best_weights
        from hpsearch import console
        from hpsearch.train import resolve_device

        trial = self._best_trial()
        if trial is None:
            raise ReportError(f"study {self.name!r} has no completed trial yet")
        record = self._record(trial)
        state, why = best_weights.trial_weights(trial, self._artifact_store(), self.optuna)
        if state is None:
            console.say(f"Retraining trial {trial.number} with its seed: {why}.")
            state = self._retrained(record, resolve_device(device))
        return Model.from_state(state, record).to(resolve_device(device))

    def _retrained(self, record: dict, device) -> dict:
        from hpsearch import records
        from hpsearch.best import retrain
        from hpsearch.data import study_data
        from hpsearch.model import cpu_state_dict
        from hpsearch.precision import usable
        from hpsearch.report import collect

        settings = collect.study_settings(self.optuna)
        cfg = records.config_of(settings)
        data = study_data(cfg, record["split_seed"], record.get("data_fingerprint"), device)
        model = retrain(record["params"], record["epochs"], record["seed"], data, device,
                        usable(device, record.get("precision", "auto")))
        return cpu_state_dict(model)

    def _artifact_store(self):
        from hpsearch.storage import existing_artifacts

        return existing_artifacts(self._spec, self._artifacts)


class Dashboard:
    """optuna-dashboard serving a study's store from a background process (`hpsearch
    dashboard`); `stop()` ends it, as does the notebook's end."""

    def __init__(self, process, url: str, proxied: Optional[str] = None):
        self.process, self.url, self.proxied = process, url, proxied

    def __repr__(self) -> str:
        return f"<hpsearch Dashboard at {self.proxied or self.url}>"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@_user_facing
def dashboard(study: Union["Study", str, None] = None, *, storage: str = DEFAULT_STORAGE,
              port: int = 8080, height: int = 700) -> Dashboard:
    """Start optuna-dashboard on the store of `study` (a Study, or a storage URL; default:
    the default store) in the background and show it: in Colab inside the cell (its
    proxied link printed too), elsewhere as the local address to open."""
    from hpsearch import console
    from hpsearch.board import start_in_background
    from hpsearch.storage import open_existing_storage, parse_storage

    url_of_store = study.storage if isinstance(study, Study) else (study or storage)
    open_existing_storage(parse_storage(url_of_store))  # a store that exists, or one line
    process, port = start_in_background(url_of_store, port)
    local = f"http://127.0.0.1:{port}/"
    board = Dashboard(process, local, _colab_iframe(port, height))
    console.say(f"Dashboard: {board.proxied or local} (dashboard.stop() ends it)")
    return board


def _colab_iframe(port: int, height: int) -> Optional[str]:
    """In Colab: the dashboard shown in the cell through Colab's proxy of the kernel's
    port, and the proxied address (None elsewhere)."""
    try:
        from google.colab import output
    except ImportError:
        return None
    output.serve_kernel_port_as_iframe(port, height=str(height))
    return output.eval_js(f"google.colab.kernel.proxyPort({port})")


def _inline_figures() -> None:
    """A Figure that ends a cell shows as its picture, whatever matplotlib backend the
    kernel has (the report's figures are made without pyplot)."""
    from hpsearch.live import in_notebook, png_of

    if in_notebook():
        from IPython import get_ipython
        from matplotlib.figure import Figure

        get_ipython().display_formatter.formatters["image/png"].for_type(
            Figure, lambda fig: png_of(fig, dpi=110))


def _show_html(path: Path) -> None:
    """The page in the cell where IPython runs one; nothing elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return
    if get_ipython() is not None:
        display(HTML(path.read_text(encoding="utf-8")))


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
