"""CycleGAN loss terms: pure functions of arrays, computed in float32.

GAN losses by name (``GAN_MODES``):
  * ``lsgan``   — mean squared error against 1 (real) / 0 (fake); the paper's default.
  * ``vanilla`` — sigmoid cross-entropy on logits.
  * ``hinge``   — D: mean(relu(1 - real)) + mean(relu(1 + fake)); G: -mean(fake).
All reduce by the mean over every element of the patch map, as the official code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

GAN_MODES = ("lsgan", "vanilla", "hinge")


def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ValueError(f"Unknown gan_mode {mode!r}; choose one of {GAN_MODES}.")


def gan_loss(logits: jax.Array, target_is_real: bool, mode: str = "lsgan") -> jax.Array:
    """Discriminator-side loss of ``logits`` (any shape) against a real/fake target.

    For ``hinge`` this is the discriminator's hinge term; generators use
    :func:`generator_loss`, which equals ``gan_loss(logits, True)`` for the
    other two modes.
    """
    _check_mode(mode)
    x = logits.astype(jnp.float32)
    if mode == "lsgan":
        return jnp.mean(jnp.square(x - (1.0 if target_is_real else 0.0)))
    if mode == "vanilla":
        labels = jnp.full_like(x, 1.0 if target_is_real else 0.0)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(x, labels))
    return jnp.mean(jax.nn.relu(1.0 - x if target_is_real else 1.0 + x))


def generator_loss(fake_logits: jax.Array, mode: str = "lsgan") -> jax.Array:
    """Adversarial loss of a generator whose fakes the discriminator scored ``fake_logits``."""
    _check_mode(mode)
    if mode == "hinge":
        return -jnp.mean(fake_logits.astype(jnp.float32))
    return gan_loss(fake_logits, True, mode)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, mode: str = "lsgan") -> jax.Array:
    """0.5 * (loss on real + loss on fake), as the official ``backward_D_basic``."""
    return 0.5 * (gan_loss(real_logits, True, mode) + gan_loss(fake_logits, False, mode))


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean absolute error over all elements (``torch.nn.L1Loss()``), float32 scalar."""
    return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))
