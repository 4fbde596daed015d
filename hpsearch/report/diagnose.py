"""Why a trial's result is what it is, read from its own per-epoch curves: still learning,
overfitting, underfitting, too few images. Plain values in, findings out; the Results
section states them and the next study acts on them (see advice.next_study)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpsearch.report.facts import still_improving, trend, wilson

# Training accuracy above validation accuracy by more than this, and above the top of the
# validation accuracy's 95% interval (so not one small split's luck), is overfitting.
GAP = 0.1
# A CNN that can learn its images fits nearly all of them: a final training accuracy under
# this that no longer rises (fitted rise under FLAT per epoch) is underfitting.
LOW_ACC, FLAT = 0.8, 0.01
# Under this many training images per class, more photos help more than any setting.
FEW = 100
# By importance: a model still learning is judged before its end, so it comes first; then
# overfitting, which rules out underfitting (a model that fits its training images far
# better than the others is not too small); then the one thing no setting changes.
KINDS = ("still learning", "overfitting", "underfitting", "few images")


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    text: str  # one sentence, its evidence in numbers


def diagnose(history: dict, n_val: int, classes: int, per_class: float) -> list:
    """The findings about one trial, most important first; [] for a trained model that
    generalises. `history`: its per-epoch lists (see train.History); `n_val`: validation
    images; `per_class`: training images per class (their mean; 0 when unknown)."""
    improving = still_improving(history, n_val, classes)
    found = [_still_learning(history, n_val) if improving else None,
             _overfitting(history, n_val)]
    if not improving and found[1] is None:
        found.append(_underfitting(history, classes))
    found.append(_few_images(per_class))
    return [f for f in found if f is not None]


def _still_learning(history: dict, n: int) -> Finding:
    loss, acc = history.get("train_loss") or [], history.get("val_acc") or []
    (k_loss, loss_slope), (k_acc, acc_slope) = trend(loss), trend(acc)
    said = []
    if k_loss:
        said.append(f"its training loss changed {loss_slope:+.3f} per epoch (to {loss[-1]:.3f})")
    if k_acc and n > 0:
        said.append(f"its validation accuracy {acc_slope:+.4f} per epoch "
                    f"({acc_slope * n:+.1f} of {n:,} validation images)")
    return Finding("still learning", (
        f"Still learning: over its last {max(k_loss, k_acc)} epochs {' and '.join(said)}; it "
        f"had not finished, so train it longer."))


def _overfitting(history: dict, n: int):
    train, val = history.get("train_acc") or [], history.get("val_acc") or []
    if not train or not val or n <= 0:
        return None
    low, high = wilson(val[-1], n)
    gap = train[-1] - val[-1]
    if gap <= GAP or train[-1] <= high:
        return None
    return Finding("overfitting", (
        f"Overfitting: its training accuracy, {train[-1]:.3f}, is {gap:.3f} above its "
        f"validation accuracy, {val[-1]:.3f} (95% interval {low:.3f}-{high:.3f}): it learned "
        f"its training images more than the classes; more images, augmentation (crops, "
        f"flips) or more dropout would help."))


def _underfitting(history: dict, classes: int):
    train = history.get("train_acc") or []
    k, slope = trend(train)
    if k == 0 or train[-1] >= LOW_ACC or slope >= FLAT:
        return None
    chance = f", chance level {1 / classes:.3f}" if classes >= 2 else ""
    guessing = classes >= 2 and train[-1] < 2 / classes  # under twice what guessing scores
    how = "barely better than guessing" if guessing else "far below 1"
    return Finding("underfitting", (
        f"Underfitting: its training accuracy ended at {train[-1]:.3f} ({how}{chance}) and "
        f"was flat over its last {k} epochs ({slope:+.4f} per epoch): the model does not fit "
        f"even its training images, so try a deeper or wider model (depth, width) or another "
        f"learning rate."))


def _few_images(per_class: float):
    if not 0 < per_class < FEW:
        return None
    return Finding("few images", (
        f"Few images: about {math.floor(per_class + 0.5)} training images per class (fewer "
        f"than {FEW}): more photos of each class would help most."))
