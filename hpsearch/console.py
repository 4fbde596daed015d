"""What a person sees in the terminal: the run's header, progress bar and summary, the result
commands' lines, and the output's last flush when the process ends.

Every line hpsearch prints is printed here, so an error raised while printing (a full disk,
a closed terminal) is known to be the output's (see output_failed).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Optional

EXIT_UNWRITABLE = 120  # the output could not be written, as Python's own exit reports it


def configure_logging(verbose: bool, prefix: str = "") -> None:
    """hpsearch's log lines as plain messages; Optuna's only with `verbose`. Optuna logs the
    trial a Ctrl-C stopped with a traceback; hpsearch says it in one line instead."""
    import optuna

    logging.basicConfig(format=f"{prefix}%(message)s", level=logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    if not verbose:
        # Heartbeats and the GP sampler are marked experimental; the warning is noise here.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(_not_ctrl_c)


def _not_ctrl_c(record) -> bool:
    """Not Optuna's lines on a trial a stop interrupted: the run's own line says it."""
    from hpsearch import interrupts

    kind = record.exc_info[0] if record.exc_info else None
    if isinstance(kind, type) and issubclass(kind, KeyboardInterrupt):  # OwnerGone too
        return False
    return not (interrupts.requested() and "failed with value None" in record.getMessage())


def say(line: str = "", flush: bool = False, end: str = "\n") -> None:
    print(line, flush=flush, end=end)


def error(line: str) -> None:
    """`hpsearch: error: ...` on stderr."""
    print(f"hpsearch: error: {line}", file=sys.stderr)


# --- the run ------------------------------------------------------------------------------


def header(session, done: int) -> None:
    """The store, the study and its progress, the data and where it trains."""
    cfg, data, workers = session.cfg, session.data, session.options.workers
    sizes = f"{len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test"
    threads = session.threads
    plural = "thread" if threads == 1 else "threads"
    where = f"{session.device} ({threads} {plural})" if threads else str(session.device)
    if workers > 1:
        where = f"{workers} worker processes on {where.replace(plural, plural + ' each')}"
    where += f" in {session.precision}"  # auto differs by device
    if workers > 1 and session.shares_images:
        where += "; workers on one device share one copy of the images where it fits there"
    if data.on_host:
        where += "; the images stay in host memory (too large for the device's free memory)"
    print(f"Store: {session.spec.display}")
    print(f"Study {cfg.study.name!r}: {trials_finished(done, cfg)}; "
          f"{cfg.study.sampler} sampler, {cfg.study.pruner} pruner, {epochs_text(session)}")
    left = session.time_left()
    if left is not None:
        print(f"Time budget: {time_spent(session)} spent, {duration_text(left)} left (no trial "
              f"starts after it; the one running then finishes)")
    print(f"Data: {cfg.data.dataset}, {sizes} images of {data.image_size}x{data.image_size}, "
          f"{len(data.classes)} classes; training on {where}")


def epochs_text(session) -> str:
    """`6 epochs`, or `up to 40 epochs (auto: about 1,200 steps)` as hpsearch worked it out."""
    from hpsearch.build import max_epochs
    from hpsearch.schedule import AUTO_STEPS

    epochs, cfg = session.max_epochs, session.cfg
    said = max_epochs(cfg.train.epochs, len(session.data.y_train), cfg.train.batch_size)
    why = f"auto: about {AUTO_STEPS:,} steps" if cfg.train.epochs == "auto" else ""
    if epochs < said:
        why += f"{'; ' if why else ''}{said} cut to a quarter of the time budget"
    return f"up to {epochs} epochs a trial" + (f" ({why})" if why else "")


def trials_finished(done: int, cfg) -> str:
    """`3 of 50 trials finished`, or `3 trials finished (no trial limit)`."""
    if cfg.study.trials:
        return f"{done} of {cfg.study.trials} trials finished"
    return f"{done} trial{'' if done == 1 else 's'} finished (no trial limit)"


def duration_text(seconds: float) -> str:
    """`1h30m`, `20m`, `5m12s`, `42s`: to the second, in the forms --time takes."""
    rest = round(seconds)
    parts = [(rest // 3600, "h"), (rest // 60 % 60, "m"), (rest % 60, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def time_spent(session) -> str:
    """`5m12s of 20m`: the study's time budget as spent now."""
    spent = session.budget.spent_now()
    return f"{duration_text(spent)} of {duration_text(session.cfg.study.time)}"


def nothing_searched(cfg) -> None:
    """A study whose space fixes every parameter: its trials differ by their seeds alone."""
    from hpsearch.space import searched_names

    if not searched_names(cfg) and cfg.study.trials > 1:
        print(f"Note: [space] fixes every parameter, so the {cfg.study.trials} trials differ "
              f"only by their seeds; name a range or a list in [space] to search it.")


# Folders with more images than this show a bar while they decode.
DECODE_BAR_FROM = 300


