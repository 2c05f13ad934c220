"""The official CycleGAN pretrained generators: download, check, convert to a jaxgan checkpoint.

    python -m jaxgan.pretrained --list
    python -m jaxgan.pretrained horse2zebra --output ckpt/horse2zebra
    python -m jaxgan.translate --checkpoint ckpt/horse2zebra --direction AtoB --input horse.jpg --output out/

Each released ``NAME.pth`` (the list of the official ``scripts/download_cyclegan_model.sh``)
is the ``G_A`` generator of a CycleGAN, so the model ``NAME`` translates ``AtoB``. Files are
fetched from :data:`DEFAULT_BASE_URL` (override: ``$JAXGAN_PRETRAINED_URL`` or ``base_url``)
into a cache, ``~/.cache/jaxgan/pretrained`` (override: ``$JAXGAN_CACHE_DIR`` or ``cache_dir``):
first as ``NAME.pth.part``, resumed with an HTTP Range request after an interruption, and
renamed to ``NAME.pth`` only once torch reads it as an official ResNet generator. Conversion
goes through :mod:`jaxgan.interop`; the checkpoint also holds ``pretrained.json`` (name, URL,
sha256 of the ``.pth``, direction).
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import hashlib
import http.client
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Any

from jaxgan import generator_checkpoint, interop, output_files

DEFAULT_BASE_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models"
DEFAULT_CACHE_DIR = pathlib.Path("~/.cache/jaxgan/pretrained")
PRETRAINED_FILE = "pretrained.json"
TIMEOUT_S = 30.0  # per socket operation (connect, each read), not for the whole transfer
CHUNK_BYTES = 1 << 16

# Ordered as the official download script lists them.
MODELS: dict[str, str] = {
    "apple2orange": "apples -> oranges (ImageNet photos)",
    "orange2apple": "oranges -> apples (ImageNet photos)",
    "summer2winter_yosemite": "Yosemite in summer -> in winter (Flickr photos)",
    "winter2summer_yosemite": "Yosemite in winter -> in summer (Flickr photos)",
    "horse2zebra": "horses -> zebras (ImageNet photos)",
    "zebra2horse": "zebras -> horses (ImageNet photos)",
    "monet2photo": "Monet paintings -> photographs",
    "style_monet": "photographs -> paintings in the style of Monet",
    "style_cezanne": "photographs -> paintings in the style of Cezanne",
    "style_ukiyoe": "photographs -> pictures in the style of Ukiyo-e prints",
    "style_vangogh": "photographs -> paintings in the style of Van Gogh",
    "sat2map": "aerial photographs -> Google Maps renderings",
    "map2sat": "Google Maps renderings -> aerial photographs",
    "cityscapes_photo2label": "Cityscapes street photos -> semantic label colours",
    "cityscapes_label2photo": "Cityscapes semantic label colours -> street photos",
    "facades_photo2label": "building facade photos -> facade label maps (CMP Facades)",
    "facades_label2photo": "facade label maps -> building facade photos (CMP Facades)",
    "iphone2dslr_flower": "iPhone flower photos -> DSLR-like photos (shallow depth of field)",
}

_PAIRS = {"horse2zebra": "zebra2horse", "apple2orange": "orange2apple", "sat2map": "map2sat",
          "summer2winter_yosemite": "winter2summer_yosemite", "monet2photo": "style_monet",
          "cityscapes_photo2label": "cityscapes_label2photo", "facades_photo2label": "facades_label2photo"}  # fmt: skip
# The opposite generator of the same CycleGAN, where one was released.
REVERSE: dict[str, str] = {**_PAIRS, **{b: a for a, b in _PAIRS.items()}}

_HTML_STARTS = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml")


class PretrainedError(RuntimeError):
    """A model that cannot be fetched or converted; the message says what to do (one line)."""


def model_url(name: str, base_url: str | None = None) -> str:
    """``BASE/NAME.pth``; ``BASE`` is ``base_url``, else ``$JAXGAN_PRETRAINED_URL``, else the official server.

    A ``BASE`` without a scheme is a local folder (a mirror on a shared disk): it becomes a ``file://`` URL.
    """
    base = base_url or os.environ.get("JAXGAN_PRETRAINED_URL") or DEFAULT_BASE_URL
    if "://" not in base:
        base = pathlib.Path(base).expanduser().absolute().as_uri()
    return f"{base.rstrip('/')}/{name}.pth"


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``cache_dir``, else ``$JAXGAN_CACHE_DIR``, else ``~/.cache/jaxgan/pretrained`` (absolute)."""
    root = cache_dir or os.environ.get("JAXGAN_CACHE_DIR") or DEFAULT_CACHE_DIR
    return pathlib.Path(root).expanduser().absolute()


