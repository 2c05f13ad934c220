"""Orbax checkpoints: exact round trip, keep-last-N, fallback past a damaged checkpoint, config check."""

import logging

import jax
import numpy as np
import pytest
from conftest import tiny_config

from jaxgan import checkpoint, train


def _state(seed=0, **overrides):
    return train.init_train_state(tiny_config(**overrides), jax.random.PRNGKey(seed))


def _abstract(**overrides):
    """The restore target of a fresh run: the state's shapes, nothing computed."""
    return jax.eval_shape(lambda: train.create_train_state(tiny_config(**overrides), jax.random.PRNGKey(0)))


def _equal(a, b) -> bool:
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: np.array_equal(x, y), a, b)))


def test_round_trip_is_exact_and_keeps_last_n(tmp_path):
    s0 = _state()
    batch = {"A": jax.numpy.zeros((1, 32, 32, 3)), "B": jax.numpy.ones((1, 32, 32, 3)) * 0.5}
    s1, _ = train.train_step(s0, batch)  # non-zero Adam moments and a pool entry
    ck = checkpoint.Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ck.save(step, s1)
    ck.wait()
    assert ck.all_steps() == [2, 3]
    restored, step = ck.restore_latest(jax.eval_shape(lambda: s1))
    ck.close()
    assert step == 3
    assert isinstance(restored, train.TrainState)
    assert _equal((restored.params, restored.opt_state, restored.pool_a, restored.rng, restored.step, restored.ema),
                  (s1.params, s1.opt_state, s1.pool_a, s1.rng, s1.step, s1.ema))  # fmt: skip
    assert restored.ema and not _equal(restored.ema, {k: s1.params[k] for k in train.GENERATORS})


def test_empty_directory_restores_nothing(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path)
    assert ck.restore_latest(_state()) == (None, None)
    ck.close()


def _damage(step_dir):
    for f in step_dir.rglob("*"):
        if f.is_file() and f.parent.name != step_dir.name:
            f.write_bytes(b"\0" * 7)


def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    s = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=3)
    ck.save(1, s)
    ck.save(2, s.replace(step=s.step + 2))
    ck.close()
    _damage(tmp_path / "checkpoints" / "2")
    ck = checkpoint.Checkpointer(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        restored, step = ck.restore_latest(s)
    assert step == 1 and int(restored.step) == 0
    assert "step 2" in caplog.text and "unreadable" in caplog.text
    _damage(tmp_path / "checkpoints" / "1")
    with pytest.raises(checkpoint.CheckpointError, match="No readable checkpoint"):
        ck.restore_latest(s)
    ck.close()


def test_empty_and_half_copied_step_folders_are_set_aside(tmp_path, caplog):
    s = _state()
    ck = checkpoint.Checkpointer(tmp_path, keep=3)
    ck.save(1, s)
    ck.close()
    (tmp_path / "checkpoints" / "5").mkdir()  # empty
    (tmp_path / "checkpoints" / "3").mkdir()  # an interrupted copy: the step's files, no data
    (tmp_path / "checkpoints" / "3" / "commit_success.txt").write_text("x")
    ck = checkpoint.Checkpointer(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        restored, step = ck.restore_latest(s)
    ck.close()
    assert step == 1 and "[3, 5]" in caplog.text and "hold no checkpoint" in caplog.text
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "checkpoints_unreadable").iterdir()) == ["3", "5"]


def test_another_model_is_named_not_called_unreadable(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path, keep=3)
    ck.save(1, _state())
    ck.save(2, _state())
    ck.close()
    ck = checkpoint.Checkpointer(tmp_path, keep=3)
    with pytest.raises(checkpoint.ShapeMismatchError, match=r"is \(8,\) in the checkpoint at .*2/default but \(16,\)"):
        ck.restore_latest(_abstract(**{"model.ngf": 16}))
    ck.close()
    assert ck.all_steps() == [1, 2] and not (tmp_path / "checkpoints_unreadable").exists()  # nothing set aside


def test_config_check_names_every_differing_field(tmp_path):
    saved = tiny_config()
    checkpoint.save_config(tmp_path, saved)
    loaded = checkpoint.load_config(tmp_path)
    checkpoint.check_compatible(loaded, tiny_config(batch_size=4, lr=1e-3))  # not shape-relevant: fine
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.check_compatible(loaded, tiny_config(**{"model.ngf": 16, "pool_size": 7}))
    msg = str(e.value)
    assert "model.ngf: checkpoint has 8, config has 16" in msg and "pool_size" in msg and "--workdir" in msg
    sized = tiny_config()
    sized.image_shape = (40, 48)  # preprocess none: the images' own size sizes the pools
    checkpoint.save_config(tmp_path, sized)
    smaller = tiny_config()
    smaller.image_shape = (32, 32)
    with pytest.raises(
        checkpoint.CheckpointError, match=r"image_shape: checkpoint has \[40, 48\], config has \[32, 32\]"
    ):
        checkpoint.check_compatible(checkpoint.load_config(tmp_path), smaller)
    checkpoint.check_compatible({k: v for k, v in checkpoint.load_config(tmp_path).items() if k != "image_shape"},
                                smaller)  # a run of an older version, which did not save it  # fmt: skip


