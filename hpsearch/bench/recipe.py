"""The canonical Optuna + PyTorch recipe, as the yardstick hpsearch is measured against.

It follows Optuna's PyTorch example (examples/pytorch/pytorch_simple.py) step for step: a
torchvision-style Dataset with per-sample transforms, DataLoaders rebuilt inside every trial
with `num_workers=0`, the standard train and evaluation loops, torch's default threads, TPE
with MedianPruner at their defaults, an in-memory study, and the validation accuracy reported
after every epoch. Deviations from the example, each to make it the same search as hpsearch's
default study:

- the data are scikit-learn's digits resized to 16 pixels, split and normalised exactly as
  hpsearch splits them (the example reads Fashion-MNIST and caps the examples per epoch);
- the model is hpsearch's CNN (`build_cnn`) over the default study's search space (lr, depth,
  width, dropout, optimizer) instead of the example's MLP;
- batches of 64 images, the default study's `train.batch_size`, instead of the example's 128,
  so that both searches take the same optimizer steps;
- cross-entropy on logits instead of NLL on log-softmax (the same loss);
- the optimizers are built as hpsearch builds them (SGD with Nesterov momentum 0.9) so both
  searches sample the same space; the example's plain SGD learns far slower;
- the validation loader uses the training batch size, as the example does; the sampler is
  seeded and so is each trial's model, so runs repeat.
"""

from __future__ import annotations

import time

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from hpsearch.bench.curves import finished_trials
from hpsearch.config import DataConfig
from hpsearch.data import digits_images, split_indices
from hpsearch.model import build_cnn
from hpsearch.train import FitSettings, make_optimizer

EPOCHS = 10
BATCHSIZE = 64


class DigitsDataset(torch.utils.data.Dataset):
    """Digits as 8x8 PIL images, transformed one sample at a time like torchvision's MNIST."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        return self.transform(img), int(self.labels[i])


def get_digits(image_size: int = 16, seed: int = 0):
    """Train and validation datasets; called inside every trial, as the example does."""
    raw = digits_images(8)
    train, val, _ = split_indices(raw.y, DataConfig(), seed)
    images = raw.x[:, 0]
    mean = float(images[train].mean() / 255.0)
    std = float(images[train].std() / 255.0)
    transform = transforms.Compose([
        transforms.Resize(image_size, antialias=True), transforms.ToTensor(),
        transforms.Normalize((mean,), (std,))])
    return (DigitsDataset(images[train], raw.y[train], transform),
            DigitsDataset(images[val], raw.y[val], transform))


def objective(trial: optuna.Trial, split_seed: int = 0, epochs: int = EPOCHS) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    depth = trial.suggest_int("depth", 1, 4)
    width = trial.suggest_int("width", 8, 64, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    optimizer_name = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    torch.manual_seed(trial.number)
    model = build_cnn(in_channels=1, num_classes=10, image_size=16, depth=depth, width=width,
                      dropout=dropout)
    optimizer = make_optimizer(model, FitSettings(epochs, BATCHSIZE, lr, optimizer_name))

    train_set, valid_set = get_digits(seed=split_seed)
    train_loader = DataLoader(train_set, batch_size=BATCHSIZE, shuffle=True)
    valid_loader = DataLoader(valid_set, batch_size=BATCHSIZE, shuffle=False)

    return train_and_report(trial, model, optimizer, train_loader, valid_loader, epochs)


def train_and_report(trial: optuna.Trial, model, optimizer, train_loader, valid_loader,
                     epochs: int, device: torch.device = torch.device("cpu")) -> float:
    """The example's loops: an epoch of training, the validation accuracy reported, pruning
    asked; each batch moved to `device` (a no-op on the CPU). Returns the last accuracy."""
    for epoch in range(epochs):
        model.train()
        for data, target in train_loader:
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()

        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in valid_loader:
                data, target = data.to(device), target.to(device)
                pred = model(data).argmax(dim=1, keepdim=True)
                correct += pred.eq(target.view_as(pred)).sum().item()
        accuracy = correct / len(valid_loader.dataset)

        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.exceptions.TrialPruned()
    return accuracy


def run_recipe(trials: int = 50, seed: int = 0, epochs: int = EPOCHS) -> dict:
    """Run the recipe's study; see study_result."""
    start = time.perf_counter()
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner())
    study.optimize(lambda trial: objective(trial, seed, epochs), n_trials=trials)
    return study_result(study, start)


def study_result(study: optuna.Study, start: float) -> dict:
    """A recipe's study as its run prints it: seconds since `start` (perf_counter), best
    validation accuracy, trials by state, epochs run, and each finished trial's finish time
    (seconds since the epoch), state and value, for the accuracy-per-minute curve."""
    states: dict = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {"seconds": time.perf_counter() - start, "best_value": study.best_value,
            "states": states,
            "epochs_run": sum(len(t.intermediate_values) for t in study.trials),
            "trials": finished_trials(study.trials)}


FIXED = {"lr": 1e-3, "depth": 3, "width": 32, "dropout": 0.0, "optimizer": "adam"}


def time_fixed_trial(epochs: int = EPOCHS, number: int = 0) -> dict:
    """The recipe's objective for the benchmark's fixed configuration (depth 3, width 32,
    batch 64, 10 epochs), trial `number` seeding the model: seconds of the trial, images
    trained and the final validation accuracy."""
    trial = optuna.trial.FixedTrial(FIXED, number=number)
    start = time.perf_counter()
    accuracy = objective(trial, epochs=epochs)
    seconds = time.perf_counter() - start
    n_train = len(split_indices(digits_images(8).y, DataConfig(), 0)[0])
    return {"seconds": seconds, "images": n_train * epochs, "val_acc": accuracy}


def recipe_parser(doc: str, trials: int, epochs: int):
    """The command line both recipes take: a study of --trials with --seed, or --fixed-trial
    (its --epochs and trial --number) timed instead."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--trials", type=int, default=trials)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixed-trial", action="store_true")
    parser.add_argument("--epochs", type=int, default=epochs,
                        help=f"epochs per trial, of the study or the fixed trial (default "
                             f"{epochs})")
    parser.add_argument("--number", type=int, default=0, help="the fixed trial's number")
    return parser


def main() -> None:
    """`python -m hpsearch.bench.recipe --trials 50 --seed 0` prints the recipe's study
    result as JSON; `--fixed-trial` times one trial of the fixed configuration instead."""
    import json

    args = recipe_parser(__doc__, trials=50, epochs=EPOCHS).parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.fixed_trial:
        print(json.dumps(time_fixed_trial(args.epochs, args.number)))
    else:
        print(json.dumps(run_recipe(args.trials, args.seed, args.epochs)))


if __name__ == "__main__":
    main()
