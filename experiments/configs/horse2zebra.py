"""CycleGAN on horse2zebra with the paper's settings (Zhu et al. 2017, section 4 / appendix 7).

Variants: ``horse2zebra.py`` (paper), ``horse2zebra.py:demo`` (synthetic pair,
small, minutes on a CPU). Every field can be overridden on the command line,
e.g. ``--config.batch_size=4``.
"""

import ml_collections


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

    # Losses.
    config.gan_mode = "lsgan"
    config.lambda_cycle = 10.0
    config.lambda_identity = 0.5  # times lambda_cycle; 0 disables identity loss
    config.pool_size = 50
    # Biases of convs that feed an instance norm cannot affect any output; keep them fixed.
    config.freeze_inert_biases = True

    # Optimizer: Adam 2e-4, betas (0.5, 0.999); constant, then linear decay to 0.
    config.lr = 2e-4
    config.beta1 = 0.5
    config.beta2 = 0.999
    config.adam_eps = 1e-8
    config.num_epochs = 100
    config.num_epochs_decay = 100
    config.steps_per_epoch = 1334  # set from the data: ceil(max(|A|, |B|) / batch_size)

    # Data.
    config.dataset = "tfds:cycle_gan/horse2zebra"
    config.data_dir = ""
    config.batch_size = 1  # global batch over all devices
    config.load_size = 286
    config.crop_size = 256
    config.preprocess = "resize_and_crop"
    config.flip = True

    if variant == "demo":
        config.model.ngf = 32
        config.model.n_blocks = 6
        config.model.ndf = 32
        config.dataset = "synthetic"
        config.load_size = 72
        config.crop_size = 64
        config.steps_per_epoch = 100
        config.num_epochs = 10
        config.num_epochs_decay = 10
    elif variant:
        raise ValueError(f"Unknown config variant {variant!r}; known: 'demo'.")
    return config
