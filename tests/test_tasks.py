"""The evaluation protocols end to end: frozen parameters stay frozen and out
of the checkpoints, batch statistics and mixup pairs do not depend on the
device count, evaluation counts every example exactly once, k-NN is the
brute-force one and leaves pretraining alone."""

import functools
import json
import os

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mae_jax import checkpointing
from mae_jax import devices as devices_lib
from mae_jax import evaluators
from mae_jax import models
from mae_jax import tasks
from mae_jax import train
from mae_jax.data import sources
from mae_jax.data import transforms
from mae_jax.models import dalle
from mae_jax.models import vit
import image_files
from testing_utils import (assert_same_trajectory, tiny_cae_config,
                           tiny_classifier_config, tiny_config,
                           tiny_knn_config, tiny_model)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A pretraining checkpoint (untrained weights suffice here)."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  model_config = tiny_model()
  model = models.build(model_config)
  params = model.init(jax.random.key(3), jnp.zeros((1, 16, 16, 3)),
                      jnp.zeros((1, 16)))["params"]
  checkpointing.save_params(workdir, ml_collections.ConfigDict(
      {"mode": "pretrain", "model": model_config}), jax.device_get(params))
  return workdir, jax.device_get(params)


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_linear_probe_keeps_the_encoder_bit_identical(tmp_path, pretrained):
  init_from, mae_params = pretrained
  config = tiny_classifier_config("linear_probe", init_from=init_from)
  state = train.train_and_evaluate(config, str(tmp_path))
  encoder = _flat(jax.device_get(state.params["encoder"]))
  for name, value in _flat(mae_params["encoder"]).items():
    np.testing.assert_array_equal(encoder[name], value, err_msg=name)
  fresh = tasks.make_task(config, train.AXIS).init_variables(
      jax.random.split(jax.random.key(config.seed))[0], load_pretrained=False)
  assert not np.allclose(state.params["head"]["kernel"],
                         fresh[0]["head"]["kernel"])
  assert np.any(state.model_state["batch_stats"]["head_norm"]["mean"] != 0)
  metrics = _read_metrics(str(tmp_path))
  assert "eval/top1" in metrics[-1] and "eval/top5" in metrics[-1]


def test_partial_fine_tuning_trains_only_the_last_blocks(tmp_path, pretrained):
  init_from, mae_params = pretrained
  config = tiny_classifier_config("finetune", init_from=init_from,
                                  trainable_blocks=1)
  state = train.train_and_evaluate(config, str(tmp_path))
  fresh, _ = tasks.make_task(config, train.AXIS).init_variables(
      jax.random.split(jax.random.key(config.seed))[0], load_pretrained=False)
  for name in ("fc_norm", "head"):
    assert not np.array_equal(state.params[name]["bias"],
                              fresh[name]["bias"]), name
  encoder = _flat(jax.device_get(state.params["encoder"]))
  pretrained_encoder = _flat(mae_params["encoder"])
  for name, value in encoder.items():
    if name.startswith("transformer/blocks_1/"):
      assert not np.array_equal(value, pretrained_encoder[name]), name
    elif name == "pos_embed":  # not in the checkpoint: the sin-cos table
      np.testing.assert_array_equal(value[0, 1:],
                                    vit.sincos_pos_embed_2d(32, 4, 4))
    else:
      np.testing.assert_array_equal(value, pretrained_encoder[name],
                                    err_msg=name)


@pytest.mark.parametrize("mode", ["linear_probe", "finetune"])
def test_same_trajectory_on_one_and_on_eight_devices(tmp_path, mode):
  # Synchronised BatchNorm statistics (linear probe); mixup/cutmix pairs,
  # drop path and random erasing keyed by global example (fine-tuning).
  config = tiny_classifier_config(mode, total_steps=3, log_every_steps=1,
                                  eval_every_steps=3)
  config.augment.random_erasing = 0.5
  one = train.train_and_evaluate(config, str(tmp_path / "one"),
                                 devices=jax.local_devices()[:1])
  eight = train.train_and_evaluate(config, str(tmp_path / "eight"))
  losses_one = [m["train/loss"] for m in _read_metrics(tmp_path / "one")
                if "train/loss" in m]
  losses_eight = [m["train/loss"] for m in _read_metrics(tmp_path / "eight")
                  if "train/loss" in m]
  assert len(losses_one) == 3
  np.testing.assert_allclose(losses_one, losses_eight, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               (one.params, one.model_state), (eight.params, eight.model_state))