def _check_name(name: str) -> None:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise PretrainedError(f"unknown model {name!r}{hint}; the official models are: {', '.join(MODELS)}")


def _manual_hint(name: str) -> str:
    return (
        f"download {name}.pth elsewhere, then convert it with: "
        f"python -m jaxgan.interop --pth {name}.pth --direction AtoB --output DIR"
    )


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of ``bytes A-B/T`` or ``bytes */T``; ``None`` where absent or ``*``."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not m:
        return None, None
    return (int(m.group(1)) if m.group(1) else None), (int(m.group(2)) if m.group(2) != "*" else None)


def _transfer(name: str, url: str, part: pathlib.Path, progress: bool) -> None:
    """Bring ``part`` to the complete body of ``url``, resuming from its current size (a Range request)."""
    from tqdm import tqdm

    for _ in range(2):  # a second round only after throwing away a ``part`` the server cannot continue
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "jaxgan", **({"Range": f"bytes={offset}-"} if offset else {})}
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # nothing left after ``offset``: complete already, or stale
                if _content_range(e.headers.get("Content-Range"))[1] == offset:
                    return
                part.unlink()
                continue
            reason = f"HTTP {e.code} {e.reason}"
            raise PretrainedError(f"cannot download {url}: {reason}; {_manual_hint(name)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise PretrainedError(f"cannot reach {url} ({reason}); {_manual_hint(name)}") from None
        with response:
            if "text/html" in response.headers.get("Content-Type", ""):  # nothing written: ``part`` stays as it was
                raise PretrainedError(
                    f"{url} answered with an HTML page, not a .pth file (a proxy or error page?); "
                    f"check the URL, or {_manual_hint(name)}"
                )
            if response.status == 206 and _content_range(response.headers.get("Content-Range"))[0] != offset:
                part.unlink()
                continue
            if response.status != 206:  # the whole file (the server ignored the Range): start again
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=f"{name}.pth", file=sys.stderr, disable=not progress)  # fmt: skip
            error = None
            with bar, open(part, "ab" if offset else "wb") as f:
                try:
                    while chunk := response.read(CHUNK_BYTES):
                        f.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as e:
                    error = e
        size = part.stat().st_size
        if error is not None or (total is not None and size != total):
            why = f": {error}" if error is not None else ""
            raise PretrainedError(
                f"download of {url} stopped at {size} of {total or '?'} bytes{why}; run the same command again "
                f"to resume it (kept in {part}), or {_manual_hint(name)}"
            )
        return
    raise PretrainedError(f"{url}: the server cannot resume or restart the download of {part}; delete it, try again")