class decode_progress:
    """A tqdm bar over the images of a folder being decoded, shown from DECODE_BAR_FROM
    images (a cache read shows none); `quiet` hides it."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.bar = quiet, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="image", desc="Decoding images", file=sys.stderr,
                            disable=self.quiet or total < DECODE_BAR_FROM, dynamic_ncols=True,
                            mininterval=0.5)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


def skipped_images(skipped: list) -> None:
    if skipped:
        logging.getLogger("hpsearch").warning(
            "warning: skipped %d unreadable image file(s), e.g. %s", len(skipped), skipped[0])


def recovered(number: int, queued: bool) -> None:
    then = "queued again" if queued else "not retried again (it died before)"
    print(f"Trial {number} was left running by a process that died: failed, {then}.")


def nothing_to_do(session, done: int) -> None:
    cfg = session.cfg
    if cfg.study.trials and done >= cfg.study.trials:
        print(f"Study {cfg.study.name!r} already has {done} finished trials (target "
              f"{cfg.study.trials}); pass a larger --trials to run more.")
    elif session.time_left() == 0:
        time_budget_spent(session, done)
    else:
        print(f"Study {cfg.study.name!r} has tried every point of its grid ({done} finished "
              f"trials); widen [space] under a new --study-name to search further.")
    summary(session.study, None, session.spec.display, cfg)


def interrupted() -> None:
    print("\nhpsearch: interrupted; run the same command to continue the study (an "
          "unfinished trial starts again)", file=sys.stderr)


def stopped_by_failures(reason: Optional[str]) -> None:
    error(f"the last 5 trials failed; stopped. Last error: {reason}")


def short_of_target(done: int, cfg, timed_out: bool) -> None:
    if timed_out:
        why = "--timeout reached"
    else:
        why = "the grid is exhausted" if cfg.study.sampler == "grid" else "stopped early"
    print(f"{trials_finished(done, cfg)} ({why}); run the same command to continue.")


def time_budget_spent(session, done: int) -> None:
    print(f"Study {session.cfg.study.name!r} has spent its time budget ({time_spent(session)}, "
          f"{trials_finished(done, session.cfg)}); pass a larger --time to run more.")


class progress_bar:
    """A tqdm bar over the study's finished trials (`target` 0: no limit), with the best
    value so far and, where `time_left()` gives a number, the time left of the study's budget.
    The best is read from the store once, then taken from each trial this process finishes (a
    read per trial would cost a store query per trial); `poll` reads both again."""

    def __init__(self, study, target: int, done: int, quiet: bool, time_left=lambda: None):
        from optuna.study import StudyDirection
        from tqdm.auto import tqdm

        self.bar = tqdm(total=target or None, initial=done, unit="trial", disable=quiet,
                        dynamic_ncols=True, file=sys.stderr)
        self.sign = 1 if study.direction == StudyDirection.MAXIMIZE else -1
        self.best, self.time_left = None, time_left
        self._read_best(study)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        from hpsearch.records import FINISHED

        if trial.state in FINISHED:
            self.bar.update(1)
        if trial.state == TrialState.COMPLETE and (
                self.best is None or self.sign * (trial.value - self.best) > 0):
            self.best = trial.value
        self._show()

    def poll(self, study) -> None:
        """For workers in other processes: read the finished count from the store."""
        from hpsearch.records import count_finished

        self.bar.update(count_finished(study) - self.bar.n)
        self._read_best(study)

    def _read_best(self, study) -> None:
        try:
            self.best = study.best_value
        except ValueError:
            pass  # no completed trial yet
        self._show()

    def _show(self) -> None:
        left = self.time_left()
        shown = [] if self.best is None else [f"best={self.best:.4f}"]
        shown += [] if left is None else [f"{duration_text(left)} left"]
        self.bar.set_postfix_str(", ".join(shown))


def summary(study, result, store: str, cfg) -> None:
    """The end-of-run table: trials by state, the best trial (searched and fixed values),
    wall time, the store."""
    from hpsearch.records import FINISHED, state_counts
    from hpsearch.space import fixed_params

    counts = state_counts(study)
    finished = sum(counts.get(s.name, 0) for s in FINISHED)
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    rows = [("Trials", f"{finished} finished ({states})")]
    try:
        best = study.best_trial
    except ValueError:
        rows.append(("Best", "no trial has completed yet"))
    else:
        rows.append(("Best", f"validation accuracy {best.value:.4f} (trial {best.number})"))
        params = {**best.params, **fixed_params(cfg)}
        rows += [(f"  {k}", f"{v:.4g}" if isinstance(v, float) else str(v))
                 for k, v in params.items()]
    if result is not None:
        plural = "" if result.ran == 1 else "s"
        rows.append(("Wall time",
                     f"{result.seconds:.1f} s for {result.ran} trial{plural} this run"))
        if result.lock_retries:
            rows.append(("Lock retries", f"{result.lock_retries} (the SQLite store was busy "
                                         f"for over a second each time; nothing was lost)"))
    rows.append(("Store", store))
    print()
    width = max(14, *(len(label) for label, _ in rows))
    for label, value in rows:
        print(f"{label:<{width}} {value}")


# --- the result commands ------------------------------------------------------------------


def table(rows: list) -> None:
    """Rows of strings in columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))).rstrip())


