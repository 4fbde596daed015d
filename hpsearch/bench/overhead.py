"""Framework overhead per trial: the time a trial spends outside its training.

The default study runs on a real store with its real sampler, pruner, objective, checkpoints
and callbacks; only `fit` is replaced by one that trains nothing and reports a plausible curve,
so every second measured is bookkeeping. Optuna's and hpsearch's calls are wrapped with
timers, and each trial's time is split into:

- ask: `study.ask()` (a new trial row, relative sampling);
- suggest: the sampler drawing the trial's parameters (TPE reads every finished trial here);
- report+prune: `trial.report` and `trial.should_prune` after every epoch (the pruner reads
  the finished trials' curves here);
- hpsearch: the objective's own writes (owner with its device, model size, the history
  when the trial ends, weights) and checkpoints;
- tell: `study.tell`, which stores the outcome;
- callbacks: from the end of tell to the next ask (Optuna fetching the finished trial,
  checking for stale trials and starting the heartbeat, and hpsearch's callbacks: the trial
  target, failure streak and progress).

`python -m hpsearch.bench.overhead --storage URL --at 50,1000` prints the mean milliseconds per
trial of each part over the 50 trials up to each count, as JSON. With `--bare`, the same
study on the same store runs a bare objective under Optuna's own loop: the parameters drawn,
the curve reported, the pruner asked, nothing else. That is the floor of what any objective
costs on that store; the difference is hpsearch's.

Timing Optuna's steps means wrapping them for the duration of a measurement (`instrumented`),
`Study.ask` and the optimize loop's tell among them: nothing in hpsearch itself does so.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import optuna

PARTS = ("ask", "suggest", "report+prune", "hpsearch", "tell", "callbacks")
WINDOW = 50  # trials averaged at each count


class Timers:
    """Seconds per (trial number, part)."""

    def __init__(self):
        self.seconds = defaultdict(lambda: defaultdict(float))
        self.current = None  # the trial being run
        self.told_at = None  # when the last tell ended

    def add(self, part: str, seconds: float, number=None) -> None:
        self.seconds[self.current if number is None else number][part] += seconds

    def wrap(self, owner, name: str, part: str, after=None):
        """Replace owner.name by a timed version; `after(result)` sees the result first."""
        original = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = original(*args, **kwargs)
            if after is not None:
                after(result)
            timers.add(part, time.perf_counter() - start)
            return result

        setattr(owner, name, timed)
        return original


def synthetic_curve(lr: float, seed: int, epochs: int):
    """Validation accuracy per epoch that depends on the learning rate, so the pruner and TPE
    have something to tell apart."""
    rng = random.Random(seed)
    quality = max(0.0, 1.0 - abs(math.log10(lr) + 2.5) / 2.5)
    for epoch in range(1, epochs + 1):
        yield min(1.0, 0.2 + 0.79 * quality * (1 - math.exp(-epoch / 3)) + rng.gauss(0, 0.01))


def synthetic_fit(model, data, s, device, on_epoch_end=None, resume=None, save_state=None,
                  timers=None):
    """Stands in for `train.fit`: no training, the same hooks in the same order (report, then
    the checkpoint of every epoch but the last) and the synthetic curve. The checkpoints hold
    what fit's do: the model, and the optimizer with its state after one step (timed as
    "training", which is not overhead), set up and saved by fit's own helpers."""
    import torch

    from hpsearch.precision import choose_precision
    from hpsearch.train import History, training_net, training_state

    begin = time.perf_counter()
    padded, net, optimizer = training_net(model, s, device)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # the moments a real epoch leaves behind, for an honest checkpoint size
    gen = torch.Generator().manual_seed(s.seed)
    precision = choose_precision(device, s.precision)
    if timers is not None:
        timers.add("training", time.perf_counter() - begin)
    history = History()
    try:
        for epoch, acc in enumerate(synthetic_curve(s.lr, s.seed, s.epochs), start=1):
            history.add(1 - acc, acc, 1 - acc, acc, 0.0)
            if on_epoch_end is not None:
                on_epoch_end(epoch, history)
            if save_state is not None and epoch < s.epochs:
                save_state(epoch, training_state(padded, net, optimizer, precision, gen,
                                                 history, device))
    finally:
        padded.copy_back()  # as fit does, however the trial ends
    return history


def bare_objective(cfg):
    """What Optuna itself needs of a trial: its parameters drawn, the same curve reported and
    the pruner asked after each epoch. No attributes, checkpoints or weights: the floor that
    hpsearch's bookkeeping adds to."""
    from hpsearch import objective as objective_module

    def objective(trial: optuna.Trial) -> float:
        params = objective_module.suggest_params(trial, cfg)  # looked up late: it is timed
        seed = cfg.study.seed * 100_003 + trial.number
        for epoch, acc in enumerate(synthetic_curve(params["lr"], seed, cfg.train.epochs),
                                    start=1):
            trial.report(acc, step=epoch)
            if epoch < cfg.train.epochs and trial.should_prune():
                raise optuna.TrialPruned()
        return acc

    return objective


