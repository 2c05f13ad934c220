"""CycleGAN on horse2zebra with the paper's settings (Zhu et al. 2017, section 4 / appendix 7).

Variants: ``horse2zebra.py`` (paper), ``horse2zebra.py:demo`` (synthetic pair,
small, minutes on a CPU), ``horse2zebra.py:cpu`` (real photos, the demo's networks at
64x64, about 20 minutes on 2 cores), ``horse2zebra.py:tiny`` (seconds; smoke tests).
Every field can be overridden on the command line, e.g. ``--config.batch_size=4``.
"""

import ml_collections


def _small_at_64(config: ml_collections.ConfigDict) -> None:
    """The demo-sized CycleGAN (ngf = ndf = 32, 6 residual blocks) on 64x64 crops of 72x72 images."""
    config.model.ngf = 32
    config.model.n_blocks = 6
    config.model.ndf = 32
    config.load_size = 72
    config.crop_size = 64


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Model (checked against the checkpoint's on restore).
    config.model = ml_collections.ConfigDict()
    config.model.ngf = 64
    config.model.n_blocks = 9
    config.model.ndf = 64
    config.model.n_layers_d = 3
    config.model.norm_affine = False
    config.model.dtype = "float32"  # compute dtype; parameters stay float32
    config.model.remat = False
    # How convolutions are computed (same values): "auto" (fastest measured for the backend and dtype),
    # "native", "cpu", or per kind, e.g. "transpose=cpu,stride2=native" (jaxgan/conv_forms.py).
    config.model.conv_impl = "auto"

    # Losses.
    config.gan_mode = "lsgan"
    config.lambda_cycle = 10.0
    config.lambda_identity = 0.5  # times lambda_cycle; 0 disables identity loss
    config.pool_size = 50
    # Biases of convs that feed an instance norm cannot affect any output; keep them fixed.
    config.freeze_inert_biases = True
    # Exponential moving average of the generators' weights (0 disables); samples, results, translate and
    # evaluate use it where a run keeps it ("eval_weights": "ema" or "raw").
    config.ema_decay = 0.999
    config.eval_weights = "ema"

    # Optimizer: Adam 2e-4, betas (0.5, 0.999); constant, then linear decay to 0.
    config.lr = 2e-4
    config.beta1 = 0.5
    config.beta2 = 0.999
    config.adam_eps = 1e-8
    config.num_epochs = 100
    config.num_epochs_decay = 100
    config.steps_per_epoch = 1334  # set from the data: ceil(max(|A|, |B|) / batch_size)
    config.image_shape = ()  # set from the data: (H, W) of training images (crop_size square when cropping)

    # Data.
    config.dataset = "tfds:cycle_gan/horse2zebra"
    config.data_dir = ""
    config.batch_size = 1  # global batch over all devices
    config.load_size = 286
    config.crop_size = 256
    config.preprocess = "resize_and_crop"
    config.flip = True
    config.synthetic_seed = 0  # the synthetic pair (dataset="synthetic"): scenes per split
    config.synthetic_num_train = 400
    config.synthetic_num_test = 50

    # Run length, logging, checkpoints.
    config.num_train_steps = 0  # > 0: stop after this many steps instead of the epoch count
    config.log_every_steps = 100
    config.sample_every_steps = 1000
    config.num_sample_images = 4
    config.checkpoint_every_steps = 5000
    config.keep_checkpoints = 3
    config.results_max_images = 0  # 0: translate the whole test splits for the results page
    config.results_fid = True  # FID/KID on the results page when the FID Inception weights are installed
    config.stall_timeout_s = 1800.0  # a phase of a step (batch, step, save, ...) that lasts longer ends the run; 0: off
    config.profile_steps = ""  # "N..M": a jax.profiler trace of steps N to M in WORKDIR/profile (TensorBoard)

    # Devices: a mesh over all devices of all processes; the batch is split along "data".
    config.mesh_shape = (-1,)
    config.mesh_axes = ("data",)
    config.partition_rules = ()  # (regex on parameter path, PartitionSpec) for model parallelism

    if variant == "demo":  # the synthetic pair at 64x64, a smaller CycleGAN: minutes on 2 CPU cores
        _small_at_64(config)
        config.dataset = "synthetic"
        config.synthetic_num_train = 100
        config.synthetic_num_test = 50
        config.num_epochs = 8  # 100 steps per epoch: 800 constant + 800 decaying
        config.num_epochs_decay = 8
        config.log_every_steps = 100
        config.sample_every_steps = 200
        config.checkpoint_every_steps = 400
    elif variant == "cpu":  # real photos on a 2-core CPU in about 20 minutes: demo-sized nets at 64x64
        _small_at_64(config)
        config.dataset = "folder:../shared/datasets/horse2zebra"
        config.num_epochs = 3  # 1334 steps per epoch at batch 1: 4,002 constant + 4,002 decaying
        config.num_epochs_decay = 3
        config.log_every_steps = 200
        config.sample_every_steps = 2000
        config.checkpoint_every_steps = 2000
    elif variant == "tiny":  # a seconds-long smoke run (tests, CI): tiny nets, 32x32 synthetic images
        config.model.ngf = 8
        config.model.n_blocks = 2
        config.model.ndf = 8
        config.dataset = "synthetic"
        config.synthetic_num_train = 16
        config.synthetic_num_test = 4
        config.load_size = 36
        config.crop_size = 32
        config.pool_size = 4
        config.num_epochs = 1
        config.num_epochs_decay = 1
        config.log_every_steps = 2
        config.sample_every_steps = 4
        config.checkpoint_every_steps = 4
        config.num_sample_images = 2
        config.results_fid = False
    elif variant:
        raise ValueError(f"Unknown config variant {variant!r}; known: 'demo', 'cpu', 'tiny'.")
    return config
