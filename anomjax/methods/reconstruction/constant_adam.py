"""The optimiser shared by the reconstruction methods that train one network with Adam at a
fixed learning rate (MemAE, VAE, FAVAE)."""

from __future__ import annotations

import optax

from anomjax.methods.protocol import TrainedMethod


class ConstantAdamMethod(TrainedMethod):
    """A :class:`TrainedMethod` whose ``optimizer`` is ``optax.adam(self.learning_rate)``
    (PyTorch's ``torch.optim.Adam`` defaults: betas (0.9, 0.999), eps 1e-8, no weight decay),
    constant over the run. The subclass declares the ``learning_rate`` field."""

    learning_rate: float

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        """Adam, constant rate (``total_steps`` unused)."""
        del total_steps
        return optax.adam(self.learning_rate)
