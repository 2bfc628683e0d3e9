"""Recipes defined once; experiment configs override a few fields.

Every field here is read by the code: ml_collections rejects overrides of keys
that do not exist, so a typo on the command line fails before anything runs.
"""

import ml_collections

from mae_jax import models


def encoder_options(**overrides) -> dict:
  """The CAE/BEiT options of the ViT encoder (models/vit.py), off: MAE's."""
  options = dict(
      layer_scale_init=0.0,  # 0 = no layer scale
      key_bias=True,  # False: q and v biases only
      sincos_order="w_first",  # 'h_first': CAE's sin-cos table
  )
  options.update(overrides)
  return options


def mae_model(name: str, **overrides) -> ml_collections.ConfigDict:
  """The MAE model config for 'base/16' etc. (MAE §3)."""
  model = dict(
      name="mae",
      image_size=224,
      **models.encoder_size(name),
      **encoder_options(),
      drop_path_rate=0.0,
      # 'random' (MAE's), 'block' (BEiT's) or 'grid' (MAE Table 1f; only
      # with mask_ratio=0.75): mae_jax/masking.py.
      masking="random",
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


def encoder_model(name: str, **overrides) -> ml_collections.ConfigDict:
  """The ViT encoder config for 'base/16' etc., the fields that must fit an
  `init_from` checkpoint: what k-NN evaluates and classifiers extend."""
  model = dict(
      image_size=224,
      **models.encoder_size(name),
      # Taken from the checkpoint of --config.init_from when it has them
      # (mae_jax/initialization.py).
      **encoder_options(),
      # A learned position embedding, initialised to the sin-cos table:
      # fine-tuning learns it, as the reference does, and a fine-tuned
      # init_from has one. False keeps the fixed table.
      learned_pos_embed=False,
      layer_norm_eps=1e-6,
      dtype="auto",
      remat=False,
  )
  model.update(overrides)
  return ml_collections.ConfigDict(model)


def classifier_model(name: str, **overrides) -> ml_collections.ConfigDict:
  """The ViT classifier config for 'base/16' etc. (MAE paper A.1-A.2): the
  encoder's fields (`encoder_model`) plus the head's."""
  model = encoder_model(name)
  model.update(dict(
      num_classes=1000,
      # 'gap': mean of the patch tokens + LayerNorm (fine-tuning);
      # 'cls': the cls token after the final norm (linear probe);
      # 'attentive': a learned query's cross-attention over the tokens after
      # the final norm (CAE's attentive probe).
      pooling="gap",
      head_batch_norm=False,  # BatchNorm without affine before the head
      head_init_std=2e-5,
      drop_path_rate=0.0,
  ))
  model.update(overrides)
  return model


def durations(config: ml_collections.ConfigDict, *, epochs: float,
              warmup_epochs: float):
  """The schedule's length in epochs of the training split, turned into
  steps when the run starts (mae_jax/durations.py), so that a batch-size
  override keeps the recipe. Set `*_steps` instead (and the `*_epochs` to 0)
  for runs counted in steps: the demo, the tests."""
  config.total_epochs = float(epochs)
  config.total_steps = 0
  config.warmup_epochs = float(warmup_epochs)
  config.warmup_steps = 0


def in_steps(config: ml_collections.ConfigDict, *, total: int, warmup: int):
  """The schedule in steps instead of epochs (the short demo runs)."""
  config.total_epochs, config.total_steps = 0.0, total
  config.warmup_epochs, config.warmup_steps = 0.0, warmup


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
      # How the crop box is drawn: 'torchvision' (ten tries, then the
      # centre) or 'clamped' (one draw clamped to the image: the official
      # linear probe's util/crop.py).
      crop_sampler="torchvision",
      horizontal_flip=True,
      # > 0: batches also hold 'second_view', the same crop (after the same
      # flip) resized to this size with LANCZOS, for CAE's DALL-E tokenizer
      # (112 in the paper); 0 = off.
      second_view_size=0,
      # RandAugment after the crop and flip: ops per image (0 = off) and
      # magnitude (0-10); timm's 'rand-m9-mstd0.5-inc1' is 2 ops at 9.
      rand_augment_num_ops=0,
      rand_augment_magnitude=9.0,
      # 'fail' stops with the file's path; 'skip' replaces the image with the
      # next readable one in the source's order (evaluation leaves it out)
      # and counts it. Read errors are retried, never skipped.
      corrupt_images="fail",
      # Worker processes decoding images; -1 = one per CPU core but one for
      # tfds and folder sources, none for in-memory ones; 0 = none.
      num_workers=-1,
      # Threads per process (each worker's, or this one's without workers);
      # 0 = two per worker, or one per CPU core without workers.
      num_threads=0,
      prefetch_batches=2,
  )
  data.update(overrides)
  return ml_collections.ConfigDict(data)


