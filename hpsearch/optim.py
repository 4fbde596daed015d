"""Adam, AdamW and SGD with Nesterov momentum, each step one fused kernel.

The kernels are the ones `torch.optim` runs with `fused=True`; only the bookkeeping around them
is hpsearch's. `torch.optim` imports torch's compiler stack (`torch._dynamo`, with sympy) the
first time any of its optimizers steps: over a second in every process that trains, and more
to free it at exit, where a default study's trials take half a second each. Around the kernel
it also groups the tensors by device and dtype again at every step, two thirds of a small
net's step on the CPU. Here the tensors are grouped once, when the optimizer is built.

The state dict has `torch.optim`'s layout (per-parameter state by index, one group), so a
checkpoint written by either loads into the other.
"""

from __future__ import annotations

import torch

from hpsearch import private
from hpsearch.params import OPTIMIZERS

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults
MOMENTUM = 0.9  # hpsearch's SGD: Nesterov momentum without dampening


class FusedOptimizer:
    """`kind` is adam, adamw (decoupled weight decay) or sgd. All parameters share one device
    and dtype, as a model from `build_cnn` does. Under a gradient scaler the kernels unscale the
    gradients and skip a step with an inf or nan on the device, so no step waits for the host:
    GradScaler sets `grad_scale` and `found_inf` on an optimizer that declares
    `_step_supports_amp_scaling`, as torch.optim's fused ones do."""

    _step_supports_amp_scaling = True

    def __init__(self, params, kind: str, lr: float, weight_decay: float = 0.0):
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
        self.params = [p for p in params if p.requires_grad]
        kinds = {(p.device, p.dtype) for p in self.params}
        if len(kinds) != 1:
            raise ValueError(f"parameters must share one device and dtype, got {len(kinds)} kinds")
        self.kind = kind
        # torch.optim's names, so that torch.optim can load the state dict too.
        fixed = ({"momentum": MOMENTUM, "dampening": 0.0, "nesterov": True} if kind == "sgd"
                 else {"betas": BETAS, "eps": EPS})
        self.param_groups = [{"params": self.params, "lr": lr, "weight_decay": weight_decay,
                              **fixed}]
        # Zeroed moments make the first step torch.optim's: with no dampening, a zero SGD
        # buffer takes the gradient as it is, and Adam's bias correction starts from step 0.
        names = ("momentum_buffer",) if kind == "sgd" else ("exp_avg", "exp_avg_sq", "step")
        self.state = [{name: _zero_state(name, p) for name in names} for p in self.params]
        self._lists = [self.params] + [[s[name] for s in self.state] for name in names]

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
        grads = [p.grad for p in self.params]
        lists = self._lists
        if any(g is None for g in grads):  # a parameter the step did not reach keeps its state
            keep = [i for i, g in enumerate(grads) if g is not None]
            grads, lists = [grads[i] for i in keep], [[xs[i] for i in keep] for xs in lists]
            if not keep:
                return
        group = self.param_groups[0]
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
        group = {key: value for key, value in self.param_groups[0].items() if key != "params"}
        return {"state": {i: dict(s) for i, s in enumerate(self.state)},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, saved: dict) -> None:
        """Take the moments and the hyperparameters of a saved state; a moment the saved state
        lacks (torch.optim's SGD before its first step) starts from zero."""
        groups = saved["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"the saved optimizer state does not fit this model's "
                             f"{len(self.params)} parameters")
        for key in ("lr", "weight_decay"):
            self.param_groups[0][key] = groups[0][key]
        for index, mine in zip(groups[0]["params"], self.state):
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
