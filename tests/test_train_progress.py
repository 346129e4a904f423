"""The trainer's progress bar moves at every step, not only at logged ones (a fine-tuning run
logging every 100 steps showed a bar that stood still, then jumped, with a wrong ETA)."""


def test_the_progress_bar_is_updated_at_every_step(tmp_path, monkeypatch):
    import sys

    from bert_jax import metrics_logging, train
    from tests.train_helpers import tiny_config

    updates = []
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(metrics_logging.ProgressBar, "update",
                        lambda self, step, postfix=None: updates.append(step))
    config = tiny_config(num_steps=4, log_every=100)
    config.logging.progress_bar = True
    train.train_and_evaluate(config, tmp_path)
    assert sorted(set(updates)) == [1, 2, 3, 4]