def _stepped(**overrides):
    batch = {"A": jax.numpy.zeros((1, 32, 32, 3)), "B": jax.numpy.ones((1, 32, 32, 3)) * 0.5}
    return train.train_step(_state(**overrides), batch)[0]


@pytest.mark.parametrize("written", ["before EMA existed", "with ema_decay=0"])
def test_checkpoint_without_ema_restores_into_a_run_with_ema(tmp_path, caplog, written):
    """A checkpoint written before EMA existed (no group) or with ema_decay=0 (an empty one): the EMA starts
    from its generator weights."""
    old = _stepped(ema_decay=0.0)
    assert old.ema == {}
    ck = checkpoint.Checkpointer(tmp_path)
    if written == "before EMA existed":  # the TrainState of then: every field but ema
        ck.save(1, {k: v for k, v in checkpoint._leaves_only(old).items() if k != "ema"})
    else:
        ck.save(1, old)
    ck.wait()
    target = _abstract(ema_decay=0.999)
    with caplog.at_level(logging.INFO, logger="jaxgan"):
        restored, step = ck.restore_latest(target)
    ck.close()
    assert step == 1 and _equal((restored.params, restored.opt_state), (old.params, old.opt_state))
    assert _equal(restored.ema, {k: old.params[k] for k in train.GENERATORS})
    assert "keeps no EMA" in caplog.text


def test_checkpoint_with_ema_restores_into_a_run_without(tmp_path):
    new = _stepped(ema_decay=0.999)
    ck = checkpoint.Checkpointer(tmp_path)
    ck.save(1, new)
    ck.wait()
    restored, _ = ck.restore_latest(_abstract(ema_decay=0.0))
    ck.close()
    assert restored.ema == {} and _equal(restored.params, new.params)


def test_too_little_space_is_a_clear_error_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    state = _state()
    ck = checkpoint.Checkpointer(tmp_path)
    ck.save(1, state)
    ck.wait()
    need = checkpoint._state_bytes(checkpoint._leaves_only(state))
    usage = checkpoint.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: usage._replace(free=need // 2))
    with pytest.raises(checkpoint.CheckpointError, match=r"Not enough disk space .* step 2.* needs about"):
        ck.save(2, state)
    assert ck.all_steps() == [1]
    monkeypatch.undo()
    restored, step = ck.restore_latest(jax.eval_shape(lambda: state))
    assert step == 1 and _equal(restored.params, state.params)
    ck.close()


def test_disk_full_while_writing_is_a_clear_error(tmp_path, monkeypatch):
    import errno

    ck = checkpoint.Checkpointer(tmp_path)

    def full(*args, **kwargs):
        raise RuntimeError("save failed") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.manager, "save", full)
    with pytest.raises(checkpoint.CheckpointError, match="Not enough disk space.*rerun the same command"):
        ck.save(1, _state())
    monkeypatch.undo()
    ck.close()


def test_a_config_json_that_cannot_be_read_is_one_error(tmp_path):
    # Edited by hand (the README points at it) or cut short: training and --mode=results used to end in a
    # JSONDecodeError traceback; the training command prints CheckpointError as one line.
    assert checkpoint.load_config(tmp_path) is None
    for text, says in (
        ('{"lr": 0.0002,\n  "dataset": "folder:/data/h2z', "JSONDecodeError: Unterminated string"),
        ("[1, 2]", "holds a JSON list, not the run's config"),
        (b"\xff\xfe", "UnicodeDecodeError"),
    ):
        (tmp_path / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(checkpoint.CheckpointError, match="fix it, or restore it from a copy") as caught:
            checkpoint.load_config(tmp_path)
        assert str(caught.value).startswith(str(tmp_path / "config.json")) and says in str(caught.value)


@pytest.mark.parametrize("name", ["lr[2e-4]", "run*", "a?b"])
def test_a_folder_whose_path_orbax_reads_as_a_pattern_is_refused_before_any_work(tmp_path, name):
    # Orbax finds a checkpoint's parts by a file-name pattern under its path: in "runs/lr[2e-4]" they were never
    # merged, the run reported success, and nothing it saved could be read. Refused before anything is done.
    from jaxgan import generator_checkpoint, loop, pretrained

    with pytest.raises(checkpoint.CheckpointError, match=r"cannot hold \[, \], \* or \?.*never readable"):
        loop.train_and_evaluate(tiny_config(), tmp_path / name / "run")
    with pytest.raises(generator_checkpoint.GeneratorCheckpointError, match="never readable"):
        params = {"w": np.zeros(1)}  # not reached: the folder is checked first
        generator_checkpoint.save_generators_checkpoint({"AtoB": params}, {}, tmp_path / name)
    with pytest.raises(pretrained.PretrainedError, match="never readable"):  # before any download
        pretrained.fetch("horse2zebra", tmp_path / name, "http://127.0.0.1:9/unused", tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere
