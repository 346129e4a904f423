"""RunCheckpointer on its own: keep-last-K plus keep-best, and what a checkpoint holds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import run_checkpoints, sharding


def _checkpointer(workdir, keep=2, higher_is_better=True):
    return run_checkpoints.RunCheckpointer(
        workdir, {"every_steps": 1, "keep": keep, "keep_best": True, "async_save": True},
        main_metric="accuracy", higher_is_better=higher_is_better)


def _state(value):
    return {"params": {"w": jnp.full((4, 2), value, jnp.float32)}, "step": jnp.asarray(value, jnp.int32)}


@pytest.mark.parametrize("higher_is_better, best", [(True, 2), (False, 3)])
def test_keeps_the_last_k_and_the_best(tmp_path, higher_is_better, best):
    checkpointer = _checkpointer(tmp_path, keep=2, higher_is_better=higher_is_better)
    accuracy = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.6, 5: 0.7}
    for step in range(1, 6):
        checkpointer.save(step, _state(step), {"position": step}, {"step": step},
                          metrics={"accuracy": accuracy[step]})
    checkpointer.wait_until_finished()
    kept = sorted(int(p.name) for p in checkpointer.directory.iterdir() if p.name.isdigit())
    assert kept == sorted({4, 5, best})  # the last 2, and the best by accuracy
    checkpointer.close()


def test_checkpoint_holds_state_iterator_position_and_meta(tmp_path):
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save(7, _state(7), {"position": 7, "seed": 3}, {"step": 7, "note": "x"})
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                            _state(0))
    state, iterator_state, meta = _checkpointer(tmp_path).restore(7, abstract)
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), 7.0)
    assert iterator_state == {"position": 7, "seed": 3}
    assert meta == {"step": 7, "note": "x"}
    params, step = run_checkpoints.restore_params(tmp_path)
    assert step == 7 and isinstance(params["w"], np.ndarray)


def test_bad_checkpoint_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="config.checkpoint.keep"):
        run_checkpoints.RunCheckpointer(tmp_path, {"every_steps": 1, "keep": 0, "keep_best": False,
                                                   "async_save": False})
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        run_checkpoints.restore_params(tmp_path / "empty")


def test_saves_every_n_steps_and_not_after_the_first(tmp_path):
    """The interval alone decides (plus the trainer's forced final / SIGTERM saves): orbax's
    default policy would also save after step 1, a checkpoint nobody asked for."""
    checkpointer = run_checkpoints.RunCheckpointer(
        tmp_path, {"every_steps": 3, "keep": 10, "keep_best": False, "async_save": False})
    saved = [step for step in range(1, 8) if checkpointer.save(step, _state(step), {}, {"step": step})]
    assert saved == [3, 6]
    assert checkpointer.save(7, _state(7), {}, {"step": 7}, force=True)
    checkpointer.wait_until_finished()
    assert sorted(int(p.name) for p in checkpointer.directory.iterdir() if p.name.isdigit()) == [3, 6, 7]
    checkpointer.close()
