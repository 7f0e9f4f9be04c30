"""``torch.optim`` for JAX: the optimizer classes a PyTorch user already knows how to drive.

``jopt.optim.Adam(params, lr=1e-3)`` then ``opt.step(grads)``, ``loss = opt.step(loss_fn, x, y)``
or ``opt.zero_grad(); opt.backward(loss_fn, x, y); opt.step()``. The update rules are jopt's
functional optimizers; see :class:`jopt.optim.Optimizer`.
"""

from jopt.optim import lr_scheduler
from jopt.optim.algorithms import SGD, Adagrad, Adam, AdamW, RMSprop
from jopt.optim.optimizer import Optimizer

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "lr_scheduler"]