def report_written(notes: list, best: Optional[dict], out, n_files: int,
                   unattached: Optional[str] = None) -> None:
    """`hpsearch report`'s lines: what was not drawn, the best trial, where the files are,
    and whether the study holds them too (`unattached`: why not)."""
    for note in notes:
        print(f"note: {note}")
    if best is not None:
        test = best.get("test_accuracy")
        print(f"Best: trial {best['trial']}, validation accuracy "
              f"{best['validation_accuracy']:.4f}"
              + ("" if test is None else f", test accuracy {test:.4f}"))
    print(f"Report: {out / 'report.pdf'} and {out / 'report.html'} ({n_files} files in "
          f"{out})")
    if unattached:
        print(f"note: {unattached}")
    else:
        print("Its files and summary are attached to the study: `hpsearch dashboard` shows "
              "them.")


def best(record: dict, tested: Optional[dict], report_file) -> None:
    """`hpsearch best`: the best trial's accuracies and values, and where best_config.json
    comes from. `tested`: what a report measured of this trial on the test split, if any."""
    rows = [("Study", repr(record["study"])), ("Trial", str(record["trial"])),
            ("Validation accuracy", f"{record['validation_accuracy']:.4f}")]
    if tested is not None:
        size = tested.get("test_size")
        rows.append(("Test accuracy", f"{tested['test_accuracy']:.4f}"
                     + (f" on {size} held-out images" if size else "") + " (hpsearch report)"))
    else:
        rows.append(("Test accuracy", "not measured yet: `hpsearch report` measures it once"))
    rows.append(("Parameters", ""))
    rows += [(f"  {k}", f"{v:.4g}" if isinstance(v, float) else str(v))
             for k, v in record["params"].items()]
    rows.append(("best_config.json", "written by `hpsearch report`, by default to"))
    rows.append(("", str(report_file)))
    rows.append(("", "`hpsearch best --json` prints the same record"))
    for label, value in rows:
        print(f"{label:<20} {value}".rstrip())


def predicted(n: int, skipped: str, out: Optional[str]) -> None:
    """After the CSV, on stderr: how many were classified; `skipped`: the files left out."""
    print(f"{n} image{'s' * (n != 1)} classified" + (f" into {out}" if out else "")
          + (f"; {skipped}" if skipped else ""), file=sys.stderr)


def status(store: str, rows: list) -> None:
    """`hpsearch status`: a line per study of records.status_row's values."""
    from hpsearch.records import local_time

    print(f"Store: {store}")
    if not rows:
        print("No studies yet.")
        return
    lines = [("study", "complete", "pruned", "failed", "running", "waiting", "best",
              "last activity")]
    for name, counts, best_value, last in rows:
        lines.append((name, *(str(counts.get(k, 0)) for k in
                              ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")),
                      "-" if best_value is None else f"{best_value:.4f}",
                      "-" if last is None else local_time(last)))
    table(lines)


def dashboard_started(store: str, weights, host: str, port: int) -> None:
    """Where the dashboard reads and where to open it (an IPv6 host in brackets)."""
    host = f"[{host}]" if ":" in host else host
    print(f"optuna-dashboard on {store}" + (f" with weights in {weights}" if weights else ""))
    print(f"Open http://{host}:{port}/ (Ctrl-C stops it)", flush=True)


def request(line: str) -> None:
    """A request the dashboard served, on stderr as a web server logs it (--verbose)."""
    print(line, file=sys.stderr, flush=True)


# --- the end of the process ---------------------------------------------------------------


def output_failed(err: OSError) -> bool:
    """Whether writing the output failed: only this module prints, so an error raised by a
    line of it, with no file named, is the output's (a full disk, a closed terminal)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return err.filename is None and tb is not None and tb.tb_frame.f_code.co_filename == __file__


def silence_stdout() -> None:
    """Point stdout at the null device, so that the last flush of what could not be written
    raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def exit_fast(code: int) -> None:
    """End the process as Python's exit would, without the interpreter's teardown.

    The teardown frees every module, torch's libraries last, one by one: longer than a
    default study's trial, and nothing of it reaches the disk. What an exit must do is done
    here: threads that are not daemons finish, the stores' connections close (SQLite folds
    its write-ahead log back into the store file then), the exit handlers run (logging's
    flush among them), and the output is flushed. Not done: a garbage collection, which only
    matters for files left open, and hpsearch closes every file it writes."""
    from hpsearch import private
    from hpsearch.storage import close_stores

    private.finish_threads()
    # Explicitly, not left to the collector: a study can outlive its command, held by a
    # traceback that Optuna keeps of an optional import that failed (boto3's, for artifacts).
    close_stores()
    private.run_exit_handlers()
    code = code if isinstance(code, int) else 0
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the stream closed
            continue
        try:
            stream.flush()
        except BrokenPipeError:  # a reader that stopped reading (`| head`): nothing is lost
            pass
        except (OSError, ValueError):  # a full disk, say: the output is lost, so say so
            code = code or EXIT_UNWRITABLE  # as Python's own exit does when it cannot flush
    os._exit(code)