def test_evaluation_counts_every_example_exactly_once(tmp_path):
  # 300 test digits in global batches of 64 over 8 devices: the last batch
  # holds 44 real examples and 20 of padding.
  config = tiny_classifier_config("finetune", batch_size=64)
  task = tasks.make_task(config, train.AXIS)
  state = train.create_train_state(task, config, jax.random.key(0),
                                   lambda _: 0.0, load_init_from=False)
  devices = jax.local_devices()
  scalars = evaluators.TopKAccuracy(task, config, devices)(
      devices_lib.replicate(state, devices)).scalars

  source = sources.DigitsSource("test", 16)
  images = np.stack([transforms.center_crop(source[i].image, 16)
                     for i in range(len(source))])
  labels = np.asarray([source[i].label for i in range(len(source))])
  logits = task.model.apply({"params": state.params},
                            transforms.normalize(images))
  ranks = np.argsort(-np.asarray(logits), axis=1)
  top1 = 100 * np.mean(ranks[:, 0] == labels)
  top5 = 100 * np.mean([label in row[:5] for label, row in zip(labels, ranks)])
  assert scalars["eval/top1"] == pytest.approx(top1, abs=1e-9)
  assert scalars["eval/top5"] == pytest.approx(top5, abs=1e-9)


def test_eval_only_evaluates_the_newest_checkpoint(tmp_path):
  config = tiny_classifier_config("linear_probe", total_steps=2,
                                  eval_every_steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  trained = _read_metrics(str(tmp_path))[-1]
  config.eval_only = True
  train.train_and_evaluate(config, str(tmp_path))
  evaluated = _read_metrics(str(tmp_path))[-1]
  assert evaluated["step"] == 2
  assert evaluated["eval/top1"] == trained["eval/top1"]
  assert evaluated["eval/top5"] == trained["eval/top5"]


def test_top_k_counts_ties_and_nan_as_wrong():
  logits = jnp.asarray([[0.0, 2.0, 1.0, -1.0],   # true class 1 is top
                        [1.0, 1.0, 0.0, 0.0],    # tie with class 1
                        [np.nan, 0.0, 0.0, 0.0],  # NaN true logit
                        [0.0, np.nan, 3.0, 1.0]])  # a NaN elsewhere
  labels = jnp.asarray([1, 0, 0, 2])
  np.testing.assert_array_equal(evaluators.in_top_k(logits, labels, 1),
                                [True, False, False, False])
  np.testing.assert_array_equal(evaluators.in_top_k(logits, labels, 2),
                                [True, True, False, True])


def test_classification_refuses_a_pretraining_workdir(tmp_path, pretrained):
  init_from, _ = pretrained
  config = tiny_classifier_config("finetune", init_from=init_from)
  with pytest.raises(ValueError, match="holds a pretrain run.*init_from"):
    train.train_and_evaluate(config, init_from)
  config.eval_only = True
  with pytest.raises(ValueError, match="holds a pretraining checkpoint"):
    train.train_and_evaluate(config, init_from)


def test_eval_only_without_a_checkpoint_is_a_clear_error(tmp_path):
  config = tiny_classifier_config("finetune", eval_only=True)
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    train.train_and_evaluate(config, str(tmp_path))


def test_without_mixup_any_per_device_batch_trains(tmp_path):
  # 2 examples per device, not a multiple of the (unused) group size 32:
  # the README's linear-probe demo on 8 devices.
  config = tiny_classifier_config("linear_probe", total_steps=1,
                                  eval_every_steps=1)
  config.augment.mix_group_size = 32
  assert config.augment.mixup_alpha == config.augment.cutmix_alpha == 0.0
  train.validate_config(config, 1, 8)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 1


def test_evaluation_leaves_out_and_reports_unreadable_images(tmp_path):
  image_files.folder_with_corrupt_image(tmp_path / "data")
  config = tiny_classifier_config("finetune", batch_size=8)
  config.data.update(source="folder", data_dir=str(tmp_path / "data"),
                     eval_split="train", corrupt_images="skip")
  config.model.num_classes = 2
  task = tasks.make_task(config, train.AXIS)
  state = train.create_train_state(task, config, jax.random.key(0),
                                   lambda _: 0.0, load_init_from=False)
  devices = jax.local_devices()
  scalars = evaluators.TopKAccuracy(task, config, devices)(
      devices_lib.replicate(state, devices)).scalars
  assert scalars["eval/skipped_images"] == 1
  assert scalars["eval/top5"] == 100.0  # 2 classes: every readable one
  config.data.corrupt_images = "fail"
  with pytest.raises(ValueError, match="broken.jpg.*corrupt_images=skip"):
    evaluators.TopKAccuracy(task, config, devices)(
        devices_lib.replicate(state, devices))


def _stored(workdir):
  """The newest checkpoint's variables."""
  return checkpointing.load_variables(str(workdir))[1]


def test_attentive_probe_keeps_the_encoder_and_saves_only_the_head(
    tmp_path, pretrained):
  init_from, mae_params = pretrained
  config = tiny_classifier_config("attentive_probe", init_from=init_from)
  state = train.train_and_evaluate(config, str(tmp_path))
  encoder = _flat(jax.device_get(state.params["encoder"]))
  for name, value in _flat(mae_params["encoder"]).items():
    np.testing.assert_array_equal(encoder[name], value, err_msg=name)
  assert np.any(state.params["attentive_pool"]["query"] != 0)
  stored = _stored(tmp_path)
  assert set(stored["params"]) == {"attentive_pool", "head"}
  assert stored["frozen_digest"].shape == (32,)
  metrics = _read_metrics(str(tmp_path))
  assert "eval/top1" in metrics[-1] and "eval/top5" in metrics[-1]


def test_attentive_probe_resumes_exactly_from_a_head_only_checkpoint(
    tmp_path, pretrained):
  init_from, _ = pretrained
  config = tiny_classifier_config("attentive_probe", init_from=init_from)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  config.total_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.total_steps = 4
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get((straight.params, straight.model_state)),
               jax.device_get((resumed.params, resumed.model_state)))


