"""Optimizers that step a whole model in one fused call over its flat buffers.

    opt = Adam(model, lr=1e-3)
    model.loss_and_grad(X, y)
    opt.step()                      # model.params updated in place from model.grads

Each optimizer keeps its state (momentum buffer, Adam's m and v) as flat arrays with
the model's layout and calls a fused kernel from ``mlscale.ops`` (NumPy reference,
numba on CPU, CUDA on GPU, chosen by ``impl="auto"``). The math lives there, once:

- SGD: PyTorch ``torch.optim.SGD`` (momentum, weight decay, Nesterov; Sutskever et al. 2013).
- Adam: Kingma and Ba 2015, bias-corrected; ``weight_decay`` adds ``wd * params`` to the
  gradient (L2, PyTorch ``torch.optim.Adam``).
- AdamW: Loshchilov and Hutter 2019, decoupled weight decay ``params -= lr * wd * params``.

``step(grads)`` takes the gradient to apply (e.g. an all-reduced copy); by default the
model's own ``grads``. Passing a flat array instead of a model works too: ``SGD(params, lr)``
then needs ``step(grads)``.
"""
from ._xp import array_module, to_xp


class Optimizer:
    """Holds the flat ``params`` (and the model, when given one) and checks ``grads``."""

    def __init__(self, model_or_params, lr):
        if hasattr(model_or_params, "params") and hasattr(model_or_params, "grads"):
            self.model, self.params = model_or_params, model_or_params.params
        else:
            self.model, self.params = None, model_or_params
        p = self.params
        if not hasattr(p, "ndim") or p.ndim != 1:
            raise TypeError(f"{type(self).__name__} needs a model (with flat .params/.grads) or a 1-D params "
                            f"array, got {type(p).__name__} of shape {getattr(p, 'shape', None)}")
        if p.dtype.kind != "f":
            raise TypeError(f"{type(self).__name__}: params must be floats, got dtype {p.dtype}")
        if not lr >= 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {lr}")
        self.lr = lr
        self.xp = array_module(p)

    def _grads(self, grads):
        if grads is None:
            if self.model is None:
                raise ValueError(f"{type(self).__name__}.step(): built on a bare params array, so pass the grads: "
                                 f"opt.step(grads)")
            grads = self.model.grads
        if grads.shape != self.params.shape:
            raise ValueError(f"{type(self).__name__}.step(): grads shape {tuple(grads.shape)} does not match "
                             f"params {tuple(self.params.shape)}: pass the flat gradient of the whole model")
        if grads.dtype != self.params.dtype:
            grads = grads.astype(self.params.dtype)
        return grads

    def zero_grad(self):
        """Zero the model's grads (only when built on a model)."""
        if self.model is not None:
            self.model.zero_grad()

    def _zeros(self):
        if getattr(self.xp, "shape_only", False) is True:  # mlscale.meta: counted as optimizer state
            return self.xp.zeros_like(self.params, kind="optimizer")
        return self.xp.zeros_like(self.params)

    def _shape_only_step(self, op, reads, writes, flops_per_element):
        """On shape-only arrays: charge the fused kernel (one pass over each array) instead of running it."""
        if getattr(self.xp, "shape_only", False) is not True:
            return False
        self.xp.fused(op, [a for a in reads if a is not None], [a for a in writes if a is not None],
                      flops_per_element)
        return True

    def state_dict(self):
        """The optimizer's state as copies (for checkpoints and ZeRO-style sharding)."""
        return {k: (v.copy() if hasattr(v, "copy") else v) for k, v in self._state().items()}

    def load_state_dict(self, state):
        for k, v in self._state().items():
            if k not in state:
                raise KeyError(f"{type(self).__name__}.load_state_dict: missing {k!r}")
            if hasattr(v, "shape"):
                v[...] = to_xp(state[k], self.xp)
            else:
                setattr(self, k, state[k])
        return self

    def _state(self):
        return {}


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, weight decay and Nesterov (PyTorch semantics)."""

    def __init__(self, model_or_params, lr, momentum=0.0, weight_decay=0.0, nesterov=False, impl="auto"):
        super().__init__(model_or_params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0 (e.g. momentum=0.9)")
        from ..ops import sgd_step  # imported here: mlscale.nn stays importable on its own

        self._kernel = sgd_step
        self.momentum, self.weight_decay, self.nesterov, self.impl = momentum, weight_decay, nesterov, impl
        self.momentum_buf = self._zeros() if momentum != 0 else None

    def step(self, grads=None):
        """One update of ``params`` in place from ``grads`` (default: the model's)."""
        g = self._grads(grads)
        if self._shape_only_step("sgd_step", [self.params, g, self.momentum_buf], [self.params, self.momentum_buf],
                                 4 if self.momentum else 2):
            return
        self._kernel(self.params, g, self.momentum_buf, self.lr, momentum=self.momentum,
                     weight_decay=self.weight_decay, nesterov=self.nesterov, impl=self.impl)

    def _state(self):
        return {"momentum_buf": self.momentum_buf} if self.momentum_buf is not None else {}


class Adam(Optimizer):
    """Adam (Kingma and Ba 2015), bias-corrected, L2 ``weight_decay`` as PyTorch's ``Adam``."""

    adamw = False

    def __init__(self, model_or_params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, impl="auto"):
        super().__init__(model_or_params, lr)
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        if eps <= 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: need eps > 0 and weight_decay >= 0, got eps={eps}, "
                             f"weight_decay={weight_decay}")
        from ..ops import adam_step

        self._kernel = adam_step
        self.beta1, self.beta2, self.eps, self.weight_decay, self.impl = beta1, beta2, eps, weight_decay, impl
        self.m, self.v = self._zeros(), self._zeros()
        self.step_count = 0  # 1-based inside the update: the first step uses step=1

    def step(self, grads=None):
        """One update of ``params`` (and m, v) in place from ``grads`` (default: the model's)."""
        grads = self._grads(grads)
        self.step_count += 1
        # fused Adam: reads p, g, m, v, writes p, m, v, about 12 flops per element (mlscale.ops.adam_step)
        if self._shape_only_step("adam_step", [self.params, grads, self.m, self.v], [self.params, self.m, self.v],
                                 12):
            return
        self._kernel(self.params, grads, self.m, self.v, self.step_count, self.lr, beta1=self.beta1,
                     beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay, adamw=self.adamw,
                     impl=self.impl)

    def _state(self):
        return {"m": self.m, "v": self.v, "step_count": self.step_count}


class AdamW(Adam):
    """AdamW (Loshchilov and Hutter 2019): decoupled weight decay, PyTorch default 0.01."""

    adamw = True

    def __init__(self, model_or_params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, impl="auto"):
        super().__init__(model_or_params, lr, betas=betas, eps=eps, weight_decay=weight_decay, impl=impl)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