def _convert(pth: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(ResnetGenerator params, model config)`` of an official generator ``.pth`` (float32 NumPy leaves)."""
    state_dict = interop.load_torch_state_dict(pth)
    ngf, n_blocks = interop.infer_generator_config(state_dict)
    params = interop.torch_generator_to_flax(state_dict)
    return params, {**generator_checkpoint.DEFAULT_MODEL_CONFIG, "ngf": ngf, "n_blocks": n_blocks}


def _check_download(name: str, url: str, part: pathlib.Path) -> None:
    """Delete ``part`` and raise unless it is a torch file holding an official ResNet generator."""
    with open(part, "rb") as f:
        head = f.read(512).lstrip().lower()
    problem = None
    if head.startswith(_HTML_STARTS) or b"<html" in head:
        problem = "is an HTML/XML page, not a .pth file (a proxy, login or error page?)"
    else:
        try:
            _convert(part)
        except interop.UnreadableFileError as e:
            problem = f"cannot be read by torch: truncated or corrupt ({e})"
        except interop.InteropError as e:
            problem = f"is not an official CycleGAN ResNet generator ({e})"
        except ImportError as e:  # a broken torch install: keep the download for the next run
            raise PretrainedError(f"{e} (the download is kept in {part})") from e
    if problem:
        part.unlink(missing_ok=True)
        raise PretrainedError(
            f"{url} (saved as {part}) {problem}; the file was deleted: run again to download it afresh, "
            f"check the base URL, or {_manual_hint(name)}"
        )


def download(
    name: str, base_url: str | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> pathlib.Path:
    """The official ``NAME.pth`` in the cache, downloaded (resumed, checked) unless already there.

    Args:
      name: a key of :data:`MODELS`.
      base_url: where ``NAME.pth`` lives (see :func:`model_url`).
      cache_dir: see :func:`cache_root`.
      progress: a tqdm progress bar (bytes) on stderr.

    Returns:
      ``CACHE/NAME.pth``, a file torch reads as an official ResNet generator state dict.

    Raises:
      PretrainedError: unknown name, torch missing, server unreachable or refusing, an
        interrupted transfer (``CACHE/NAME.pth.part`` is kept for the next call to resume),
        or a file that is not an official generator (deleted).
    """
    _check_name(name)
    cache = cache_root(cache_dir)
    final = cache / f"{name}.pth"
    if final.is_file():
        return final
    if importlib.util.find_spec("torch") is None:  # before a 45 MB download that could not be read
        raise PretrainedError("reading the official .pth files needs torch: pip install 'jaxgan[torch]'")
    output_files.writable_folder(cache, PretrainedError)
    url = model_url(name, base_url)
    part = final.with_name(final.name + ".part")
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one transfer of NAME at a time (e.g. two pages started together)
        if final.is_file():  # the other process finished it meanwhile
            return final
        _transfer(name, url, part, progress)
        _check_download(name, url, part)
        os.replace(part, final)
    return final


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _holds(path: pathlib.Path, names: dict[str, str]) -> bool:
    """Whether ``path`` is a complete conversion of exactly ``names`` (``{"AtoB": name, "BtoA": reverse}``)."""
    try:
        with open(path / PRETRAINED_FILE) as f:
            info = json.load(f)
        have = {"AtoB": info["name"], **({"BtoA": info["reverse"]["name"]} if info.get("reverse") else {})}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return have == names and (path / generator_checkpoint.CONFIG_FILE).is_file()


def fetch(
    name: str,
    output: str | os.PathLike | None = None,
    base_url: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    with_reverse: bool = False,
    progress: bool = True,
) -> pathlib.Path:
    """Download (see :func:`download`) and convert an official model into a generator checkpoint.

    Args:
      name: a key of :data:`MODELS`; stored as the ``AtoB`` generator (``g_ab``).
      output: the checkpoint directory to create (absent or empty); ``None``:
        ``CACHE/converted/NAME`` (``CACHE/converted/NAME+REVERSE`` with the reverse).
        A directory that already holds this conversion is returned as it is.
      base_url, cache_dir, progress: as in :func:`download`.
      with_reverse: also store ``REVERSE[name]`` as the ``BtoA`` generator (``g_ba``), where
        :data:`REVERSE` has one, so that both directions (and reconstructions) work.

    Returns:
      The absolute checkpoint directory: ``jaxgan.generator_loading.load_generator(direction,
      checkpoint_dir=...)`` reads it; its ``pretrained.json`` is ``{"name", "description",
      "url", "sha256", "direction": "AtoB", "reverse": {... "direction": "BtoA"} | null}``.

    Raises:
      PretrainedError: as :func:`download`; an ``output`` that holds something else.
    """
    _check_name(name)
    names = {"AtoB": name, **({"BtoA": REVERSE[name]} if with_reverse and name in REVERSE else {})}
    cache = cache_root(cache_dir)
    out = pathlib.Path(output).expanduser().absolute() if output else cache / "converted" / "+".join(names.values())
    if _holds(out, names):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PretrainedError(f"output {out} already exists and holds something else; give a new directory")
    output_files.checkpoint_folder(out, PretrainedError)  # before any download
    output_files.writable_folder(out.parent, PretrainedError)
    generators, infos, configs = {}, {}, []
    for direction, model in names.items():
        pth = download(model, base_url, cache, progress)
        try:
            generators[direction], cfg = _convert(pth)
        except ImportError as e:  # no torch here: the file is fine (a cache shared between environments)
            raise PretrainedError(f"cannot convert {pth}: {e}") from e
        except Exception as e:  # noqa: BLE001 - a cached file replaced by hand: say which one
            raise PretrainedError(f"cannot convert {pth} ({e}); delete it and run again to download it afresh") from e
        configs.append(cfg)
        infos[direction] = {"name": model, "description": MODELS[model], "url": model_url(model, base_url),
                            "sha256": _sha256(pth), "direction": direction}  # fmt: skip
    if any(c != configs[0] for c in configs):
        raise PretrainedError(f"{' and '.join(names.values())} differ in architecture; fetch them separately")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:  # convert next to ``out``, then rename: ``out`` is either absent or complete
        generator_checkpoint.save_generators_checkpoint(generators, configs[0], tmp)
        with open(tmp / PRETRAINED_FILE, "w") as f:
            json.dump({**infos["AtoB"], "reverse": infos.get("BtoA")}, f, indent=2)
        os.replace(tmp, out)
    except (OSError, generator_checkpoint.GeneratorCheckpointError) as e:
        if _holds(out, names):  # another process (a second page started at once) converted the same meanwhile
            return out
        raise PretrainedError(f"cannot write {out}: {getattr(e, 'strerror', None) or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status: 0 written, 2 error (the message says what to do)."""
    parser = argparse.ArgumentParser(prog="python -m jaxgan.pretrained", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help="an official model, e.g. horse2zebra (see --list)")
    parser.add_argument("--list", action="store_true", help="print the official models and what they translate")
    parser.add_argument("--output", help="checkpoint directory to create (default: CACHE/converted/NAME)")
    parser.add_argument("--base_url", help="where NAME.pth is fetched from ($JAXGAN_PRETRAINED_URL, else official)")
    parser.add_argument("--cache_dir", help=f"download cache ($JAXGAN_CACHE_DIR, {DEFAULT_CACHE_DIR})")
    parser.add_argument(
        "--with_reverse", action="store_true", help="also store the opposite model (e.g. zebra2horse) as BtoA"
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, description in MODELS.items():
            print(f"{name:<24} {description}")
        return 0
    if not args.name:
        parser.error("give a model NAME (see --list)")
    if args.with_reverse and args.name in MODELS and args.name not in REVERSE:
        print(f"note: {args.name} has no released reverse model; only AtoB is stored", file=sys.stderr)
    try:
        out = fetch(args.name, args.output, args.base_url, args.cache_dir, args.with_reverse)
    except PretrainedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the download", file=sys.stderr)
        return 130
    both = args.with_reverse and args.name in REVERSE
    reverse = f", with {REVERSE[args.name]} as BtoA" if both else ""
    print(f"{args.name} ({MODELS[args.name]}) is ready in {out}{reverse}")
    print("translate with:")
    for direction in ("AtoB", "BtoA") if both else ("AtoB",):
        print(
            f"  python -m jaxgan.translate --checkpoint {shlex.quote(str(out))} --direction {direction} "
            "--input IMAGES --output OUT"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
