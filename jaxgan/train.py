"""One CycleGAN training step: the state, its construction, and the pure update.

Naming (paper / official code):
  * ``g_ab`` — G: A -> B (official ``G_A``); ``g_ba`` — F: B -> A (official ``G_B``).
  * ``d_a`` — judges domain A: real A vs F(B) (official ``D_B``, paper D_X).
  * ``d_b`` — judges domain B: real B vs G(A) (official ``D_A``, paper D_Y).
  * ``pool_a`` holds past F(B) for ``d_a``; ``pool_b`` holds past G(A) for ``d_b``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxgan import conv_forms, losses, models, optim
from jaxgan import pool as pool_lib

PyTree = Any
NETS = ("g_ab", "g_ba", "d_a", "d_b")
GENERATORS = ("g_ab", "g_ba")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static the step needs: hashable, so jit caches on it."""

    ngf: int = 64
    n_blocks: int = 9
    ndf: int = 64
    n_layers_d: int = 3
    norm_affine: bool = False
    dtype: str = "float32"
    remat: bool = False
    conv_impl: str = "auto"
    gan_mode: str = "lsgan"
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    adam_eps: float = 1e-8
    num_epochs: int = 100
    num_epochs_decay: int = 100
    steps_per_epoch: int = 1
    freeze_inert_biases: bool = True
    ema_decay: float = 0.0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> StepConfig:
        """Read the fields above from ``config`` (model fields from ``config.model``)."""
        m = config.model
        if m.dtype not in DTYPES:
            raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {m.dtype!r}")
        losses._check_mode(config.gan_mode)
        conv_forms.parse_impl(m.get("conv_impl", "auto"))  # ValueError naming the valid forms
        return cls(
            ngf=m.ngf,
            n_blocks=m.n_blocks,
            ndf=m.ndf,
            n_layers_d=m.n_layers_d,
            norm_affine=m.norm_affine,
            dtype=m.dtype,
            remat=m.get("remat", False),
            conv_impl=str(m.get("conv_impl", "auto")),
            gan_mode=config.gan_mode,
            lambda_cycle=float(config.lambda_cycle),
            lambda_identity=float(config.lambda_identity),
            lr=float(config.lr),
            beta1=float(config.beta1),
            beta2=float(config.beta2),
            adam_eps=float(config.adam_eps),
            num_epochs=int(config.num_epochs),
            num_epochs_decay=int(config.num_epochs_decay),
            steps_per_epoch=int(config.steps_per_epoch),
            freeze_inert_biases=bool(config.get("freeze_inert_biases", True)),
            ema_decay=float(config.get("ema_decay", 0.0)),
        )

    @property
    def generator(self) -> models.ResnetGenerator:
        return models.ResnetGenerator(
            ngf=self.ngf,
            n_blocks=self.n_blocks,
            norm_affine=self.norm_affine,
            dtype=DTYPES[self.dtype],
            remat=self.remat,
            conv_impl=self.conv_impl,
        )

    @property
    def discriminator(self) -> models.PatchDiscriminator:
        return models.PatchDiscriminator(
            ndf=self.ndf,
            n_layers=self.n_layers_d,
            norm_affine=self.norm_affine,
            dtype=DTYPES[self.dtype],
            conv_impl=self.conv_impl,
        )

    @property
    def schedule(self) -> Callable[[jax.Array], jax.Array]:
        """The learning rate as a function of the step (constant, then linear decay to 0)."""
        return optim.linear_decay_schedule(self.lr, self.num_epochs, self.num_epochs_decay, self.steps_per_epoch)

    @property
    def tx(self) -> optax.GradientTransformation:
        return optim.adam(self.schedule, self.beta1, self.beta2, self.adam_eps)


