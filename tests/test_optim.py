"""The official linear learning-rate schedule, with the worked values of the reference."""

import pytest

from jaxgan import optim

SPE = 1334  # horse2zebra steps per epoch at batch 1


def lr_at(epoch_1based, step_in_epoch=0, n=100, nd=100):
    sched = optim.linear_decay_schedule(2e-4, n, nd, SPE)
    return float(sched((epoch_1based - 1) * SPE + step_in_epoch))


def test_constant_phase():
    assert lr_at(1) == pytest.approx(2e-4)
    assert lr_at(99, SPE - 1) == pytest.approx(2e-4)


def test_decay_start_and_end():
    assert lr_at(100) == pytest.approx(2e-4 * 100 / 101)
    assert lr_at(100, SPE - 1) == pytest.approx(1.98020e-4, rel=1e-5)
    assert lr_at(101) == pytest.approx(1.96040e-4, rel=1e-5)
    assert lr_at(150) == pytest.approx(9.90099e-5, rel=1e-5)
    assert lr_at(199) == pytest.approx(1.9802e-6, rel=1e-4)
    assert lr_at(200) == 0.0
    assert lr_at(260) == 0.0  # never negative after the schedule ends


def test_bad_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.linear_decay_schedule(2e-4, 1, 1, 0)
