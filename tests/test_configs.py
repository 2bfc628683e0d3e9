"""Config files as the command line loads them, the paper's recipe, checks."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from mae_jax import durations
from mae_jax import models
from mae_jax import optim
from mae_jax import tasks
from mae_jax import train

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs")
IMAGENET_CONFIGS = ("mae_vit_base_pretrain.py", "mae_vit_large_pretrain.py",
                    "mae_vit_huge_pretrain.py")
CAE_IMAGENET_CONFIGS = ("cae_vit_base_pretrain.py", "cae_vit_large_pretrain.py")
PRETRAIN_CONFIGS = (("demo.py", "demo_cae.py") + IMAGENET_CONFIGS
                    + CAE_IMAGENET_CONFIGS)
LINEAR_PROBE_CONFIGS = ("mae_vit_base_linear_probe.py",
                        "mae_vit_large_linear_probe.py",
                        "mae_vit_huge_linear_probe.py")
ATTENTIVE_PROBE_CONFIGS = ("mae_vit_base_attentive_probe.py",
                           "mae_vit_large_attentive_probe.py",
                           "mae_vit_huge_attentive_probe.py")
FINETUNE_CONFIGS = ("mae_vit_base_finetune.py", "mae_vit_large_finetune.py",
                    "mae_vit_huge_finetune.py")
CLASSIFICATION_CONFIGS = (
    ("demo_linear_probe.py", "demo_attentive_probe.py", "demo_finetune.py")
    + LINEAR_PROBE_CONFIGS + ATTENTIVE_PROBE_CONFIGS + FINETUNE_CONFIGS)
KNN_CONFIGS = ("demo_knn.py", "mae_vit_base_knn.py", "mae_vit_large_knn.py",
               "mae_vit_huge_knn.py")
ALL_CONFIGS = PRETRAIN_CONFIGS + CLASSIFICATION_CONFIGS + KNN_CONFIGS


# What the paper's CAE recipes need besides the file: the tokenizer.
TOKENIZER = "--config.model.tokenizer_path=/converted/dalle"


def _load(config_file, *overrides):
  """Parses a command line the way mae_jax/main.py does (locked config)."""
  argv = ["main", f"--config={os.path.join(CONFIG_DIR, config_file)}",
          *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file",
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_every_config_file_is_tested():
  files = {f for f in os.listdir(CONFIG_DIR)
           if f.endswith(".py") and f not in ("__init__.py", "common.py")}
  assert files == set(ALL_CONFIGS)


@pytest.mark.parametrize("config_file", ALL_CONFIGS)
def test_config_file_loads_locked_and_valid(config_file):
  config = _load(config_file, *(
      [TOKENIZER] if config_file in CAE_IMAGENET_CONFIGS else []))
  assert config.is_locked
  expected_mode = next((mode for mode in (
      "linear_probe", "attentive_probe", "finetune", "knn")
                        if mode in config_file), "pretrain")
  assert config.mode == expected_mode
  assert config.model.image_size % config.model.patch_size == 0
  # The recipe fits on 8 devices as written.
  train.validate_config(config, process_count=1, local_device_count=8)
  with pytest.raises(AttributeError):
    config.model.new_field = 1  # locked: no new keys


@pytest.mark.parametrize("config_file", PRETRAIN_CONFIGS)
def test_command_line_overrides_change_values(config_file):
  config = _load(config_file, "--config.batch_size=64",
                 "--config.model.mask_ratio=0.5",
                 "--config.data.data_dir=/tmp/somewhere")
  assert config.batch_size == 64
  assert config.model.mask_ratio == 0.5
  assert config.data.data_dir == "/tmp/somewhere"
  # Others keep their values.
  assert config.model.mlp_dim == _load(config_file).model.mlp_dim


@pytest.mark.parametrize("override,bad_key", [
    ("--config.model.mask_raito=0.5", "mask_raito"),
    ("--config.batch_sise=64", "batch_sise"),
    ("--config.data.sorce=folder", "sorce"),
])
def test_unknown_key_on_command_line_fails(override, bad_key):
  with pytest.raises(AttributeError) as info:
    _load("demo.py", override)
  assert bad_key in str(info.value)


@pytest.mark.parametrize("config_file", IMAGENET_CONFIGS)
def test_imagenet_configs_hold_the_paper_recipe(config_file):
  config = _load(config_file)
  assert config.batch_size == 4096
  assert config.grad_accum_steps == 1
  assert config.optimizer.base_lr == 1.5e-4
  assert optim.peak_learning_rate(config) == pytest.approx(1.5e-4 * 16)
  assert (config.optimizer.b1, config.optimizer.b2) == (0.9, 0.95)
  assert config.optimizer.weight_decay == 0.05
  assert config.optimizer.min_lr == 0.0
  assert config.optimizer.grad_clip_norm == 0.0  # no clipping
  model = config.model
  assert model.image_size == 224
  assert model.mask_ratio == 0.75
  assert model.norm_pix_loss is True
  assert model.loss_on_all_patches is False
  assert model.layer_norm_eps == 1e-6
  assert (model.decoder_depth, model.decoder_width,
          model.decoder_num_heads) == (8, 512, 16)
  assert model.decoder_mlp_dim == 4 * 512
  assert model.mlp_dim == 4 * model.width
  # 40 warm-up and 800 epochs, turned into steps when the run starts.
  assert (config.total_epochs, config.warmup_epochs) == (800, 40)
  assert (config.total_steps, config.warmup_steps) == (0, 0)
  data = config.data
  assert (data.source, data.name, data.split) == ("tfds", "imagenet2012",
                                                  "train")
  assert tuple(data.crop_scale) == (0.2, 1.0)
  assert tuple(data.crop_ratio) == pytest.approx((3 / 4, 4 / 3))
  assert data.horizontal_flip is True


@pytest.mark.parametrize("config_file,epochs,warmup", [
    ("cae_vit_base_pretrain.py", 800, 20),
    ("cae_vit_base_pretrain.py:300", 300, 10),
    ("cae_vit_base_pretrain.py:1600", 1600, 40),
    ("cae_vit_large_pretrain.py", 1600, 40),
])
def test_cae_configs_hold_the_official_recipe(config_file, epochs, warmup):
  config = _load(config_file)
  assert (config.total_epochs, config.warmup_epochs) == (epochs, warmup)
  assert config.batch_size == 2048
  opt = config.optimizer
  assert (opt.name, opt.b1, opt.b2, opt.weight_decay, opt.min_lr,
          opt.grad_clip_norm) == ("adamw", 0.9, 0.999, 0.05, 1e-5, 3.0)
  # 1.5e-3 at batch 2048, not rescaled by the batch (a batch override keeps
  # the lr, as the official scripts do).
  assert optim.peak_learning_rate(config) == 1.5e-3
  config.batch_size = 256
  assert optim.peak_learning_rate(config) == 1.5e-3
  data = config.data
  assert tuple(data.crop_scale) == (0.08, 1.0) and data.horizontal_flip
  assert data.second_view_size == 112
  model = config.model
  large = "large" in config_file
  assert (model.name, model.masking, model.mask_ratio) == ("cae", "block",
                                                           0.5)
  assert models.encoder_size("large/16" if large else "base/16") == {
      k: model[k] for k in ("patch_size", "width", "depth", "num_heads",
                            "mlp_dim")}
  scale = 1e-5 if large else 0.1
  assert (model.layer_scale_init, model.decoder_layer_scale_init) == (scale,
                                                                      scale)
  assert (model.key_bias, model.sincos_order) == (False, "h_first")
  assert model.drop_path_rate == 0.1
  assert (model.regressor_depth, model.decoder_depth) == (4, 4)
  # The ViT-L script's lost flags: decoder heads 16, --fix_init_weight.
  assert model.decoder_num_heads == (16 if large else 12)
  assert model.weight_init == ("beit" if large else "xavier")
  assert (model.target, model.align_weight) == ("dalle", 2.0)


def test_cae_config_of_another_length_is_a_clear_error():
  with pytest.raises(flags.IllegalFlagValueError,
                     match="300, 800, 1600.*not '400'"):
    _load("cae_vit_base_pretrain.py:400")


@pytest.mark.parametrize("config_file,encoder_params", [
    ("cae_vit_base_pretrain.py", 86e6), ("cae_vit_large_pretrain.py", 304e6)])
def test_cae_recipes_initialise_and_step_in_shapes_only(config_file,
                                                        encoder_params):
  """The real models and tokenizer, traced (`jax.eval_shape`), never
  computed."""
  config = durations.resolve(_load(config_file, TOKENIZER), 1_281_167)
  task = tasks.make_task(config, train.AXIS)
  schedule = optim.make_schedule(config)
  state = jax.eval_shape(lambda rng: train.create_train_state(
      task, config, rng, schedule, load_init_from=False), jax.random.key(0))
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(
      state.params["encoder"]))
  assert count / encoder_params == pytest.approx(1.0, abs=0.01)
  per_device = 4
  batch = {"image": jax.ShapeDtypeStruct((1, per_device, 224, 224, 3),
                                         jnp.uint8),
           "label": jax.ShapeDtypeStruct((1, per_device), jnp.int32),
           "example_id": jax.ShapeDtypeStruct((1, per_device), jnp.int32),
           "second_view": jax.ShapeDtypeStruct((1, per_device, 112, 112, 3),
                                               jnp.uint8)}
  assert set(state.model_state) == {"tokenizer"}
  step = jax.vmap(functools.partial(train.train_step, task=task,
                                    schedule=schedule, grad_accum_steps=1),
                  in_axes=(None, 0, None), axis_name=train.AXIS)
  new_state, metrics = jax.eval_shape(step, state, batch, jax.random.key(1))
  assert jax.tree.map(lambda x: x.shape[1:], new_state.params) == (
      jax.tree.map(lambda x: x.shape, state.params))
  assert set(metrics.extra.totals) == {"loss_recon", "loss_align"}


@pytest.mark.parametrize("config_file,patch,width,depth,heads", [
    ("mae_vit_base_pretrain.py", 16, 768, 12, 12),
    ("mae_vit_large_pretrain.py", 16, 1024, 24, 16),
    ("mae_vit_huge_pretrain.py", 14, 1280, 32, 16),
])
def test_imagenet_configs_have_the_vit_sizes(config_file, patch, width, depth,
                                             heads):
  model = _load(config_file).model
  assert (model.patch_size, model.width, model.depth,
          model.num_heads) == (patch, width, depth, heads)


@pytest.mark.parametrize("config_file", LINEAR_PROBE_CONFIGS)
def test_linear_probe_configs_hold_the_paper_recipe(config_file):
  config = _load(config_file)
  model, opt = config.model, config.optimizer
  assert (model.pooling, model.head_batch_norm) == ("cls", True)
  assert model.head_init_std == 0.01 and model.drop_path_rate == 0.0
  assert config.batch_size == 16384
  assert (opt.name, opt.base_lr, opt.momentum, opt.trust_coefficient,
          opt.weight_decay) == ("lars", 0.1, 0.9, 0.001, 0.0)
  assert optim.peak_learning_rate(config) == pytest.approx(6.4)
  assert (config.total_epochs, config.warmup_epochs) == (90, 10)
  assert (config.total_steps, config.warmup_steps) == (0, 0)
  assert (config.eval_every_epochs, config.eval_every_steps) == (1, 0)
  assert tuple(config.data.crop_scale) == (0.08, 1.0)
  assert config.data.crop_sampler == "clamped"  # the reference's util/crop.py
  assert config.data.rand_augment_num_ops == 0
  augment = config.augment
  assert (augment.mixup_alpha, augment.cutmix_alpha, augment.label_smoothing,
          augment.random_erasing) == (0.0, 0.0, 0.0, 0.0)
  assert config.data.eval_split == "validation"


@pytest.mark.parametrize("config_file", ATTENTIVE_PROBE_CONFIGS)
def test_attentive_probe_configs_hold_cae_recipe(config_file):
  config = _load(config_file)
  model, opt = config.model, config.optimizer
  assert (model.pooling, model.head_batch_norm) == ("attentive", True)
  assert model.head_init_std == 0.01 and model.drop_path_rate == 0.0
  assert config.batch_size == 8192
  assert (opt.name, opt.base_lr, opt.momentum, opt.nesterov,
          opt.weight_decay, opt.lr_scaling) == ("sgd", 0.4, 0.9, True,
                                                0.0, "none")
  assert optim.peak_learning_rate(config) == 0.4
  assert (config.total_epochs, config.warmup_epochs) == (90, 10)
  assert tuple(config.data.crop_scale) == (0.08, 1.0)
  # timm's RandomResizedCrop in the official script, not MAE's clamped one.
  assert config.data.crop_sampler == "torchvision"
  assert config.data.horizontal_flip is True
  assert config.data.rand_augment_num_ops == 0
  augment = config.augment
  assert (augment.mixup_alpha, augment.cutmix_alpha, augment.label_smoothing,
          augment.random_erasing) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("config_file", KNN_CONFIGS)
def test_knn_configs_hold_dino_recipe_and_only_evaluate(config_file):
  config = _load(config_file, "--config.init_from=/some/workdir")
  assert (config.knn.k, config.knn.temperature, config.knn.pooling) == (
      20, 0.07, "cls")
  assert config.eval_only is True
  assert config.data.eval_split == ("test" if "demo" in config_file
                                    else "validation")
  with pytest.raises(ValueError, match="mode=knn trains nothing"):
    train.validate_config(_load(config_file, "--config.eval_only=False"), 1,
                          8)


def test_pretraining_runs_knn_only_when_asked():
  assert _load("mae_vit_base_pretrain.py").knn_every_epochs == 0
  assert _load("mae_vit_base_pretrain.py").knn_every_steps == 0
  assert _load("demo.py").knn_every_steps == 100


@pytest.mark.parametrize("config_file,epochs,base_lr,layer_decay,drop_path", [
    ("mae_vit_base_finetune.py", 100, 5e-4, 0.65, 0.1),
    ("mae_vit_large_finetune.py", 50, 1e-3, 0.75, 0.2),
    ("mae_vit_huge_finetune.py", 50, 1e-3, 0.75, 0.3),
])
def test_finetune_configs_hold_the_paper_recipe(config_file, epochs, base_lr,
                                                layer_decay, drop_path):
  config = _load(config_file)
  model, opt, augment = config.model, config.optimizer, config.augment
  assert (model.pooling, model.head_batch_norm) == ("gap", False)
  assert model.head_init_std == 2e-5 and model.drop_path_rate == drop_path
  assert model.learned_pos_embed is True
  assert config.trainable_blocks == -1
  assert config.batch_size == 1024
  assert (opt.name, opt.base_lr, opt.b1, opt.b2, opt.weight_decay,
          opt.layer_decay, opt.min_lr) == ("adamw", base_lr, 0.9, 0.999, 0.05,
                                           layer_decay, 1e-6)
  assert (config.total_epochs, config.warmup_epochs) == (epochs, 5)
  assert (config.total_steps, config.warmup_steps) == (0, 0)
  assert (config.eval_every_epochs, config.eval_every_steps) == (1, 0)
  assert (augment.mixup_alpha, augment.cutmix_alpha, augment.switch_prob,
          augment.label_smoothing, augment.random_erasing,
          augment.mix_group_size) == (0.8, 1.0, 0.5, 0.1, 0.25, 32)
  assert (config.data.rand_augment_num_ops,
          config.data.rand_augment_magnitude) == (2, 9.0)


@pytest.mark.parametrize("config_file", CLASSIFICATION_CONFIGS)
def test_classifier_configs_build_their_model(config_file):
  config = _load(config_file, "--config.init_from=/some/workdir")
  assert config.init_from == "/some/workdir"
  model = models.build_classifier(config.model)
  assert model.num_classes == (10 if "demo" in config_file else 1000)


def test_demo_classifiers_use_the_demo_encoder():
  pretrain = _load("demo.py").model
  for config_file in ("demo_linear_probe.py", "demo_attentive_probe.py",
                      "demo_finetune.py", "demo_knn.py", "demo_cae.py"):
    model = _load(config_file).model
    for field in ("image_size", "patch_size", "width", "depth", "num_heads",
                  "mlp_dim", "layer_norm_eps"):
      assert model[field] == pretrain[field], (config_file, field)
  # The MAE demo's fine-tuning keeps its own drop path.
  assert _load("demo_finetune.py").model.drop_path_rate == 0.1


def test_encoder_size_rejects_unknown_model_listing_known_sizes():
  with pytest.raises(ValueError) as info:
    models.encoder_size("gigantic/16")
  message = str(info.value)
  assert "gigantic/16" in message
  for size in ("tiny", "small", "base", "large", "huge"):
    assert size in message


def test_encoder_size_needs_a_numeric_patch():
  with pytest.raises(ValueError, match="base/16"):
    models.encoder_size("base")


def _config(**overrides):
  config = common.pretrain_config("base/16")
  config.batch_size = 64
  common.in_steps(config, total=100, warmup=10)
  config.update(overrides)
  return config


def test_validate_config_accepts_a_consistent_config():
  train.validate_config(_config(grad_accum_steps=4), 1, 8)
  train.validate_config(_config(), 2, 4)


def test_validate_config_rejects_batch_not_divisible_by_devices():
  with pytest.raises(ValueError) as info:
    train.validate_config(_config(batch_size=100), 1, 8)
  message = str(info.value)
  assert "batch_size=100" in message
  assert "8 devices" in message
  assert "multiple of 8" in message


def test_validate_config_counts_devices_of_all_processes():
  # 20 is divisible by the 4 local devices, not by the 2 x 4 global ones.
  with pytest.raises(ValueError, match="8 devices"):
    train.validate_config(_config(batch_size=20), 2, 4)


def test_validate_config_rejects_per_device_batch_not_divisible_by_accum():
  with pytest.raises(ValueError) as info:
    train.validate_config(_config(batch_size=64, grad_accum_steps=3), 1, 8)
  message = str(info.value)
  assert "per-device batch (8)" in message
  assert "grad_accum_steps=3" in message


def test_validate_config_rejects_warmup_longer_than_training():
  with pytest.raises(ValueError) as info:
    train.validate_config(_config(total_steps=100, warmup_steps=101), 1, 8)
  message = str(info.value)
  assert "warmup_steps (101)" in message
  assert "total_steps (100)" in message


def test_validate_config_rejects_a_duration_given_twice():
  with pytest.raises(ValueError, match="total_epochs=800.0 and total_steps=100"
                     ".*both set"):
    train.validate_config(_config(total_epochs=800.0), 1, 8)


def test_validate_config_rejects_unknown_mode():
  with pytest.raises(ValueError) as info:
    train.validate_config(_config(mode="fine_tune"), 1, 8)
  message = str(info.value)
  assert "'fine_tune'" in message
  assert "pretrain" in message and "linear_probe" in message


def _finetune(**overrides):
  config = common.finetune_config("base/16", epochs=1, base_lr=1e-3,
                                  layer_decay=0.75, drop_path_rate=0.1)
  config.batch_size = 64
  common.in_steps(config, total=100, warmup=10)
  config.augment.mix_group_size = 8
  config.update(overrides)
  return config


def test_validate_config_rejects_odd_micro_batches_with_mixup():
  config = _finetune(batch_size=24)  # 3 per device
  with pytest.raises(ValueError, match="divide the per-device micro-batch \\(3\\)"):
    train.validate_config(config, 1, 8)
  config.augment.update(mixup_alpha=0.0, cutmix_alpha=0.0)
  train.validate_config(config, 1, 8)


def test_validate_config_rejects_trainable_blocks_out_of_range():
  config = _finetune(trainable_blocks=13)
  with pytest.raises(ValueError, match="0..12"):
    train.validate_config(config, 1, 8)


def test_validate_config_rejects_knn_without_an_eval_split():
  config = _config(knn_every_steps=10)
  config.data.eval_split = ""
  with pytest.raises(ValueError, match="data.eval_split is empty"):
    train.validate_config(config, 1, 8)
  config.knn_every_steps = 0  # off: no evaluation split needed
  train.validate_config(config, 1, 8)


def test_validate_config_rejects_a_mask_ratio_that_leaves_nothing_visible():
  config = _config()
  config.model.update(image_size=32, patch_size=16)  # 4 patches
  config.model.mask_ratio = 0.8
  with pytest.raises(ValueError, match="leaves no visible patch of 4"):
    train.validate_config(config, 1, 8)
