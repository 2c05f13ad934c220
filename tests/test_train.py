"""The train step: all four networks and optimizers move, isolation, determinism, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cosine_and_ratio, tiny_config

from jaxgan import train


def _batch(seed=0, size=32, n=1):
    ka, kb = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "A": jax.random.uniform(ka, (n, size, size, 3), minval=-1, maxval=1),
        "B": jax.random.uniform(kb, (n, size, size, 3), minval=-1, maxval=1),
    }


def _state(**overrides):
    """The tiny config's state, its convolutions in the native forms unless ``model.conv_impl`` is given.

    These tests' subject is the step's logic (which network moves, the loss terms, EMA), not the convolutions'
    arithmetic: tests/test_conv_forms.py checks every form against native, and the PyTorch comparison below runs
    the default forms. The native forms compile the tiny step in about half the time (tests/conftest.py).
    """
    return train.init_train_state(tiny_config(**{"model.conv_impl": "native", **overrides}), jax.random.PRNGKey(0))


def _copy(tree):
    return jax.tree_util.tree_map(np.array, tree)


def _equal(a, b) -> bool:
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a, b)))


def test_state_holds_four_networks_four_optimizers_pools_rng():
    s = _state()
    assert set(s.params) == set(s.opt_state) == {"g_ab", "g_ba", "d_a", "d_b"}
    assert s.pool_a.images.shape == (4, 32, 32, 3) and s.pool_b.images.shape == (4, 32, 32, 3)
    assert s.step.dtype == jnp.int32 and int(s.step) == 0
    # Distinct initialisations for the two generators / two discriminators.
    assert not _equal(s.params["g_ab"], s.params["g_ba"])
    assert not _equal(s.params["d_a"], s.params["d_b"])


def test_compiled_initialisation_is_the_plain_one():
    # init_train_state compiles with lighter XLA:CPU optimisation; the state must be the same, bit for bit, as
    # at XLA's default level (3; explicit, since the suite compiles at level 0: tests/conftest.py).
    config, key = tiny_config(**{"model.conv_impl": "native"}), jax.random.PRNGKey(3)
    default = {"xla_backend_optimization_level": 3} if jax.default_backend() == "cpu" else None
    want = jax.jit(lambda: train.create_train_state(config, key), compiler_options=default)()
    got = train.init_train_state(config, key)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    assert _equal(got, want)
    assert not _equal(got.params, _state().params)  # the key matters


def test_one_step_changes_all_params_and_opt_states():
    s0 = _state()
    before = _copy((s0.params, s0.opt_state))
    s1, metrics = train.train_step(s0, _batch())
    for name in train.NETS:
        assert not _equal(before[0][name], s1.params[name]), name
        assert not _equal(before[1][name], s1.opt_state[name]), name
    assert int(s1.step) == 1
    expected = {
        "loss_gan_ab", "loss_gan_ba", "loss_cycle_a", "loss_cycle_b", "loss_idt_ab", "loss_idt_ba",
        "loss_g_total", "loss_d_a", "loss_d_b", "d_a_real", "d_a_fake", "d_b_real", "d_b_fake", "lr",
        "grad_norm_g", "grad_norm_d",
    }  # fmt: skip
    assert set(metrics) == expected
    assert all(bool(jnp.isfinite(v)) for v in metrics.values())
    assert float(metrics["lr"]) == pytest.approx(2e-4)
    total = sum(float(metrics[k]) for k in expected if k.startswith("loss_") and k not in ("loss_g_total",)
                and not k.startswith("loss_d"))  # fmt: skip
    assert float(metrics["loss_g_total"]) == pytest.approx(total, rel=1e-5)


def test_loss_terms_carry_their_weights():
    # Every generator term recomputed here from the networks alone, with weights that are not the defaults
    # (cycle 3, identity 0.25 -> 0.75), so a lost or swapped factor shows.
    s0 = _state(lambda_cycle=3.0, lambda_identity=0.25)
    batch = _batch()
    cfg, p = s0.config, _copy(s0.params)
    gen, disc = jax.jit(cfg.generator.apply), jax.jit(cfg.discriminator.apply)  # each compiled once
    g_ab = lambda x: gen({"params": p["g_ab"]}, x)  # noqa: E731
    g_ba = lambda x: gen({"params": p["g_ba"]}, x)  # noqa: E731
    d_a = lambda x: disc({"params": p["d_a"]}, x)  # noqa: E731
    d_b = lambda x: disc({"params": p["d_b"]}, x)  # noqa: E731
    a, b = np.asarray(batch["A"]), np.asarray(batch["B"])
    fake_b, fake_a = np.asarray(g_ab(a)), np.asarray(g_ba(b))
    want = {
        "loss_gan_ab": np.mean((np.asarray(d_b(fake_b)) - 1) ** 2),
        "loss_gan_ba": np.mean((np.asarray(d_a(fake_a)) - 1) ** 2),
        "loss_cycle_a": 3.0 * np.mean(np.abs(np.asarray(g_ba(fake_b)) - a)),
        "loss_cycle_b": 3.0 * np.mean(np.abs(np.asarray(g_ab(fake_a)) - b)),
        "loss_idt_ab": 0.75 * np.mean(np.abs(np.asarray(g_ab(b)) - b)),
        "loss_idt_ba": 0.75 * np.mean(np.abs(np.asarray(g_ba(a)) - a)),
        # The pools are empty at step 0, so each D sees this step's fakes.
        "loss_d_a": 0.5 * (np.mean((np.asarray(d_a(a)) - 1) ** 2) + np.mean(np.asarray(d_a(fake_a)) ** 2)),
        "loss_d_b": 0.5 * (np.mean((np.asarray(d_b(b)) - 1) ** 2) + np.mean(np.asarray(d_b(fake_b)) ** 2)),
    }
    want["loss_g_total"] = sum(v for k, v in want.items() if not k.startswith("loss_d"))
    _, metrics = train.train_step(s0, batch)
    for k, v in want.items():
        assert float(metrics[k]) == pytest.approx(float(v), rel=2e-5), k


def test_one_step_matches_the_official_iteration_in_pytorch():
    # The PyTorch replica of the official optimize_parameters() (benchmarks/torch_reference.py: its own loss
    # code, weights 10 and 5 written out, one Adam for both G and one for both D) from the same weights on the
    # same images: the generator loss and, through Adam's first moment after one step (mu = 0.5 * grad), the
    # gradient of every parameter of the four networks.
    torch = pytest.importorskip("torch")
    from benchmarks import torch_reference, torch_replica
    from jaxgan import interop

    torch.set_num_threads(2)
    ref = torch_reference.CycleGANIteration("float32", seed=0, nets=(8, 2, 8))
    pairs = {"g_ab": ref.g_a, "g_ba": ref.g_b, "d_a": ref.d_b, "d_b": ref.d_a}  # official D_A judges domain B
    to_flax = {k: interop.torch_generator_to_flax if k.startswith("g") else interop.torch_discriminator_to_flax
               for k in pairs}  # fmt: skip
    for seed, net in enumerate(pairs.values()):  # four distinct nets, so a swapped pair shows
        torch_replica.randomize_(net, seed=seed, std=0.05, bias_std=0.1)
    s0 = _state(**{"model.conv_impl": "auto"})  # the default forms, which the other tests leave to test_conv_forms
    params = {k: jax.tree_util.tree_map(jnp.asarray, to_flax[k](torch_replica.state_dict_numpy(net)))
              for k, net in pairs.items()}  # fmt: skip
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(s0.params)
    s0 = s0.replace(params=params)
    batch = _batch(seed=5)
    nchw = {d: torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))) for d, x in batch.items()}
    want_loss = ref.step(nchw["A"], nchw["B"])
    s1, metrics = train.train_step(s0, batch)
    assert float(metrics["loss_g_total"]) == pytest.approx(want_loss, rel=1e-5)
    for k, net in pairs.items():
        opt = ref.opt_g if k.startswith("g") else ref.opt_d
        want = to_flax[k]({n: opt.state[p]["exp_avg"].numpy() for n, p in net.named_parameters()})
        got = s1.opt_state[k][0].mu
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
        cosine, ratio = cosine_and_ratio(*leaves)
        worst = max(float(np.abs(np.asarray(g) - w).max()) for g, w in zip(*leaves, strict=True))
        print(f"{k}: cosine {cosine:.8f}, norm ratio {ratio:.6f}, largest difference {worst:.1e}")
        assert cosine >= 0.999 and abs(ratio - 1) <= 0.01, (k, cosine, ratio)


def test_inert_biases_stay_frozen_and_can_be_trained():
    s1, _ = train.train_step(_state(), _batch())
    assert not np.any(np.asarray(s1.params["g_ab"]["res_0"]["conv_0"]["bias"]))
    assert np.any(np.asarray(s1.params["g_ab"]["conv_out"]["bias"]))
    s1, _ = train.train_step(_state(freeze_inert_biases=False), _batch())
    assert np.any(np.asarray(s1.params["g_ab"]["res_0"]["conv_0"]["bias"]))
    s1, _ = train.train_step(_state(**{"model.norm_affine": True}), _batch())  # affine norms' shifts do learn
    assert not np.any(np.asarray(s1.params["g_ab"]["res_0"]["conv_0"]["bias"]))
    assert np.all(np.asarray(s1.params["g_ab"]["res_0"]["norm_0"]["bias"]) != 0)
    assert np.all(np.asarray(s1.params["d_a"]["norm_1"]["bias"]) != 0)


def test_generator_update_leaves_discriminators_alone():
    s0 = _state()
    d_before = _copy(({k: s0.params[k] for k in ("d_a", "d_b")}, {k: s0.opt_state[k] for k in ("d_a", "d_b")}))
    g_before = _copy({k: s0.params[k] for k in ("g_ab", "g_ba")})
    s1, _, fakes = jax.jit(train.generator_update)(s0, _batch())
    assert _equal(d_before, ({k: s1.params[k] for k in ("d_a", "d_b")}, {k: s1.opt_state[k] for k in ("d_a", "d_b")}))
    assert not _equal(g_before["g_ab"], s1.params["g_ab"]) and not _equal(g_before["g_ba"], s1.params["g_ba"])
    assert fakes["A"].shape == fakes["B"].shape == (1, 32, 32, 3)


def test_discriminator_update_leaves_generators_alone():
    s0 = _state()
    batch = _batch()
    g_before = _copy(({k: s0.params[k] for k in ("g_ab", "g_ba")}, {k: s0.opt_state[k] for k in ("g_ab", "g_ba")}))
    fakes = {"A": batch["B"] * 0.5, "B": batch["A"] * 0.5}
    s1, _ = jax.jit(train.discriminator_update)(s0, batch, fakes)
    assert _equal(
        g_before, ({k: s1.params[k] for k in ("g_ab", "g_ba")}, {k: s1.opt_state[k] for k in ("g_ab", "g_ba")})
    )
    assert not _equal(s0.params["d_a"], s1.params["d_a"])
    assert int(s1.pool_a.count) == 1 and int(s1.pool_b.count) == 1


def test_discriminator_gradient_does_not_reach_generators_through_fakes():
    # The D loss must see the fakes as constants: its gradient w.r.t. a G parameter is exactly zero.
    s0 = _state()
    batch = _batch()
    cfg = s0.config

    def d_loss_through_g(g_params):
        fake_b = cfg.generator.apply({"params": g_params}, batch["A"])
        fakes = {"A": batch["B"], "B": fake_b}
        _, metrics = train.discriminator_update(s0, batch, fakes)
        return metrics["loss_d_b"]

    grads = jax.jit(jax.grad(d_loss_through_g))(s0.params["g_ab"])
    assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(grads))


def test_identity_weight_zero_drops_the_identity_terms():
    _, metrics = train.train_step(_state(lambda_identity=0.0), _batch())
    assert "loss_idt_ab" not in metrics and "loss_idt_ba" not in metrics


def test_determinism_bitwise():
    def run():
        s = _state()
        for i in range(2):
            s, _ = train.train_step(s, _batch(i))
        return _copy((s.params, s.opt_state, s.pool_a, s.pool_b, s.rng))

    assert _equal(run(), run())


@pytest.mark.parametrize("mode", ["vanilla", "hinge"])
def test_other_gan_modes_step(mode):
    _, metrics = train.train_step(_state(gan_mode=mode), _batch())
    assert all(bool(jnp.isfinite(v)) for v in metrics.values())


def test_bad_config_values_are_clear_errors():
    with pytest.raises(ValueError, match="gan_mode"):
        _state(gan_mode="wgan")
    with pytest.raises(ValueError, match="dtype"):
        _state(**{"model.dtype": "float8"})


def test_a_few_steps_on_a_fixed_pair_reduce_the_cycle_loss():
    # Two fixed smooth images; the cycle loss must fall clearly within a few steps.
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    a = np.stack([xx, yy, xx * yy], -1)[None] * 2 - 1
    b = np.stack([1 - yy, xx, 0.5 * np.ones_like(xx)], -1)[None] * 2 - 1
    batch = {"A": jnp.asarray(a, jnp.float32), "B": jnp.asarray(b, jnp.float32)}
    s = _state(lr=1e-3)
    cycles = []
    for _ in range(25):
        s, m = train.train_step(s, batch)
        cycles.append(float(m["loss_cycle_a"]) + float(m["loss_cycle_b"]))
    assert np.mean(cycles[-3:]) < 0.5 * np.mean(cycles[:3]), cycles


def test_ema_follows_a_numpy_reference_exactly():
    """EMA after each of 3 steps against NumPy: ema <- d * ema + (1 - d) * params, d = min(decay, (1+t)/(10+t))."""
    state = _state(ema_decay=0.5)
    step = jax.jit(train.train_step_fn)
    ema = {k: _copy(state.params[k]) for k in train.GENERATORS}
    assert _equal(_copy(state.ema), ema)  # starts at the initial weights
    for t in range(3):
        state, _ = step(state, _batch(t))
        d = np.float32(min(0.5, (1 + t) / (10 + t)))
        params = _copy({k: state.params[k] for k in train.GENERATORS})
        ema = jax.tree_util.tree_map(lambda e, p, d=d: d * e + (np.float32(1) - d) * p, ema, params)
        got = _copy(state.ema)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ema), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not _equal(_copy(state.ema), _copy({k: state.params[k] for k in train.GENERATORS}))
    assert _equal(state.generator_params("ema"), state.ema)
    assert _equal(state.generator_params("raw"), {k: state.params[k] for k in train.GENERATORS})


def test_ema_off_keeps_no_copy_and_serves_the_raw_weights():
    state = _state(ema_decay=0.0)
    assert state.ema == {}
    state, _ = jax.jit(train.train_step_fn)(state, _batch())
    assert state.ema == {}
    assert _equal(state.generator_params("ema"), {k: state.params[k] for k in train.GENERATORS})


def test_ema_decay_warms_up():
    got = [float(train.ema_decay_at(0.999, t)) for t in (0, 10, 1000, 10**6)]
    assert got[0] == pytest.approx(0.1) and got[1] == pytest.approx(11 / 20)
    assert got[2] == pytest.approx(1001 / 1010) and got[3] == pytest.approx(0.999)
