"""The canonical photo recipe: a folder of photos searched as a competent PyTorch user
searches it, the yardstick of the photos benchmark.

It is bench.recipe's Optuna example taken to a folder of images the way torchvision's
tutorials read one: `datasets.ImageFolder` with per-sample transforms, decoded by PIL in
every epoch in two DataLoader worker processes, both loaders built inside every trial. The
choices, each the common one or made to search what hpsearch searches:

- training images are resized and centre-cropped to the image size, flipped at random and
  randomly cropped from a reflection-padded copy (padding size // 8), then normalised;
  validation images are resized, centre-cropped and normalised. ImageFolder's default loader
  converts every image to RGB and does not apply EXIF orientation (a phone photo stored
  rotated trains rotated);
- the normalisation is the per-channel mean and standard deviation of the training images,
  resized and centre-cropped, computed in one pass once per process (not per trial);
- the train and validation images are exactly hpsearch's split of the folder
  (`hpsearch.data.split_indices`, default fractions, the study's seed), so both sides
  score the same validation images; the test images are used by neither;
- the model is the usual small VGG-style CNN: `depth` blocks of conv 3x3 without bias ->
  batch norm -> ReLU -> 2x2 max pool, the channels doubling per block from `width` (at most
  256), then global average pooling, dropout and a linear classifier;
- hpsearch's default search space (lr, depth, width, dropout, optimizer: Adam, or SGD with
  Nesterov momentum 0.9), TPE and MedianPruner at their defaults, an in-memory study, 10
  epochs of batches of 64, the validation accuracy reported after every epoch; the sampler
  and each trial's model (by trial number) are seeded, so runs repeat;
- the model trains on CUDA when there is a GPU, as a user would run it, otherwise the CPU.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from hpsearch.bench.recipe import recipe_parser, study_result, train_and_report
from hpsearch.config import DataConfig
from hpsearch.data import split_indices
from hpsearch.images import list_image_files

EPOCHS = 10
BATCHSIZE = 64
WORKERS = 2
MAX_WIDTH = 256
FIXED_PHOTOS = {"lr": 3e-3, "depth": 3, "width": 32, "dropout": 0.0, "optimizer": "adam"}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def photo_split(root: Path, seed: int) -> tuple:
    """(files, train indices, validation indices): hpsearch's split of the folder."""
    files, labels, _ = list_image_files(root)
    train, val, _ = split_indices(np.asarray(labels), DataConfig(), seed)
    return files, train, val


def image_folder(root: Path, transform, files: list) -> datasets.ImageFolder:
    """ImageFolder over `root`, checked to list the images in hpsearch's order, so that the
    split's indices pick the same images on both sides."""
    dataset = datasets.ImageFolder(str(root), transform=transform)
    found = [os.path.relpath(path, root) for path, _ in dataset.samples]
    if found != files:
        raise RuntimeError(f"ImageFolder lists {len(found)} images of {root} in another order "
                           f"than hpsearch's {len(files)}; the splits would differ")
    return dataset


@functools.lru_cache(maxsize=None)
def channel_stats(root: Path, size: int, seed: int) -> tuple:
    """Per-channel mean and std of the training images resized and centre-cropped to `size`,
    in one pass through a loader with the trials' workers."""
    files, train, _ = photo_split(root, seed)
    plain = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                transforms.ToTensor()])
    loader = DataLoader(Subset(image_folder(root, plain, files), train), batch_size=256,
                        num_workers=WORKERS)
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for x, _ in loader:
        x = x.double()
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = len(train) * size * size
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-6).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def get_photos(root: Path, size: int, seed: int = 0) -> tuple:
    """Train and validation datasets with their per-sample transforms; called inside every
    trial, as the example builds its datasets."""
    files, train, val = photo_split(root, seed)
    normalize = transforms.Normalize(*channel_stats(root, size, seed))
    train_transform = transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(size, padding=size // 8, padding_mode="reflect"),
        transforms.ToTensor(), normalize])
    valid_transform = transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(), normalize])
    return (Subset(image_folder(root, train_transform, files), train),
            Subset(image_folder(root, valid_transform, files), val))


def build_net(depth: int, width: int, dropout: float, num_classes: int) -> nn.Sequential:
    layers: list = []
    channels = 3
    for block in range(depth):
        out = min(width * 2 ** block, MAX_WIDTH)
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
               nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def make_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=lr)


def objective(trial: optuna.Trial, root: Path, size: int, split_seed: int = 0,
              epochs: int = EPOCHS) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    depth = trial.suggest_int("depth", 1, 4)
    width = trial.suggest_int("width", 8, 64, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    optimizer_name = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    torch.manual_seed(trial.number)
    train_set, valid_set = get_photos(root, size, split_seed)
    dev = device()
    model = build_net(depth, width, dropout, len(train_set.dataset.classes)).to(dev)
    optimizer = make_optimizer(model, optimizer_name, lr)

    train_loader = DataLoader(train_set, batch_size=BATCHSIZE, shuffle=True,
                              num_workers=WORKERS, persistent_workers=False)
    valid_loader = DataLoader(valid_set, batch_size=BATCHSIZE, shuffle=False,
                              num_workers=WORKERS, persistent_workers=False)

    return train_and_report(trial, model, optimizer, train_loader, valid_loader, epochs, dev)


def run_recipe(root: Path, size: int = 32, trials: int = 20, seed: int = 0,
               epochs: int = EPOCHS) -> dict:
    """Run the recipe's study; see bench.recipe.study_result."""
    start = time.perf_counter()
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner())
    study.optimize(lambda trial: objective(trial, root, size, seed, epochs), n_trials=trials)
    return study_result(study, start)


def time_fixed_trial(root: Path, size: int = 64, epochs: int = EPOCHS, number: int = 0) -> dict:
    """The recipe's objective for the fixed photo configuration, trial `number` seeding the
    model: seconds of the trial, images trained and the final validation accuracy. The
    channel statistics, once per process, are computed before the clock starts, as
    hpsearch's side loads its data before."""
    trial = optuna.trial.FixedTrial(FIXED_PHOTOS, number=number)
    channel_stats(root, size, 0)
    start = time.perf_counter()
    accuracy = objective(trial, root, size, epochs=epochs)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(photo_split(root, 0)[1]) * epochs,
            "val_acc": accuracy}


def main() -> None:
    """`python -m hpsearch.bench.photo_recipe --folder DIR --size 32 --trials 20 --seed 0`
    prints the recipe's study result as JSON; `--fixed-trial` times one trial of the fixed
    configuration instead."""
    import json

    parser = recipe_parser(__doc__, trials=20, epochs=EPOCHS)
    parser.add_argument("--folder", required=True, type=Path, metavar="DIR")
    parser.add_argument("--size", type=int, default=32, help="pixels per side")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = args.folder.resolve()
    if args.fixed_trial:
        print(json.dumps(time_fixed_trial(root, args.size, args.epochs, args.number)))
    else:
        print(json.dumps(run_recipe(root, args.size, args.trials, args.seed, args.epochs)))


if __name__ == "__main__":
    main()
