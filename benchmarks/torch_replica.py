"""A PyTorch replica of the official CycleGAN networks: the parity tests' reference and the benchmark's rival.

Written from the architecture facts of the official code (ResnetGenerator with
reflection padding, instance norm without affine parameters, no dropout; the
70x70 ``NLayerDiscriminator``), with module indices laid out so that
``state_dict()`` keys match the official ones (``model.1.weight``,
``model.10.conv_block.1.weight``, ``model.19.weight`` ...). Layout is NCHW.

tests/test_interop.py checks ``jaxgan.models`` against these networks (max abs
difference ~1e-5), and ``benchmarks.torch_reference`` times the official training
iteration on them, so the speed comparison runs the networks the tests verified.

Importable only where torch is installed (the ``torch`` or ``bench`` extra).
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + conv_block(x)``; ``conv_block`` indices 1 and 5 are the convolutions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            _norm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Official ``resnet_{n}blocks`` generator: ``float[B, 3, H, W]`` -> ``float[B, 3, H, W]`` in [-1, 1]."""

    def __init__(self, ngf: int = 64, n_blocks: int = 9, input_nc: int = 3, output_nc: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=True),
            _norm(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
                _norm(ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True
                ),
                _norm(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """Official PatchGAN (``basic`` = ``n_layers=3``): ``float[B, 3, H, W]`` -> logits ``float[B, 1, H', W']``."""

    def __init__(self, ndf: int = 64, n_layers: int = 3, input_nc: int = 3) -> None:
        super().__init__()
        kw, padw = 4, 1
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=stride, padding=padw, bias=True),
                _norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers += [nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def randomize_(module: nn.Module, seed: int, std: float = 0.02, bias_std: float = 0.1) -> nn.Module:
    """Fill every weight with N(0, std) and every bias with N(0, bias_std), in place.

    The official init zeroes the biases; random ones make a parity test also
    check that each bias lands in the right place.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = bias_std if name.endswith("bias") else std
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


def state_dict_numpy(module: nn.Module) -> dict:
    """``{key: float32 ndarray}`` of a module's state dict."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