def knn_settings(**overrides) -> ml_collections.ConfigDict:
  """The weighted k-NN of frozen features (DINO's eval_knn.py defaults)."""
  settings = dict(
      k=20,
      temperature=0.07,  # votes weighted by exp(similarity / temperature)
      pooling="cls",  # 'cls' token, or 'mean' of the patch tokens
      # Global batch of the feature extraction (bank and queries); the
      # similarities held at once are (batch / devices) x (bank / devices).
      batch_size=1024,
  )
  settings.update(overrides)
  return ml_collections.ConfigDict(settings)


def _logging(config: ml_collections.ConfigDict):
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  # 0: resume from the newest checkpoint in the workdir. N: from kept step N
  # instead (after a divergence); the later steps are moved aside as
  # checkpoints/<step>.abandoned.<time>, once.
  config.resume_step = 0


def cae_model(name: str, **overrides) -> ml_collections.ConfigDict:
  """The CAE model config for 'base/16' etc. (CAE §3 and Atten4Vis/CAE's
  scripts/cae_*.sh): the BEiT-style encoder with layer scale 0.1 (1e-5 for
  ViT-L), a 4-block regressor and a 4-block decoder of the encoder's width
  and heads, 98 of 196 patches masked in blocks, alignment weight 2."""
  sizes = models.encoder_size(name)
  layer_scale = 1e-5 if name.startswith("large/") else 0.1
  model = dict(
      name="cae",
      image_size=224,
      **sizes,
      **encoder_options(layer_scale_init=layer_scale, key_bias=False,
                        sincos_order="h_first"),
      drop_path_rate=0.1,
      masking="block",
      mask_ratio=0.5,
      regressor_depth=4,
      decoder_depth=4,
      decoder_num_heads=sizes["num_heads"],
      decoder_layer_scale_init=layer_scale,
      # 'dalle': the paper's DALL-E tokens of the second view (needs
      # tokenizer_path and data.second_view_size); 'pixels': the masked
      # patches' pixels, MSE (normalised per patch with norm_pix_loss).
      target="dalle",
      tokenizer_path="",  # `python -m mae_jax.convert --src=encoder.pkl`
      norm_pix_loss=True,
      align_weight=2.0,
      # 'xavier' (the official default) or 'beit' (--fix_init_weight).
      weight_init="xavier",
      layer_norm_eps=1e-6,
      dtype="auto",
      remat=False,
  )
  model.update(overrides)
  return ml_collections.ConfigDict(model)


def pretrain_config(model_name: str) -> ml_collections.ConfigDict:
  """The official ImageNet-1k MAE pretraining recipe (MAE §4, A.1;
  800 epochs)."""
  config = ml_collections.ConfigDict()
  config.mode = "pretrain"
  config.seed = 0
  config.model = mae_model(model_name)
  # The evaluation split is what the k-NN below classifies.
  config.data = data_config(eval_split="validation")

  config.batch_size = 4096  # global, per optimizer step
  config.grad_accum_steps = 1  # split each device's batch into micro-batches
  durations(config, epochs=800, warmup_epochs=40)

  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",
      base_lr=1.5e-4,  # lr = base_lr * batch_size / 256
      lr_scaling="linear",
      min_lr=0.0,
      b1=0.9,
      b2=0.95,
      weight_decay=0.05,
      grad_clip_norm=0.0,  # 0 = no clipping (the reference does not clip)
  ))

  _logging(config)
  config.figure_every_steps = 5000
  config.figure_images = 8
  # k-NN accuracy of the encoder's features every so often (0 and 0: off):
  # the training split is the bank, data.eval_split the queries.
  config.knn_every_epochs = 0.0
  config.knn_every_steps = 0
  config.knn = knn_settings()
  return config


# CAE's warm-up for each pretraining length (Atten4Vis/CAE README).
CAE_WARMUP_EPOCHS = {300: 10, 800: 20, 1600: 40}


def cae_pretrain_config(model_name: str, epochs: int | str
                        ) -> ml_collections.ConfigDict:
  """The official CAE pretraining recipe (CAE §5.2, Atten4Vis/CAE
  scripts/cae_base_800e.sh): AdamW (0.9, 0.999), lr 1.5e-3 at batch 2048
  (not rescaled by batch), 10/20/40 warm-up epochs for 300/800/1600
  `epochs`, cosine to 1e-5, clipping at 3.0, RandomResizedCrop (0.08, 1) +
  flip, DALL-E targets of a 112x112 second view."""
  if str(epochs) not in {str(e) for e in CAE_WARMUP_EPOCHS}:
    raise ValueError(f"CAE's recipe is for {sorted(CAE_WARMUP_EPOCHS)} "
                     f"epochs, not {epochs!r}: use e.g. "
                     "--config=configs/cae_vit_base_pretrain.py:1600")
  epochs = int(epochs)
  config = pretrain_config(model_name)
  config.model = cae_model(model_name)
  # The DALL-E tokenizer's view: the same crop and flip, 8 pixels per code.
  config.data.update(crop_scale=(0.08, 1.0), second_view_size=112)
  config.batch_size = 2048
  durations(config, epochs=epochs, warmup_epochs=CAE_WARMUP_EPOCHS[epochs])
  config.optimizer.update(base_lr=1.5e-3, lr_scaling="none", min_lr=1e-5,
                          b2=0.999, grad_clip_norm=3.0)
  return config