@flax.struct.dataclass
class TrainState:
    """The whole training state, one immutable PyTree.

    Attributes:
      step: int32 scalar, number of completed steps.
      params: ``{"g_ab", "g_ba", "d_a", "d_b"}`` -> Flax parameter trees (float32).
      opt_state: the four Adam states, same keys.
      pool_a: history of F(B) fed to ``d_a``; pool_b: history of G(A) fed to ``d_b``.
      rng: PRNG key (uint32[2]) for the pools; split every step.
      ema: ``{"g_ab", "g_ba"}`` -> exponential moving averages of the generators'
        parameters (:func:`update_ema`); ``{}`` when ``config.ema_decay == 0``.
      config: static hyperparameters (not a leaf; not checkpointed).
    """

    step: jax.Array
    params: dict[str, PyTree]
    opt_state: dict[str, PyTree]
    pool_a: pool_lib.PoolState
    pool_b: pool_lib.PoolState
    rng: jax.Array
    ema: dict[str, PyTree]
    config: StepConfig = flax.struct.field(pytree_node=False)

    def generator_params(self, weights: str = "ema") -> dict[str, PyTree]:
        """``{"g_ab", "g_ba"}`` parameters: the EMA ones when ``weights == "ema"`` and the run keeps them, else raw."""
        if weights == "ema" and self.ema:
            return dict(self.ema)
        return {k: self.params[k] for k in GENERATORS}


def create_train_state(
    config: ml_collections.ConfigDict, rng: jax.Array, image_shape: tuple[int, int, int] | None = None
) -> TrainState:
    """Initialise all four networks, their Adam states and both pools.

    Args:
      config: the experiment config (``model`` group, loss/optimizer fields,
        ``crop_size``, ``pool_size``, ``steps_per_epoch``).
      rng: a PRNG key (``jax.random.PRNGKey(seed)``).
      image_shape: (H, W, C) of training images; defaults to ``(*config.image_shape, 3)`` where the
        run set it from the data (``loop.resolve_config``), else ``(crop_size, crop_size, 3)``.
        Parameters do not depend on it, pools do.
    """
    cfg = StepConfig.from_config(config)
    if image_shape is None:
        image_shape = (*(tuple(config.get("image_shape", ())) or (config.crop_size, config.crop_size)), 3)
    k_gab, k_gba, k_da, k_db, k_state = jax.random.split(rng, 5)
    # Parameter shapes do not depend on the image size: initialise on a small one.
    dummy = jnp.zeros((1, 64, 64, image_shape[-1]), jnp.float32)
    params = {
        "g_ab": cfg.generator.init(k_gab, dummy)["params"],
        "g_ba": cfg.generator.init(k_gba, dummy)["params"],
        "d_a": cfg.discriminator.init(k_da, dummy)["params"],
        "d_b": cfg.discriminator.init(k_db, dummy)["params"],
    }
    tx = cfg.tx
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={k: tx.init(v) for k, v in params.items()},
        pool_a=pool_lib.init_pool(config.pool_size, image_shape),
        pool_b=pool_lib.init_pool(config.pool_size, image_shape),
        rng=k_state,
        ema={k: jax.tree_util.tree_map(jnp.copy, params[k]) for k in GENERATORS} if cfg.ema_decay > 0 else {},
        config=cfg,
    )


# Initialisation runs once, so XLA:CPU need not optimise it hard: at LLVM level 1 the tiny config's
# initialisation compiles in 3.5 s instead of 11 s (jaxlib 0.10.2; 2.5 s instead of 10 s on 0.11.2; 2-core
# Xeon) and gives the same values, bit for bit. Run eagerly, op by op, it took 15 s on a fresh process.
_INIT_CPU_OPTIONS = {"xla_backend_optimization_level": 1}


def init_train_state(config: ml_collections.ConfigDict, rng: jax.Array, shardings: Any = None) -> TrainState:
    """:func:`create_train_state` compiled as one program, its arrays placed by ``shardings``.

    Args:
      config: as for :func:`create_train_state`.
      rng: a PRNG key.
      shardings: a ``TrainState`` of shardings (``jaxgan.parallel.state_layout``),
        or None for the default device.

    Call it outside any transformation (it compiles with its own options); for
    the abstract state, use ``jax.eval_shape`` of :func:`create_train_state`.
    """
    options = _INIT_CPU_OPTIONS if jax.default_backend() == "cpu" else None
    # The key is a constant of the program (not an argument): nothing to place when the mesh spans processes.
    return jax.jit(lambda: create_train_state(config, rng), out_shardings=shardings, compiler_options=options)()


def _zero_inert(grads: PyTree, mask: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda g, m: jnp.zeros_like(g) if m else g, grads, mask)


def _update(cfg: StepConfig, params: dict, opt_state: dict, grads: dict[str, PyTree]) -> tuple[dict, dict]:
    """Apply each network's own Adam to its gradients; returns new (params, opt_state) dicts."""
    tx = cfg.tx
    params, opt_state = dict(params), dict(opt_state)
    for name, g in grads.items():
        if cfg.freeze_inert_biases:
            mask_fn = models.generator_inert_bias_mask if name.startswith("g") else models.discriminator_inert_bias_mask
            g = _zero_inert(g, mask_fn(g))
        updates, opt_state[name] = tx.update(g, opt_state[name], params[name])
        params[name] = optax.apply_updates(params[name], updates)
    return params, opt_state


def _apply_g(cfg: StepConfig, params: PyTree, x: jax.Array) -> jax.Array:
    return cfg.generator.apply({"params": params}, x)


def _apply_d(cfg: StepConfig, params: PyTree, x: jax.Array) -> jax.Array:
    return cfg.discriminator.apply({"params": params}, x)


def generator_objective(
    cfg: StepConfig, g_params: dict[str, PyTree], d_params: dict[str, PyTree], real_a: jax.Array, real_b: jax.Array
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, jax.Array]]]:
    """The generators' loss, a function of their parameters ``{"g_ab", "g_ba"}`` (differentiate this).

    Adversarial (each G against the given D of its target domain, ``d_params["d_b"]`` / ``["d_a"]``) +
    lambda_cycle * L1 cycle terms + lambda_cycle * lambda_identity * L1 identity terms (skipped, with
    their two forward passes, when lambda_identity == 0).

    Returns:
      (total, (the weighted terms and ``loss_g_total``, fakes ``{"A": F(B), "B": G(A)}`` in the compute dtype)).
    """
    # One call per use, as the official code. Concatenating the calls that share parameters into
    # one batch is exact too (instance norm is per sample), but measured 2-13% slower per step on
    # XLA:CPU (128x128 / 256x256, batch 1; benchmarks/RESULTS.md).
    fake_b = _apply_g(cfg, g_params["g_ab"], real_a)
    fake_a = _apply_g(cfg, g_params["g_ba"], real_b)
    rec_a = _apply_g(cfg, g_params["g_ba"], fake_b)
    rec_b = _apply_g(cfg, g_params["g_ab"], fake_a)
    terms = {
        "loss_gan_ab": losses.generator_loss(_apply_d(cfg, d_params["d_b"], fake_b), cfg.gan_mode),
        "loss_gan_ba": losses.generator_loss(_apply_d(cfg, d_params["d_a"], fake_a), cfg.gan_mode),
        "loss_cycle_a": cfg.lambda_cycle * losses.l1(rec_a, real_a),
        "loss_cycle_b": cfg.lambda_cycle * losses.l1(rec_b, real_b),
    }
    if cfg.lambda_identity > 0:
        w = cfg.lambda_cycle * cfg.lambda_identity
        terms["loss_idt_ab"] = w * losses.l1(_apply_g(cfg, g_params["g_ab"], real_b), real_b)
        terms["loss_idt_ba"] = w * losses.l1(_apply_g(cfg, g_params["g_ba"], real_a), real_a)
    total = sum(terms.values())
    return total, ({**terms, "loss_g_total": total}, {"A": fake_a, "B": fake_b})


def generator_update(
    state: TrainState, batch: dict[str, jax.Array]
) -> tuple[TrainState, dict[str, jax.Array], dict[str, jax.Array]]:
    """Update ``g_ab`` and ``g_ba`` (each with its own Adam) on :func:`generator_objective`; D parameters are
    only read.

    Returns:
      (state with new G params/opt states, metrics, fakes ``{"A": F(B), "B": G(A)}``
      in the compute dtype, without gradient).
    """
    cfg = state.config
    g_params = {k: state.params[k] for k in GENERATORS}
    objective = functools.partial(generator_objective, cfg, d_params=state.params, real_a=batch["A"], real_b=batch["B"])
    (_, (metrics, fakes)), grads = jax.value_and_grad(objective, has_aux=True)(g_params)
    metrics["grad_norm_g"] = optax.tree.norm(grads)  # both generators: a NaN here never reaches a checkpoint
    params, opt_state = _update(cfg, state.params, state.opt_state, grads)
    fakes = jax.tree_util.tree_map(jax.lax.stop_gradient, fakes)
    return state.replace(params=params, opt_state=opt_state), metrics, fakes


