"""Adam, AdamW and SGD with Nesterov momentum, each step one fused kernel.

The kernels are the ones `torch.optim` runs with `fused=True`; only the bookkeeping around them
is hpsearch's. `torch.optim` imports torch's compiler stack (`torch._dynamo`, with sympy) the
first time any of its optimizers steps: over a second in every process that trains, and more
to free it at exit, where a default study's trials take half a second each. Around the kernel
it also groups the tensors by device and dtype again at every step, two thirds of a small
net's step on the CPU. Here the tensors are grouped once, when the optimizer is built.

The state dict has `torch.optim`'s layout (per-parameter state by index, numbered through the
groups in order), so a checkpoint written by either loads into the other.
"""

from __future__ import annotations

import torch

from hpsearch import private
from hpsearch.params import DECAY_ON, OPTIMIZERS

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults
MOMENTUM = 0.9  # hpsearch's SGD: Nesterov momentum without dampening


def decay_groups(named_parameters, weight_decay: float, on: str = "all") -> list:
    """The parameter groups of an optimizer, as torch.optim takes them, each with its
    "param_names". `on` "all": one group, every parameter decayed. "weights": the weights
    of convolutions and the classifier (the parameters of two dimensions and more) decay,
    batch norm's scales and shifts and the biases do not. Without weight decay, one group."""
    if on not in DECAY_ON:
        raise ValueError(f"decay_on must be one of {', '.join(DECAY_ON)}, got {on!r}")
    named = [(name, p) for name, p in named_parameters if p.requires_grad]
    if on == "all" or weight_decay == 0:
        parts = [(named, weight_decay)]
    else:
        parts = [([(n, p) for n, p in named if p.dim() > 1], weight_decay),
                 ([(n, p) for n, p in named if p.dim() <= 1], 0.0)]
    return [{"params": [p for _, p in group], "param_names": [n for n, _ in group],
             "weight_decay": decay} for group, decay in parts if group]


class FusedOptimizer:
    """`kind` is adam, adamw (decoupled weight decay) or sgd. `params` are parameters, or
    groups of them as torch.optim takes them (dicts with "params" and optionally their own
    "weight_decay" and "param_names"; see decay_groups). All parameters share one device and
    dtype, as a model from `build_cnn` does. Under a gradient scaler the kernels unscale the
    gradients and skip a step with an inf or nan on the device, so no step waits for the host:
    GradScaler sets `grad_scale` and `found_inf` on an optimizer that declares
    `_step_supports_amp_scaling`, as torch.optim's fused ones do."""

    _step_supports_amp_scaling = True

    def __init__(self, params, kind: str, lr: float, weight_decay: float = 0.0):
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
        params = list(params)
        if not params or not isinstance(params[0], dict):
            params = [{"params": params}]
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        # One list of all parameters, the groups' in order: torch.optim numbers them so.
        self.params = [p for g in groups for p in g["params"]]
        kinds = {(p.device, p.dtype) for p in self.params}
        if len(kinds) != 1:
            raise ValueError(f"parameters must share one device and dtype, got {len(kinds)} kinds")
        self.kind = kind
        # torch.optim's names, so that torch.optim can load the state dict too.
        fixed = ({"momentum": MOMENTUM, "dampening": 0.0, "nesterov": True} if kind == "sgd"
                 else {"betas": BETAS, "eps": EPS})
        self.param_groups = [{"lr": lr, "weight_decay": weight_decay, **g, **fixed}
                             for g in groups]
        # Zeroed moments make the first step torch.optim's: with no dampening, a zero SGD
        # buffer takes the gradient as it is, and Adam's bias correction starts from step 0.
        names = ("momentum_buffer",) if kind == "sgd" else ("exp_avg", "exp_avg_sq", "step")
        self.state = [{name: _zero_state(name, p) for name in names} for p in self.params]
        # Each group's slice of the parameters, and its kernels' lists: parameters, moments.
        self._slices, start = [], 0
        for g in groups:
            self._slices.append(slice(start, start + len(g["params"])))
            start += len(g["params"])
        self._lists = [[g["params"]] + [[s[name] for s in self.state[part]] for name in names]
                       for g, part in zip(groups, self._slices)]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        # Named as torch.optim names its steps, so that a profile counts the whole step, the
        # Python around the kernels included, as the optimizer's.
        with torch.profiler.record_function(f"FusedOptimizer.step#{self.kind}"):
            self._step()

    def _step(self) -> None:
        for group, lists in zip(self.param_groups, self._lists):
            self._step_group(group, lists)

    def _step_group(self, group: dict, lists: list) -> None:
        grads = [p.grad for p in lists[0]]
        if any(g is None for g in grads):  # a parameter the step did not reach keeps its state
            keep = [i for i, g in enumerate(grads) if g is not None]
            grads, lists = [grads[i] for i in keep], [[xs[i] for i in keep] for xs in lists]
            if not keep:
                return
        scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        common = dict(lr=group["lr"], weight_decay=group["weight_decay"], maximize=False,
                      grad_scale=scale, found_inf=found_inf)
        if self.kind == "sgd":
            params, buffers = lists
            private.fused_sgd_(params, grads, buffers, momentum=group["momentum"],
                              dampening=group["dampening"], nesterov=group["nesterov"],
                              is_first_step=False, **common)
            return
        params, exp_avgs, exp_avg_sqs, steps = lists
        private.foreach_add_(steps, 1)
        (beta1, beta2), eps = group["betas"], group["eps"]
        private.fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                            beta1=beta1, beta2=beta2, eps=eps, adamw=self.kind == "adamw",
                            **common)
        if found_inf is not None:  # a skipped step does not count
            private.foreach_sub_(steps, [found_inf] * len(steps))

    def state_dict(self) -> dict:
        groups = [{**{key: value for key, value in g.items() if key != "params"},
                   "params": list(range(part.start, part.stop))}
                  for g, part in zip(self.param_groups, self._slices)]
        return {"state": {i: dict(s) for i, s in enumerate(self.state)}, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        """Take the moments and the hyperparameters of a saved state, group by group as
        torch.optim does; a moment the saved state lacks (torch.optim's SGD before its first
        step) starts from zero."""
        groups = saved["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"the saved optimizer state does not fit this model's "
                             f"{len(self.params)} parameters in {len(self.param_groups)} "
                             f"group(s)")
        for theirs_group, mine_group, part in zip(groups, self.param_groups, self._slices):
            for key in ("lr", "weight_decay"):
                mine_group[key] = theirs_group[key]
            for index, mine in zip(theirs_group["params"], self.state[part]):
                theirs = saved["state"].get(index, {})
                for name, tensor in mine.items():
                    value = theirs.get(name)
                    if value is None:
                        tensor.zero_()
                    else:
                        tensor.copy_(value)


def _zero_state(name: str, param: torch.Tensor) -> torch.Tensor:
    """A moment shaped and laid out as its parameter (channels-last stays channels-last), or
    Adam's step count: a float32 scalar on the parameter's device, as the fused kernels read."""
    if name == "step":
        return torch.zeros((), dtype=torch.float32, device=param.device)
    return torch.zeros_like(param, memory_format=torch.preserve_format)