def _classification_config(mode: str, model: ml_collections.ConfigDict,
                           batch_size: int, epochs: int, warmup_epochs: int
                           ) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = mode
  config.seed = 0
  # A pretraining workdir (or checkpoint) of ours; '' = random init.
  config.init_from = ""
  # At another resolution than init_from's: 'bicubic' resizes its position
  # table (the reference's interpolate_pos_embed); 'sincos' starts from the
  # sin-cos table of the new grid.
  config.pos_embed_resize = "bicubic"
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
  durations(config, epochs=epochs, warmup_epochs=warmup_epochs)
  _logging(config)
  # Evaluate once per epoch; or every N steps with eval_every_steps=N and
  # eval_every_epochs=0.
  config.eval_every_epochs = 1.0
  config.eval_every_steps = 0
  return config


def linear_probe_config(model_name: str) -> ml_collections.ConfigDict:
  """The official linear-probe recipe (MAE A.1): frozen encoder, cls token,
  BatchNorm + Linear head, LARS, batch 16384, 90 epochs."""
  model = classifier_model(model_name, pooling="cls", head_batch_norm=True,
                           head_init_std=0.01)
  config = _classification_config("linear_probe", model, batch_size=16384,
                                   epochs=90, warmup_epochs=10)
  config.data.crop_sampler = "clamped"  # the reference's util/crop.py
  config.optimizer = ml_collections.ConfigDict(dict(
      name="lars",
      base_lr=0.1,  # lr = base_lr * batch_size / 256
      lr_scaling="linear",
      min_lr=0.0,
      momentum=0.9,
      trust_coefficient=0.001,
      weight_decay=0.0,
      grad_clip_norm=0.0,
  ))
  return config


def attentive_probe_config(model_name: str) -> ml_collections.ConfigDict:
  """CAE's attentive probe (CAE paper §4.1; Atten4Vis/CAE
  scripts/cae_base_800e.sh): frozen encoder, one cross-attention block with a
  learned query, BatchNorm + Linear head; SGD (Nesterov momentum 0.9, as the
  official script's timm 'sgd'), lr 0.4 not rescaled, batch 8192, 90 epochs,
  10 of warm-up, no weight decay; RandomResizedCrop + flip only."""
  model = classifier_model(model_name, pooling="attentive",
                           head_batch_norm=True, head_init_std=0.01)
  config = _classification_config("attentive_probe", model, batch_size=8192,
                                   epochs=90, warmup_epochs=10)
  config.optimizer = ml_collections.ConfigDict(dict(
      name="sgd",
      base_lr=0.4,
      lr_scaling="none",  # lr = base_lr at any batch size
      min_lr=1e-6,  # the official script's default
      momentum=0.9,
      nesterov=True,
      weight_decay=0.0,
      grad_clip_norm=0.0,
  ))
  return config


def knn_config(model_name: str) -> ml_collections.ConfigDict:
  """Weighted k-NN accuracy of a frozen encoder (DINO's protocol): the
  training split is the bank, the evaluation split the queries. It trains
  nothing: the run evaluates `init_from`'s encoder once and stops."""
  config = ml_collections.ConfigDict()
  config.mode = "knn"
  config.seed = 0  # of the random encoder when init_from is empty
  # A workdir of ours or converted weights (as for the probes); '' = random.
  config.init_from = ""
  config.eval_only = True  # k-NN only evaluates
  # At another resolution than init_from's (as for the classifiers).
  config.pos_embed_resize = "bicubic"
  config.model = encoder_model(model_name)
  # What the k-NN reads of the data: no training augmentation.
  data = data_config(eval_split="validation")
  config.data = ml_collections.ConfigDict({
      k: data[k] for k in ("source", "name", "data_dir", "split",
                           "eval_split", "corrupt_images", "num_workers",
                           "num_threads", "prefetch_batches")})
  config.knn = knn_settings()
  return config


def finetune_config(model_name: str, *, epochs: int, base_lr: float,
                    layer_decay: float, drop_path_rate: float
                    ) -> ml_collections.ConfigDict:
  """The official end-to-end fine-tuning recipe (MAE A.2)."""
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
      lr_scaling="linear",
      min_lr=1e-6,
      b1=0.9,
      b2=0.999,
      weight_decay=0.05,
      layer_decay=layer_decay,
      grad_clip_norm=0.0,
  ))
  return config
