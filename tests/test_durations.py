"""Durations in epochs, turned into steps from the data size and the batch."""

import pytest

from configs import common
from mae_jax import durations

IMAGENET = 1_281_167


def _pretrain(batch_size=4096):
  config = common.pretrain_config("base/16")
  config.batch_size = batch_size
  return config


def test_epochs_become_steps_of_the_batch_actually_used():
  # 312 steps per epoch at 4096 (the reference drops the last partial batch).
  resolved = durations.resolve(_pretrain(), IMAGENET)
  assert (resolved.total_steps, resolved.warmup_steps) == (800 * 312, 40 * 312)
  # The README's example: a smaller batch keeps 800 epochs and 40 of warm-up.
  resolved = durations.resolve(_pretrain(batch_size=1024), IMAGENET)
  assert (resolved.total_steps, resolved.warmup_steps) == (800 * 1251,
                                                           40 * 1251)
  assert (resolved.total_epochs, resolved.warmup_epochs) == (800, 40)


def test_steps_are_kept_as_given():
  config = _pretrain()
  common.in_steps(config, total=1000, warmup=100)
  resolved = durations.resolve(config, IMAGENET)
  assert (resolved.total_steps, resolved.warmup_steps) == (1000, 100)


def test_resolve_leaves_the_config_it_was_given_unchanged():
  config = _pretrain()
  config.lock()
  durations.resolve(config, IMAGENET)
  assert (config.total_steps, config.warmup_steps) == (0, 0)


def test_evaluation_interval_in_epochs():
  config = common.linear_probe_config("base/16")  # every epoch, batch 16384
  resolved = durations.resolve(config, IMAGENET)
  assert resolved.eval_every_steps == IMAGENET // 16384 == 78
  assert resolved.total_steps == 90 * 78


def test_a_duration_given_in_both_units_is_refused():
  config = _pretrain()
  config.total_steps = 100
  with pytest.raises(ValueError, match=r"total_epochs=800.0 and "
                     r"total_steps=100 are both set.*total_epochs=0"):
    durations.check(config)


def test_a_missing_total_is_refused():
  config = _pretrain()
  config.total_epochs = 0.0
  with pytest.raises(ValueError, match="set --config.total_epochs or "
                     "--config.total_steps"):
    durations.check(config)


def test_warmup_longer_than_the_run_is_refused_in_either_unit():
  config = _pretrain()
  config.warmup_epochs = 801.0
  with pytest.raises(ValueError, match=r"warmup_epochs \(801.0\)"):
    durations.check(config)
  # Mixed units are compared once the data size is known.
  common.in_steps(config, total=10, warmup=0)
  config.warmup_epochs = 1.0
  with pytest.raises(ValueError, match="warm-up .312 steps. is longer"):
    durations.resolve(config, IMAGENET)


def test_a_batch_larger_than_the_data_is_refused():
  with pytest.raises(ValueError, match="larger than the training split "
                     r"\(1497 examples\)"):
    durations.resolve(_pretrain(batch_size=4096), 1497)


def test_describe_names_steps_and_epochs():
  config = durations.resolve(_pretrain(), IMAGENET)
  line = durations.describe(config, IMAGENET)
  assert "312 steps per epoch" in line
  assert "total=249600 steps (800 epochs)" in line
  assert "warmup=12480 steps (40 epochs)" in line


def test_knn_interval_in_epochs():
  config = _pretrain()
  config.knn_every_epochs = 10.0
  resolved = durations.resolve(config, IMAGENET)
  assert resolved.knn_every_steps == 10 * 312
  config.knn_every_epochs = 0.0
  assert durations.resolve(config, IMAGENET).knn_every_steps == 0  # off