@contextmanager
def instrumented(timers: Timers):
    """Optuna's and hpsearch's entry points wrapped with timers for the duration."""
    from optuna.trial import Trial

    from hpsearch import checkpoint, objective, private

    def asked(trial):
        # The ask's time is only known to belong to this trial once it returns.
        timers.current = trial.number
        if timers.told_at is not None:
            timers.add("callbacks", start_of_ask[0] - timers.told_at, number=previous[0])
        previous[0] = trial.number

    start_of_ask, previous = [0.0], [None]
    original_ask = optuna.Study.ask

    def ask(study, *args, **kwargs):
        start_of_ask[0] = time.perf_counter()
        trial = original_ask(study, *args, **kwargs)
        asked(trial)
        timers.add("ask", time.perf_counter() - start_of_ask[0])
        return trial

    def told(_):
        timers.told_at = time.perf_counter()

    saved = [(optuna.Study, "ask", original_ask)]
    optuna.Study.ask = ask
    for owner, name, part, after in (
            (*private.optimize_tell(), "tell", told),
            (objective, "suggest_params", "suggest", None),
            (Trial, "report", "report+prune", None),
            (Trial, "should_prune", "report+prune", None),
            (checkpoint.TrialCheckpoint, "save", "checkpoint", None)):
        saved.append((owner, name, timers.wrap(owner, name, part, after)))
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def measure(storage_url: str, at: tuple, workdir: Path, bare: bool = False) -> dict:
    """Run max(at) trials of the default study with synthetic training on `storage_url`;
    mean milliseconds per trial of each part over the WINDOW trials up to each count. With
    `bare`, the trials run `bare_objective` under Optuna's own loop instead of hpsearch's."""
    from hpsearch import private
    from hpsearch.config import load_config
    from hpsearch.console import progress_bar
    from hpsearch.session import RunOptions, Session
    from hpsearch.sqlite import sync_finished_trials

    n = max(at)
    name = f"overhead-{time.time_ns()}"
    cfg = load_config(None, [f"study.name='{name}'", f"study.trials={n}"])
    options = RunOptions(storage=storage_url, device="cpu",
                         artifacts=str(workdir / "artifacts"),
                         checkpoints=str(workdir / "checkpoints"))
    session = Session.open(cfg, options)  # as `hpsearch run` opens it
    study, spec = session.study, session.spec
    storage = private.storage_of(study)
    timers = Timers()
    if bare:
        objective = bare_objective(cfg)
    else:
        objective = session.objective(trainer=partial(synthetic_fit, timers=timers))
    try:
        with instrumented(timers):
            start = time.perf_counter()

            def timed_objective(trial):
                begin = time.perf_counter()
                try:
                    return objective(trial)
                finally:
                    timers.add("objective", time.perf_counter() - begin)

            if bare:
                study.optimize(timed_objective, n_trials=n,
                               callbacks=[sync_finished_trials(spec)])
            else:
                with progress_bar(study, n, 0, quiet=True) as bar:
                    session.run(callbacks=(bar,), objective=timed_objective)
            end = time.perf_counter()
            timers.add("callbacks", end - timers.told_at)
    finally:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except Exception:
            pass
    return {"storage": spec.kind, "bare": bare, "trials": n, "seconds": end - start,
            "ms_per_trial": summarize(timers, at)}


def summarize(timers: Timers, at: tuple) -> dict:
    """Mean milliseconds of each part over the WINDOW trials up to each count in `at`; the
    objective's time less the sampler's, the pruner's and the stand-in training's is
    hpsearch's own."""
    per_trial = {}
    for number, parts in timers.seconds.items():
        row = {part: parts[part] for part in PARTS if part != "hpsearch"}
        row["hpsearch"] = (parts["objective"] - parts["suggest"] - parts["report+prune"]
                           - parts["training"])
        per_trial[number] = row
    windows = {}
    for count in at:
        numbers = [k for k in per_trial if count - min(WINDOW, count) <= k < count]
        ms = {part: 1000 * sum(per_trial[k][part] for k in numbers) / len(numbers)
              for part in PARTS}
        ms["total"] = sum(ms.values())
        ms["of which checkpoints"] = 1000 * sum(
            timers.seconds[k]["checkpoint"] for k in numbers) / len(numbers)
        windows[str(count)] = ms
    return windows


def main() -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--at", default="50,1000")
    parser.add_argument("--bare", action="store_true",
                        help="Optuna's loop and a bare objective: the floor without hpsearch")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    at = tuple(int(v) for v in args.at.split(","))
    with tempfile.TemporaryDirectory(prefix="hpsearch-overhead-") as tmp:
        url = args.storage.replace("{tmp}", tmp)
        print(json.dumps(measure(url, at, Path(tmp), bare=args.bare)))


if __name__ == "__main__":
    main()
