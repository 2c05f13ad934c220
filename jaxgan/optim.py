"""The optimizer and learning-rate schedule of the paper (Adam, constant then linear decay)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def linear_decay_schedule(
    base_lr: float, num_epochs: int, num_epochs_decay: int, steps_per_epoch: int
) -> Callable[[jax.Array], jax.Array]:
    """The official ``lr_policy='linear'`` as a function of the 0-based step.

    Piecewise constant per epoch: during 1-based epoch ``e = step // steps_per_epoch + 1``
    the rate is ``base_lr * (1 - max(0, e + 1 - num_epochs) / (num_epochs_decay + 1))``
    (paper 100 + 100: 2e-4 up to epoch 99, 2e-4*100/101 in epoch 100, 0 in epoch 200),
    clipped at 0 after the last epoch.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")

    def schedule(step: jax.Array) -> jax.Array:
        epoch = jnp.asarray(step) // steps_per_epoch + 1
        frac = jnp.maximum(0, epoch + 1 - num_epochs) / (num_epochs_decay + 1)
        return base_lr * jnp.clip(1.0 - frac, 0.0, 1.0)

    return schedule


def adam(
    schedule: Callable[[jax.Array], jax.Array], b1: float = 0.5, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam as the official code (no weight decay), driven by ``schedule(count)``."""
    return optax.adam(learning_rate=schedule, b1=b1, b2=b2, eps=eps)
