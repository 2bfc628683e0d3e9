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
      # The paper's ablation "w/ [M]" (Table 1c): the encoder sees all
      # patches, a learned mask token in the removed places.
      encoder_mask_tokens=False,
  )
  model.update(overrides)
  return ml_collections.ConfigDict(model)


def classifier_model(name: str, **overrides) -> ml_collections.ConfigDict:
  """The ViT classifier config for 'base/16' etc. (SPEC §2): the encoder
  fields of `mae_model` plus the head's."""
  model = dict(
      image_size=224,
      **models.encoder_size(name),
      num_classes=1000,
      # 'gap': mean of the patch tokens + LayerNorm (fine-tuning);
      # 'cls': the cls token after the final norm (linear probe).
      pooling="gap",
      head_batch_norm=False,  # BatchNorm without affine before the head
      head_init_std=2e-5,
      drop_path_rate=0.0,
      # Fine-tune the position embedding (initialised to the sin-cos table)
      # as the reference does; False keeps the fixed table.
      learned_pos_embed=False,
      layer_norm_eps=1e-6,
      dtype="auto",
      remat=False,
  )
  model.update(overrides)
  return ml_collections.ConfigDict(model)


def steps_for_epochs(epochs: float, batch_size: int,
                     num_examples: int = IMAGENET_TRAIN_IMAGES) -> int:
  return int(epochs * num_examples / batch_size)


def data_config(**overrides) -> ml_collections.ConfigDict:
  """Where images come from and how training batches are augmented."""
  data = dict(
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
      # RandAugment after the crop and flip: ops per image (0 = off) and
      # magnitude (0-10); timm's 'rand-m9-mstd0.5-inc1' is 2 ops at 9.
      rand_augment_num_ops=0,
      rand_augment_magnitude=9.0,
      # 'fail' stops with the file's path; 'skip' replaces the image with the
      # next readable one in the source's order and counts it.
      corrupt_images="fail",
      num_workers=0,  # threads decoding images; 0 = one per CPU core
      prefetch_batches=2,
  )
  data.update(overrides)
  return ml_collections.ConfigDict(data)


def _logging(config: ml_collections.ConfigDict):
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3


def pretrain_config(model_name: str) -> ml_collections.ConfigDict:
  """The official ImageNet-1k MAE pretraining recipe (SPEC §2, 800 epochs)."""
  config = ml_collections.ConfigDict()
  config.mode = "pretrain"
  config.seed = 0
  config.model = mae_model(model_name)
  config.data = data_config()

  config.batch_size = 4096  # global, per optimizer step
  config.grad_accum_steps = 1  # split each device's batch into micro-batches
  config.total_steps = steps_for_epochs(800, config.batch_size)
  config.warmup_steps = steps_for_epochs(40, config.batch_size)

  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",
      base_lr=1.5e-4,  # lr = base_lr * batch_size / 256
      min_lr=0.0,
      b1=0.9,
      b2=0.95,
      weight_decay=0.05,
      grad_clip_norm=0.0,  # 0 = no clipping (the reference does not clip)
  ))

  _logging(config)
  config.figure_every_steps = 5000
  config.figure_images = 8
  return config


def _classification_config(mode: str, model: ml_collections.ConfigDict,
                           batch_size: int, epochs: int, warmup_epochs: int
                           ) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = mode
  config.seed = 0
  # A pretraining workdir (or checkpoint) of ours; '' = random init.
  config.init_from = ""
  # Only evaluate the newest checkpoint in the workdir, then stop.
  config.eval_only = False
  config.model = model
  config.data = data_config(crop_scale=(0.08, 1.0), eval_split="validation")
  config.augment = ml_collections.ConfigDict(dict(
      mixup_alpha=0.0,
      cutmix_alpha=0.0,
      switch_prob=0.5,  # with both alphas > 0: cutmix with this probability
      # One mixup/cutmix draw per group of this many consecutive examples
      # (the reference: one per GPU batch of 32); must divide the per-device
      # micro-batch.
      mix_group_size=32,
      label_smoothing=0.0,
      random_erasing=0.0,  # per-image probability (timm 'pixel' mode)
  ))
  config.batch_size = batch_size
  config.grad_accum_steps = 1
  config.total_steps = steps_for_epochs(epochs, batch_size)
  config.warmup_steps = steps_for_epochs(warmup_epochs, batch_size)
  _logging(config)
  config.eval_every_steps = steps_for_epochs(1, batch_size)
  return config


def linear_probe_config(model_name: str) -> ml_collections.ConfigDict:
  """The official linear-probe recipe (SPEC §2): frozen encoder, cls token,
  BatchNorm + Linear head, LARS, batch 16384, 90 epochs."""
  model = classifier_model(model_name, pooling="cls", head_batch_norm=True,
                           head_init_std=0.01)
  config = _classification_config("linear_probe", model, batch_size=16384,
                                   epochs=90, warmup_epochs=10)
  config.optimizer = ml_collections.ConfigDict(dict(
      name="lars",
      base_lr=0.1,  # lr = base_lr * batch_size / 256
      min_lr=0.0,
      momentum=0.9,
      trust_coefficient=0.001,
      weight_decay=0.0,
      grad_clip_norm=0.0,
  ))
  return config


def finetune_config(model_name: str, *, epochs: int, base_lr: float,
                    layer_decay: float, drop_path_rate: float
                    ) -> ml_collections.ConfigDict:
  """The official end-to-end fine-tuning recipe (SPEC §2)."""
  model = classifier_model(model_name, drop_path_rate=drop_path_rate,
                           learned_pos_embed=True)
  config = _classification_config("finetune", model, batch_size=1024,
                                  epochs=epochs, warmup_epochs=5)
  # -1: fine-tune everything; k >= 0: only the last k blocks, the final
  # norm and the head (partial fine-tuning, paper Fig. 9).
  config.trainable_blocks = -1
  config.data.update(rand_augment_num_ops=2, rand_augment_magnitude=9.0)
  config.augment.update(mixup_alpha=0.8, cutmix_alpha=1.0,
                        label_smoothing=0.1, random_erasing=0.25)
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",
      base_lr=base_lr,  # lr = base_lr * batch_size / 256
      min_lr=1e-6,
      b1=0.9,
      b2=0.999,
      weight_decay=0.05,
      layer_decay=layer_decay,
      grad_clip_norm=0.0,
  ))
  return config