def discriminator_update(
    state: TrainState, batch: dict[str, jax.Array], fakes: dict[str, jax.Array]
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Update ``d_a`` and ``d_b`` on real images and pooled fakes; G parameters untouched.

    ``fakes`` are this step's ``{"A": F(B), "B": G(A)}``; each goes through its
    history pool first (``pool_a`` / ``pool_b``), consuming ``state.rng``.
    Loss of each D: 0.5 * (GAN loss on real + GAN loss on pooled fake).
    """
    cfg = state.config
    real_a, real_b = batch["A"], batch["B"]
    n = real_a.shape[0]
    rng, key_a, key_b = jax.random.split(state.rng, 3)
    pool_a, pooled_a = pool_lib.query(state.pool_a, fakes["A"], key_a)
    pool_b, pooled_b = pool_lib.query(state.pool_b, fakes["B"], key_b)

    def loss_fn(d_params):
        logits_a = _apply_d(cfg, d_params["d_a"], jnp.concatenate([real_a, pooled_a.astype(real_a.dtype)]))
        logits_b = _apply_d(cfg, d_params["d_b"], jnp.concatenate([real_b, pooled_b.astype(real_b.dtype)]))
        terms = {
            "loss_d_a": losses.discriminator_loss(logits_a[:n], logits_a[n:], cfg.gan_mode),
            "loss_d_b": losses.discriminator_loss(logits_b[:n], logits_b[n:], cfg.gan_mode),
            "d_a_real": jnp.mean(logits_a[:n]),
            "d_a_fake": jnp.mean(logits_a[n:]),
            "d_b_real": jnp.mean(logits_b[:n]),
            "d_b_fake": jnp.mean(logits_b[n:]),
        }
        return terms["loss_d_a"] + terms["loss_d_b"], terms

    d_params = {k: state.params[k] for k in ("d_a", "d_b")}
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
    metrics["grad_norm_d"] = optax.tree.norm(grads)
    params, opt_state = _update(cfg, state.params, state.opt_state, grads)
    new_state = state.replace(params=params, opt_state=opt_state, pool_a=pool_a, pool_b=pool_b, rng=rng)
    return new_state, metrics


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """The decay used after ``step`` completed steps: ``min(decay, (1 + step) / (10 + step))``.

    The warm-up keeps the average from remembering the random initial weights
    in a short run (0.999 alone would still give them 5% weight after 3,000 steps).
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema: dict[str, PyTree], params: dict[str, PyTree], decay: jax.Array) -> dict[str, PyTree]:
    """``ema <- decay * ema + (1 - decay) * params`` per generator leaf (float32)."""
    return {k: jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema[k], params[k]) for k in ema}


def train_step_fn(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    """One CycleGAN iteration (pure; jit it or use :data:`train_step`).

    Args:
      state: the current :class:`TrainState`.
      batch: ``{"A": float32[B, H, W, 3], "B": float32[B, H, W, 3]}`` in [-1, 1].

    Returns:
      The new state (``step + 1``) and a dict of float32 scalar metrics: the
      weighted loss terms, mean discriminator logits on real and (pooled) fake
      images, the global norms of the generators' and the discriminators'
      gradients (``grad_norm_g``, ``grad_norm_d``), and the learning rate used.

    First both generators are updated (:func:`generator_update`), then both
    discriminators (:func:`discriminator_update`) on the fakes of the same
    generator forward pass: as the official code, the D step sees the fakes
    made before the G step, and no generator runs twice. Last, where the run
    keeps them, the EMA weights follow the new generator parameters.
    """
    lr = state.config.schedule(state.step)
    state, g_metrics, fakes = generator_update(state, batch)
    state, d_metrics = discriminator_update(state, batch, fakes)
    if state.ema:
        decay = ema_decay_at(state.config.ema_decay, state.step)
        state = state.replace(ema=update_ema(state.ema, state.params, decay))
    metrics = {**g_metrics, **d_metrics, "lr": lr}
    return state.replace(step=state.step + 1), {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


@functools.cache
def _compiled_step(backend: str, remat: bool):
    options = conv_forms.xla_compiler_options(remat, backend)
    return jax.jit(train_step_fn, donate_argnums=0, compiler_options=options)


def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    """``train_step_fn`` jitted (once per backend), donating ``state``.

    Compiled with :func:`jaxgan.conv_forms.xla_compiler_options` (XLA:CPU convolution
    kernels). Single-program convenience; the runner compiles the same function
    with explicit shardings over a device mesh (``jaxgan.parallel``).
    """
    return _compiled_step(jax.default_backend(), state.config.remat)(state, batch)
