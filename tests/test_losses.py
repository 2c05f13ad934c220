"""Each loss term against values computed by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import losses

LOGITS = jnp.array([[0.5, -1.0], [2.0, 0.0]])


def test_lsgan_against_hand_values():
    # real: ((0.5-1)^2 + (-2)^2 + 1^2 + (-1)^2) / 4 = (0.25 + 4 + 1 + 1) / 4
    assert float(losses.gan_loss(LOGITS, True, "lsgan")) == pytest.approx(6.25 / 4)
    # fake: (0.25 + 1 + 4 + 0) / 4
    assert float(losses.gan_loss(LOGITS, False, "lsgan")) == pytest.approx(5.25 / 4)
    assert float(losses.generator_loss(LOGITS, "lsgan")) == pytest.approx(6.25 / 4)


def test_vanilla_against_hand_values():
    x = np.array([0.5, -1.0, 2.0, 0.0])
    real = np.mean([math.log1p(math.exp(-v)) for v in x])  # -log(sigmoid(x))
    fake = np.mean([math.log1p(math.exp(v)) for v in x])  # -log(1 - sigmoid(x))
    assert float(losses.gan_loss(LOGITS, True, "vanilla")) == pytest.approx(real, rel=1e-6)
    assert float(losses.gan_loss(LOGITS, False, "vanilla")) == pytest.approx(fake, rel=1e-6)
    assert float(losses.generator_loss(LOGITS, "vanilla")) == pytest.approx(real, rel=1e-6)


def test_hinge_against_hand_values():
    # D real: mean(relu(1 - x)) = (0.5 + 2 + 0 + 1) / 4; D fake: mean(relu(1 + x)) = (1.5 + 0 + 3 + 1) / 4
    assert float(losses.gan_loss(LOGITS, True, "hinge")) == pytest.approx(3.5 / 4)
    assert float(losses.gan_loss(LOGITS, False, "hinge")) == pytest.approx(5.5 / 4)
    assert float(losses.generator_loss(LOGITS, "hinge")) == pytest.approx(-1.5 / 4)


def test_discriminator_loss_is_half_the_sum():
    real, fake = jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5])
    # 0.5 * (((0)^2 + (-1)^2)/2 + (0.25 + 0.25)/2) = 0.5 * (0.5 + 0.25)
    assert float(losses.discriminator_loss(real, fake, "lsgan")) == pytest.approx(0.375)


def test_l1_is_mean_absolute_error_in_float32():
    x = jnp.array([[1.0, -1.0], [0.5, 0.0]], jnp.bfloat16)
    y = jnp.zeros((2, 2))
    out = losses.l1(x, y)
    assert out.dtype == jnp.float32 and float(out) == pytest.approx(2.5 / 4)


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="lsgan"):
        losses.gan_loss(LOGITS, True, "wgan")