def test_frozen_parameters_of_another_init_from_are_refused(tmp_path,
                                                            pretrained):
  init_from, _ = pretrained
  config = tiny_classifier_config("attentive_probe", init_from=init_from,
                                  total_steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  config.init_from = ""  # a random encoder instead
  config.total_steps = 4
  with pytest.raises(ValueError, match="trained on other frozen parameters"):
    train.train_and_evaluate(config, str(tmp_path))
  config.eval_only = True
  with pytest.raises(ValueError, match="trained on other frozen parameters"):
    train.train_and_evaluate(config, str(tmp_path))


def test_eval_only_of_a_probe_loads_the_encoder_from_init_from(tmp_path,
                                                               pretrained):
  init_from, _ = pretrained
  config = tiny_classifier_config("attentive_probe", init_from=init_from,
                                  total_steps=2, eval_every_steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  trained = _read_metrics(str(tmp_path))[-1]
  config.eval_only = True
  train.train_and_evaluate(config, str(tmp_path))
  evaluated = _read_metrics(str(tmp_path))[-1]
  assert evaluated["step"] == 2
  assert evaluated["eval/top1"] == trained["eval/top1"]


def _center_cropped(split):
  source = sources.DigitsSource(split, 16)
  images = np.stack([transforms.center_crop(source[i].image, 16)
                     for i in range(len(source))])
  return transforms.normalize(images), np.asarray(
      [source[i].label for i in range(len(source))])


def _brute_force_knn_accuracy(config, encoder_params):
  """Top-1/top-5 in % of DINO's weighted k-NN, written out in numpy."""
  encoder = models.build_encoder(config.model)

  def features(images):
    cls = np.asarray(encoder.apply({"params": encoder_params}, images)[:, 0],
                     np.float64)
    return cls / np.linalg.norm(cls, axis=1, keepdims=True)

  bank_images, bank_labels = _center_cropped("train")
  query_images, query_labels = _center_cropped("test")
  similarity = features(query_images) @ features(bank_images).T
  index = np.broadcast_to(np.arange(len(bank_labels)), similarity.shape)
  nearest = np.lexsort((index, -similarity), axis=1)[:, :config.knn.k]
  weights = np.exp(np.take_along_axis(similarity, nearest, 1)
                   / config.knn.temperature)
  votes = np.zeros((len(query_labels), 10))
  for row in range(len(query_labels)):
    np.add.at(votes[row], bank_labels[nearest[row]], weights[row])
  # Ties count against the classifier, as in evaluators.in_top_k.
  true_votes = votes[np.arange(len(votes)), query_labels][:, None]
  rank = np.sum(votes >= true_votes, axis=1) - 1
  return 100 * np.mean(rank < 1), 100 * np.mean(rank < 5)


def test_knn_mode_is_the_brute_force_knn_on_one_and_eight_devices(
    tmp_path, pretrained):
  init_from, mae_params = pretrained
  config = tiny_knn_config(init_from=init_from)
  one = train.train_and_evaluate(config, str(tmp_path / "one"),
                                 devices=jax.local_devices()[:1])
  train.train_and_evaluate(config, str(tmp_path / "eight"))
  (on_one,), (on_eight,) = (_read_metrics(tmp_path / d)
                            for d in ("one", "eight"))
  assert on_one == on_eight
  assert on_one["step"] == 0
  top1, top5 = _brute_force_knn_accuracy(config, mae_params["encoder"])
  assert on_one["eval/knn_top1"] == pytest.approx(top1, abs=1e-4)
  assert on_one["eval/knn_top5"] == pytest.approx(top5, abs=1e-4)
  assert 30 < top1 < 100  # a real test: neither chance nor trivial
  # k-NN trained nothing and saved nothing.
  np.testing.assert_array_equal(one.params["encoder"]["cls_token"],
                                mae_params["encoder"]["cls_token"])
  assert not (tmp_path / "one" / "checkpoints").exists()


def test_knn_during_pretraining_leaves_the_trajectory_bit_identical(tmp_path):
  without = train.train_and_evaluate(tiny_config(total_steps=4),
                                     str(tmp_path / "without"))
  with_knn = train.train_and_evaluate(
      tiny_config(total_steps=4, knn_every_steps=2), str(tmp_path / "with"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(without.params),
               jax.device_get(with_knn.params))
  knn_steps = [m["step"] for m in _read_metrics(tmp_path / "with")
               if "eval/knn_top1" in m]
  assert knn_steps == [2, 4]
  assert not any("eval/knn_top1" in m
                 for m in _read_metrics(tmp_path / "without"))


def _one_class_folder(root):
  """An image folder whose every image is in one class folder: unlabelled
  data as it is often laid out for pretraining."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    (root / split / "all").mkdir(parents=True)
    for i in range(20):
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(
          root / split / "all" / f"{i}.png")
  return str(root)


def test_knn_on_unlabelled_data_fails_before_training(tmp_path):
  config = tiny_config(knn_every_steps=2)
  config.data.update(source="folder", data_dir=_one_class_folder(
      tmp_path / "data"), split="train", eval_split="test")
  with pytest.raises(ValueError, match="k-NN needs labelled images, and split"
                     " 'train' of data.source='folder' has 1 classes"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("mode", ["knn", "attentive_probe"])
def test_an_encoder_checkpoint_of_another_size_is_refused(tmp_path, pretrained,
                                                          mode):
  init_from, _ = pretrained
  config = (tiny_knn_config() if mode == "knn"
            else tiny_classifier_config(mode))
  config.update(init_from=init_from)
  config.model.update(width=64, mlp_dim=128)
  with pytest.raises(ValueError, match="does not fit the configured model"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(
      tmp_path / "checkpoints")


def test_knn_leaves_out_and_reports_unreadable_images(tmp_path):
  image_files.folder_with_corrupt_image(tmp_path / "data")
  config = tiny_knn_config()
  config.data.update(source="folder", data_dir=str(tmp_path / "data"),
                     split="train", eval_split="train",
                     corrupt_images="skip")
  config.knn.update(k=3, batch_size=8)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  (metrics,) = _read_metrics(tmp_path / "run")
  # Out of the bank and out of the queries (the evaluator checks that the
  # counted and the skipped make the split): counted once in each.
  assert metrics["eval/knn_skipped_images"] == 2


def test_cae_pretraining_logs_both_loss_terms_and_draws_its_figures(
    tmp_path):
  config = tiny_cae_config(total_steps=3, log_every_steps=1,
                           figure_every_steps=3)
  assert isinstance(tasks.make_task(config, train.AXIS),
                    tasks.CAEPretrainTask)
  train.train_and_evaluate(config, str(tmp_path))
  records = _read_metrics(str(tmp_path))
  losses = [r for r in records if "train/loss" in r]
  assert len(losses) == 3
  for r in losses:
    assert r["train/loss"] == pytest.approx(
        r["train/loss_recon"] + 2.0 * r["train/loss_align"], rel=1e-5)
  assert "eval/all_patches_mse" in records[-1]
  for name in ("reconstruction", "all_patches"):
    assert os.path.exists(tmp_path / f"{name}_0000003.png")


def test_cae_pretraining_is_the_same_on_one_and_on_eight_devices(tmp_path):
  # Block masking and drop path (in all four stacks) keyed by example.
  config = tiny_cae_config(total_steps=3, log_every_steps=1,
                           figure_every_steps=0)
  assert config.model.masking == "block" and config.model.drop_path_rate > 0
  one = train.train_and_evaluate(config, str(tmp_path / "one"),
                                 devices=jax.local_devices()[:1])
  eight = train.train_and_evaluate(config, str(tmp_path / "eight"))
  terms = ("train/loss", "train/loss_recon", "train/loss_align")
  logged = [[[r[t] for t in terms] for r in _read_metrics(tmp_path / name)
             if "train/loss" in r] for name in ("one", "eight")]
  assert len(logged[0]) == 3
  np.testing.assert_allclose(logged[0], logged[1], rtol=1e-5)
  assert_same_trajectory(one.params, eight.params, config)


def test_mae_takes_block_masking_and_drop_path():
  config = tiny_config()
  config.model.update(image_size=24, masking="block", drop_path_rate=0.2)
  task = tasks.make_task(config, train.AXIS)
  task.validate(2)
  params, _ = task.init_variables(jax.random.key(0), False)
  images = np.asarray(jax.random.randint(jax.random.key(1), (4, 24, 24, 3), 0,
                                         256), np.uint8)
  batch = {"image": images, "example_id": jnp.arange(4)}
  loss = functools.partial(task.loss, params, {}, batch, jax.random.key(2))
  with_drop = loss(jnp.int32(0))[0]
  assert with_drop != loss(jnp.int32(1))[0]
  no_drop_config = config.copy_and_resolve_references()
  no_drop_config.model.drop_path_rate = 0.0
  no_drop = tasks.make_task(no_drop_config, train.AXIS).loss(
      params, {}, batch, jax.random.key(2), jnp.int32(0))[0]
  assert with_drop != no_drop


@pytest.mark.parametrize("field,value,message", [
    ("align_weight", -1.0, "align_weight=-1.0 must not be negative"),
    ("target", "rgb", "target='rgb'"),
    ("weight_init", "lecun", "weight_init='lecun'"),
    ("masking", "grid", "grid masking .*mask_ratio=0.75"),
])
def test_cae_config_errors_name_the_field(field, value, message):
  config = tiny_cae_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    train.validate_config(config, 1, 8)


def test_a_cae_encoder_is_a_drop_in_for_the_classifiers(tmp_path):
  pretrain = tiny_cae_config()
  task = tasks.make_task(pretrain, train.AXIS)
  params, _ = task.init_variables(jax.random.key(0), False)
  # Layer scales away from their init, so that loading them shows.
  params = jax.tree.map(lambda x: x + 0.01, jax.device_get(params))
  init_from = str(tmp_path / "cae")
  checkpointing.save_params(init_from, pretrain, params)

  # The MAE recipe's linear probe, as configured for the MAE encoder.
  config = tiny_classifier_config("linear_probe", init_from=init_from,
                                  total_steps=2, eval_every_steps=2)
  config.model.image_size = 24
  assert config.model.layer_scale_init == 0.0
  workdir = str(tmp_path / "probe")
  state = train.train_and_evaluate(config, workdir)
  encoder = _flat(jax.device_get(state.params["encoder"]))
  for name, value in _flat(params["encoder"]).items():
    np.testing.assert_array_equal(encoder[name], value, err_msg=name)
  stored = checkpointing.load_config(workdir).model
  assert (stored.layer_scale_init, stored.key_bias, stored.sincos_order) == (
      0.1, False, "h_first")
  # The same command again resumes (here: finds the run finished) with the
  # adopted options, which the workdir's config check accepts.
  again = train.train_and_evaluate(config, workdir)
  assert int(again.step) == 2


def _tiny_tokenizer(path):
  """A DALL-E encoder of the released vocabulary but tiny widths, written
  as `python -m mae_jax.convert --src=encoder.pkl` writes one."""
  params = dalle.DalleEncoder(hidden_width=8, blocks_per_group=1).init(
      jax.random.key(9), jnp.zeros((1, 8, 8, 3)))["params"]
  checkpointing.save_params(str(path), dalle.encoder_config(
      hidden_width=8, blocks_per_group=1), jax.device_get(params))
  return jax.device_get(params)


def _dalle_config(tokenizer_path, **overrides):
  config = tiny_cae_config(total_steps=2, log_every_steps=1, **overrides)
  config.model.update(target="dalle", tokenizer_path=str(tokenizer_path))
  config.data.second_view_size = 48  # 8 pixels per code, 6x6 patches
  return config


def test_cae_predicts_the_dalle_tokens_of_the_second_view(tmp_path):
  tokenizer = _tiny_tokenizer(tmp_path / "dalle")
  config = _dalle_config(tmp_path / "dalle")
  assert train.train_and_evaluate(config, str(tmp_path / "run")) is not None
  first = _read_metrics(str(tmp_path / "run"))[0]
  # Cross-entropy over 8192 codes starts near log(8192) = 9.0.
  assert 7 < first["train/loss_recon"] < 11
  # The tokenizer rides in the checkpoints, unchanged by training.
  _, variables = checkpointing.load_variables(str(tmp_path / "run"))
  chex.assert_trees_all_equal(variables["model_state"]["tokenizer"],
                              tokenizer)


def test_cae_dalle_target_errors_say_what_to_do(tmp_path):
  config = _dalle_config("")
  with pytest.raises(ValueError, match="python -m mae_jax.convert "
                     "--src=encoder.pkl.*tokenizer_path=DIR"):
    train.validate_config(config, 1, 8)
  config = _dalle_config(tmp_path / "nowhere")
  config.data.second_view_size = 112
  with pytest.raises(ValueError, match="6x6 patches need one code each; set "
                     "--config.data.second_view_size=48"):
    train.validate_config(config, 1, 8)
  config.data.second_view_size = 48
  with pytest.raises(FileNotFoundError, match="no DALL-E tokenizer at .*"
                     "python -m mae_jax.convert"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  config = tiny_cae_config()
  config.data.second_view_size = 48
  with pytest.raises(ValueError, match="target='pixels' does not use"):
    train.validate_config(config, 1, 8)
