"""Recipes defined once; experiment configs override a few fields.

Every field here is read by the code: ml_collections rejects overrides of keys
that do not exist, so a typo on the command line fails before anything runs.
"""

import ml_collections

from mae_jax import models

IMAGENET_TRAIN_IMAGES = 1_281_167


def mae_model(name: str, **overrides) -> ml_collections.ConfigDict:
  """The MAE model config for 'base/16' etc. (SPEC §1)."""
  model = dict(
      image_size=224,
      **models.encoder_size(name),
      decoder_width=512,
      decoder_depth=8,
      decoder_num_heads=16,
      decoder_mlp_dim=2048,
      mask_ratio=0.75,
      norm_pix_loss=True,
      loss_on_all_patches=False,
      layer_norm_eps=1e-6,
      # 'auto': float32 on CPU, bfloat16 on TPU/GPU; params stay float32.
      dtype="auto",
      # Recompute block activations in the backward pass: ~1/3 more compute,
      # for per-device batches whose activations do not fit in memory.
      remat=False,
  )
  model.update(overrides)
  return ml_collections.ConfigDict(model)


def steps_for_epochs(epochs: float, batch_size: int,
                     num_examples: int = IMAGENET_TRAIN_IMAGES) -> int:
  return int(epochs * num_examples / batch_size)


def pretrain_config(model_name: str) -> ml_collections.ConfigDict:
  """The official ImageNet-1k MAE pretraining recipe (SPEC §2, 800 epochs)."""
  config = ml_collections.ConfigDict()
  config.mode = "pretrain"
  config.seed = 0
  config.model = mae_model(model_name)

  config.data = ml_collections.ConfigDict(dict(
      # 'tfds' (any tfds image data set by name), 'folder' (class
      # sub-folders of images), 'digits' (bundled with scikit-learn) or
      # 'synthetic' (random pixels, for benchmarks).
      source="tfds",
      name="imagenet2012",
      data_dir="",  # tfds data_dir, or the folder root; may be gs://...
      split="train",
      crop_scale=(0.2, 1.0),
      crop_ratio=(3 / 4, 4 / 3),
      horizontal_flip=True,
      # 'fail' stops with the file's path; 'skip' replaces the image with the
      # next readable one in the source's order and counts it.
      corrupt_images="fail",
      num_workers=0,  # threads decoding images; 0 = one per CPU core
      prefetch_batches=2,
  ))

  config.batch_size = 4096  # global, per optimizer step
  config.grad_accum_steps = 1  # split each device's batch into micro-batches
  config.total_steps = steps_for_epochs(800, config.batch_size)
  config.warmup_steps = steps_for_epochs(40, config.batch_size)

  config.optimizer = ml_collections.ConfigDict(dict(
      base_lr=1.5e-4,  # lr = base_lr * batch_size / 256
      min_lr=0.0,
      b1=0.9,
      b2=0.95,
      weight_decay=0.05,
      grad_clip_norm=0.0,  # 0 = no clipping (the reference does not clip)
  ))

  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.figure_every_steps = 5000
  config.figure_images = 8
  return config
