"""What differs between the modes: the model, its loss, what it trains, how
it is evaluated. The train loop (train.py) is the same for all and never
asks which mode it runs; `make_task` is the one place that does.

- 'pretrain': the MAE and its masked reconstruction loss (MAE paper §3), or
  with `model.name='cae'` the context autoencoder and its reconstruction and
  alignment losses (CAE paper §3); either with an optional periodic k-NN of
  its encoder;
- 'linear_probe', 'attentive_probe' and 'finetune': a ViT classifier (MAE
  paper §4, A.1-A.2; CAE paper §4.1) whose encoder comes from
  `config.init_from`;
- 'knn': the weighted k-NN accuracy of the frozen encoder in
  `config.init_from` (DINO's protocol); it trains nothing.

Every task has the interface of `Task`, and those that train that of
`TrainingTask`. Randomness enters `loss` as the step's key; per-example
randomness (masking, drop path, random erasing) is keyed by each example's
global index and batch-level randomness (mixup/cutmix) by the step alone, so
a run is the same on any number of devices.
"""

from typing import Any, Protocol, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from mae_jax import augment
from mae_jax import evaluators
from mae_jax import initialization
from mae_jax import knn
from mae_jax import masking
from mae_jax import models
from mae_jax import patches
from mae_jax.data import sources
from mae_jax.data import transforms
from mae_jax.models import cae
from mae_jax.models import dalle

MODES = ("pretrain", "linear_probe", "attentive_probe", "finetune", "knn")
CLASSIFICATION_MODES = ("linear_probe", "attentive_probe", "finetune")
# Folded into an example's key for its drop-path keys; the key itself draws
# the masking.
_DROP_PATH_STREAM = 1

Batch = dict[str, jnp.ndarray]
# What `loss` returns besides the loss: the new model state (BatchNorm
# statistics; {} for most tasks) and extra scalars to log as train/<name>,
# averaged like the loss (e.g. the terms of a composite loss).
LossAux = tuple[dict, dict[str, jnp.ndarray]]


class Task(Protocol):
  config: ml_collections.ConfigDict
  model: Any  # the flax module whose `apply` the train state holds

  def validate(self, micro_batch: int | None):
    """Raises ValueError, with the fix, for a config this task cannot run
    with `micro_batch` examples per device and micro-step (None: the run
    only evaluates)."""

  def init_variables(self, rng: jax.Array, load_pretrained: bool
                     ) -> tuple[Any, dict]:
    """(params, model_state) to start from; with `load_pretrained`, what
    `config.init_from` names is loaded into them (a resumed run restores
    what it trained from its own checkpoint instead)."""

  def evaluators(self, devices: Sequence[Any],
                 train_source: sources.Source | None
                 ) -> list[evaluators.Evaluator]:
    """What the loop runs every so often (evaluations, figures);
    `train_source` is the open training split, None when the run only
    evaluates."""


class TrainingTask(Task, Protocol):

  def loss(self, params, model_state: dict, batch: Batch, rng: jax.Array,
           step: jnp.ndarray) -> tuple[jnp.ndarray, LossAux]:
    """The mean loss over this device's (micro-)batch; pure, traced once."""


def _validate_knn(config: ml_collections.ConfigDict):
  """The k-NN settings (`config.knn`) and the split it queries."""
  settings = config.knn
  if not config.data.get("eval_split"):
    raise ValueError(
        "k-NN classifies the evaluation split, and data.eval_split is empty;"
        " set --config.data.eval_split (e.g. 'validation'; 'test' for the "
        "digits)")
  if settings.pooling not in knn.POOLINGS:
    raise ValueError(f"knn.pooling={settings.pooling!r}; use one of "
                     f"{knn.POOLINGS}")
  if settings.k < 1 or settings.temperature <= 0:
    raise ValueError(f"knn.k={settings.k} and knn.temperature="
                     f"{settings.temperature} must be positive")


def _load_encoder(config: ml_collections.ConfigDict, params):
  """`params` with the encoder of `config.init_from`, if one is named."""
  if config.init_from:
    return initialization.load_pretrained_encoder(
        config.init_from, params, config.model, config.pos_embed_resize)
  logging.warning("config.init_from is empty: the encoder starts from a "
                  "random initialisation (the from-scratch baseline).")
  return params


def _pretraining_keys(config: ml_collections.ConfigDict, model, rng: jax.Array,
                      step: jnp.ndarray, batch: Batch):
  """(masking noise (B, L), drop-path keys (B,) or None) of a pretraining
  batch, keyed by each example's global index."""
  keys = masking.example_keys(rng, step, batch["example_id"])
  grid = patches.grid_size(model.image_size, model.patch_size)
  noise = masking.make_noise(
      config.model.masking, keys, (grid, grid),
      masking.num_kept(grid * grid, config.model.mask_ratio))
  drop_keys = None
  if config.model.drop_path_rate > 0:
    drop_keys = jax.vmap(lambda k: jax.random.fold_in(k, _DROP_PATH_STREAM))(
        keys)
  return noise, drop_keys


def _check_masking(config: ml_collections.ConfigDict, model):
  grid = patches.grid_size(model.image_size, model.patch_size)
  masking.check(config.model.masking, (grid, grid), config.model.mask_ratio)


class PretrainTask:
  """MAE pretraining: all parameters trained, no model state; k-NN of the
  encoder every `knn_every_steps` when that is positive."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = models.build(config.model)

  def validate(self, micro_batch: int | None):
    del micro_batch
    _check_masking(self.config, self.model)
    if self.config.knn_every_steps or self.config.knn_every_epochs:
      _validate_knn(self.config)

  def init_variables(self, rng: jax.Array, load_pretrained: bool
                     ) -> tuple[Any, dict]:
    del load_pretrained  # pretraining starts from scratch
    images = jnp.zeros((1, self.model.image_size, self.model.image_size, 3))
    noise = jnp.zeros((1, self.model.num_patches))
    return jax.jit(self.model.init)(rng, images, noise)["params"], {}

  def loss(self, params, model_state: dict, batch: Batch, rng: jax.Array,
           step: jnp.ndarray) -> tuple[jnp.ndarray, LossAux]:
    images = transforms.normalize(batch["image"], xp=jnp)
    noise, drop_keys = _pretraining_keys(self.config, self.model, rng, step,
                                         batch)
    loss = self.model.apply({"params": params}, images, noise,
                            drop_keys).loss
    return loss, (model_state, {})

  def encode(self, params, images: jnp.ndarray) -> jnp.ndarray:
    return _encode_all_patches(self.model, params, images)

  def evaluators(self, devices: Sequence[Any],
                 train_source: sources.Source | None
                 ) -> list[evaluators.Evaluator]:
    figures = evaluators.ReconstructionFigures(
        self.model, self.config.model.masking, train_source,
        self.config.figure_images, self.config.seed,
        self.config.figure_every_steps, self.config.data.corrupt_images)
    return [figures] + _periodic_knn(self, devices, train_source)


def _encode_all_patches(model, params, images: jnp.ndarray) -> jnp.ndarray:
  """A pretraining model's encoder on every patch, nothing masked:
  (B, 1 + L, D) after the final norm."""
  return model.apply({"params": params}, images,
                     method=lambda module, x: module.encoder(x))


def _periodic_knn(task, devices: Sequence[Any],
                  train_source: sources.Source | None
                  ) -> list[evaluators.Evaluator]:
  """The k-NN of a pretraining task's encoder every `knn_every_steps`, if
  that is positive (durations.py resolves knn_every_epochs into it)."""
  if task.config.knn_every_steps <= 0:
    return []
  return [evaluators.KNNAccuracy(
      task.encode, task.config, devices, task.config.knn_every_steps,
      bank_source=train_source)]


class CAEPretrainTask:
  """CAE pretraining (CAE paper §3): the encoder, regressor and decoder all
  trained; the loss's two terms are logged as train/loss_recon and
  train/loss_align (the alignment MSE before its weight: train/loss =
  loss_recon + align_weight x loss_align).

  With target='dalle' the DALL-E tokenizer's parameters are the model state
  {'tokenizer': ...}: an argument of the compiled step, not a constant
  compiled into it (pmap embeds closed-over arrays in the program), never
  differentiated, and saved with each checkpoint, so that a run resumes
  with the tokenizer it started with.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = models.build(config.model)

  def validate(self, micro_batch: int | None):
    del micro_batch
    model_config = self.config.model
    _check_masking(self.config, self.model)
    if self.config.knn_every_steps or self.config.knn_every_epochs:
      _validate_knn(self.config)
    if model_config.target not in cae.TARGETS:
      raise ValueError(f"model.target={model_config.target!r}; use one of "
                       f"{cae.TARGETS}")
    if model_config.weight_init not in cae.WEIGHT_INITS:
      raise ValueError(f"model.weight_init={model_config.weight_init!r}; use "
                       f"one of {cae.WEIGHT_INITS}")
    if model_config.align_weight < 0:
      raise ValueError(f"model.align_weight={model_config.align_weight} must "
                       "not be negative (0 turns the alignment off)")
    second_view = self.config.data.second_view_size
    if model_config.target == "pixels":
      if second_view:
        raise ValueError(
            f"data.second_view_size={second_view} makes a second view that "
            "target='pixels' does not use; set --config.data."
            "second_view_size=0")
      return
    if not model_config.tokenizer_path:
      raise ValueError(
          "target='dalle' needs the DALL-E tokenizer: "
          f"{dalle.CONVERT_HINT} (--config.model.tokenizer_path=DIR); or "
          "predict pixels: --config.model.target=pixels "
          "--config.data.second_view_size=0")
    wanted = self.model.grid * dalle.DOWNSAMPLING
    if second_view != wanted:
      raise ValueError(
          f"data.second_view_size={second_view}: the DALL-E tokenizer gives "
          f"one code per {dalle.DOWNSAMPLING}x{dalle.DOWNSAMPLING} pixels of "
          f"the second view, and the {self.model.grid}x{self.model.grid} "
          f"patches need one code each; set --config.data.second_view_size="
          f"{wanted}")

  def init_variables(self, rng: jax.Array, load_pretrained: bool
                     ) -> tuple[Any, dict]:
    """With target='dalle' and `load_pretrained`, the model state holds the
    tokenizer of `model.tokenizer_path`; without (a resumed run, which
    restores its own, or a benchmark) a randomly initialised one of the
    released encoder's sizes."""
    size = self.model.image_size
    init_rng, official_rng, tokenizer_rng = jax.random.split(rng, 3)
    images = jnp.zeros((1, size, size, 3))
    noise = jnp.zeros((1, self.model.num_patches))
    codes = jnp.zeros((1, self.model.num_patches), jnp.int32)
    params = jax.jit(self.model.init)(init_rng, images, noise,
                                      token_targets=codes)["params"]
    params = cae.official_init(params, official_rng,
                               self.config.model.weight_init)
    if self.config.model.target != "dalle":
      return params, {}
    if load_pretrained:
      tokenizer = dalle.load_tokenizer(self.config.model.tokenizer_path)
    else:
      tokenizer = jax.jit(dalle.DalleEncoder().init)(
          tokenizer_rng, jnp.zeros((1, dalle.DOWNSAMPLING,
                                    dalle.DOWNSAMPLING, 3)))["params"]
    vocab = tokenizer["output"]["kernel"].shape[-1]
    if vocab != cae.DALLE_VOCAB_SIZE:
      raise ValueError(
          f"the tokenizer at {self.config.model.tokenizer_path} has {vocab} "
          f"codes; CAE's decoder predicts {cae.DALLE_VOCAB_SIZE} (the "
          "released DALL-E encoder's)")
    return params, {"tokenizer": tokenizer}

  def loss(self, params, model_state: dict, batch: Batch, rng: jax.Array,
           step: jnp.ndarray) -> tuple[jnp.ndarray, LossAux]:
    images = transforms.normalize(batch["image"], xp=jnp)
    noise, drop_keys = _pretraining_keys(self.config, self.model, rng, step,
                                         batch)
    codes = None
    if self.config.model.target == "dalle":
      codes = dalle.dalle_codes(model_state["tokenizer"], batch["second_view"])
    out = self.model.apply({"params": params}, images, noise, drop_keys,
                           token_targets=codes)
    return out.loss, (model_state, {"loss_recon": out.loss_recon,
                                    "loss_align": out.loss_align})

  def encode(self, params, images: jnp.ndarray) -> jnp.ndarray:
    return _encode_all_patches(self.model, params, images)

  def evaluators(self, devices: Sequence[Any],
                 train_source: sources.Source | None
                 ) -> list[evaluators.Evaluator]:
    """Figures of pixel predictions (none for DALL-E tokens) and the
    periodic k-NN."""
    figures = []
    if self.config.model.target == "pixels":
      figures = [evaluators.CAEReconstructionFigures(
          self.model, self.config.model.masking, train_source,
          self.config.figure_images, self.config.seed,
          self.config.figure_every_steps, self.config.data.corrupt_images)]
    return figures + _periodic_knn(self, devices, train_source)


class ClassificationTask:
  """Linear or attentive probe, or (partial) fine-tuning of a ViT
  classifier."""

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str):
    self.config = config
    self.model = models.build_classifier(config.model, axis_name)
    self.num_classes = config.model.num_classes

  def validate(self, micro_batch: int | None):
    config = self.config
    group = config.augment.mix_group_size
    if (config.augment.mixup_alpha > 0 or config.augment.cutmix_alpha > 0) and (
        micro_batch is not None and (micro_batch % group or group % 2)):
      raise ValueError(
          f"mixup/cutmix draws once per group of augment.mix_group_size={group}"
          " examples and pairs neighbours inside it, so it must be even and "
          f"divide the per-device micro-batch ({micro_batch}); set "
          "--config.augment.mix_group_size to an even divisor of it, or "
          "change batch_size or grad_accum_steps")
    depth = config.model.depth
    if config.mode == "finetune" and not -1 <= config.trainable_blocks <= depth:
      raise ValueError(f"trainable_blocks={config.trainable_blocks}: use -1 "
                       f"(fine-tune everything) or 0..{depth} (the last k "
                       "blocks, the final norm and the head)")

  def init_variables(self, rng: jax.Array, load_pretrained: bool
                     ) -> tuple[Any, dict]:
    size = self.config.model.image_size
    variables = jax.jit(self.model.init)(rng, jnp.zeros((1, size, size, 3)))
    params = jax.device_get(variables["params"])
    model_state = {k: v for k, v in variables.items() if k != "params"}
    if load_pretrained:
      params = _load_encoder(self.config, params)
    return params, model_state

  def _variables(self, params, model_state: dict) -> dict:
    return {"params": params, **model_state}

  def evaluators(self, devices: Sequence[Any],
                 train_source: sources.Source | None
                 ) -> list[evaluators.Evaluator]:
    del train_source
    return [evaluators.TopKAccuracy(self, self.config, devices)]

  def loss(self, params, model_state: dict, batch: Batch, rng: jax.Array,
           step: jnp.ndarray) -> tuple[jnp.ndarray, LossAux]:
    """Soft-target cross-entropy after random erasing and mixup/cutmix."""
    aug = self.config.augment
    example_rng, batch_rng = jax.random.split(rng)
    keys = masking.example_keys(example_rng, step, batch["example_id"])
    erase_keys, drop_keys = jax.vmap(jax.random.split)(keys).swapaxes(0, 1)
    images = transforms.normalize(batch["image"], xp=jnp)
    # The reference erases per image (in its transform), then mixes batches.
    if aug.random_erasing > 0:
      images = augment.random_erasing(erase_keys, images, aug.random_erasing)
    if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
      images, targets = augment.mixup_or_cutmix_in_groups(
          jax.random.fold_in(batch_rng, step), images, batch["label"],
          batch["example_id"], self.num_classes,
          group_size=aug.mix_group_size, mixup_alpha=aug.mixup_alpha,
          cutmix_alpha=aug.cutmix_alpha, switch_prob=aug.switch_prob,
          label_smoothing=aug.label_smoothing)
    else:  # no mix groups: any per-device batch size works
      targets = augment.smooth_labels(batch["label"], self.num_classes,
                                      aug.label_smoothing)
    logits, updates = self.model.apply(
        self._variables(params, model_state), images, train=True,
        drop_keys=drop_keys if self.config.model.drop_path_rate > 0 else None,
        mutable=list(model_state))
    log_probs = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.sum(targets * log_probs, axis=-1))
    return loss, ({**model_state, **updates}, {})

  def eval_counts(self, params, model_state: dict,
                  batch: Batch) -> dict[str, jnp.ndarray]:
    """Correct top-1/top-5 predictions and examples, padding excluded."""
    images = transforms.normalize(batch["image"], xp=jnp)
    logits = self.model.apply(self._variables(params, model_state), images)
    valid = batch["mask"]
    in_top_k = evaluators.in_top_k
    return {"top1": jnp.sum(in_top_k(logits, batch["label"], 1) * valid),
            "top5": jnp.sum(in_top_k(logits, batch["label"], 5) * valid),
            "count": jnp.sum(valid)}


class KNNTask:
  """Weighted k-NN accuracy of the frozen encoder in `config.init_from`.

  Nothing is trained, so there is no loss and no checkpoint: the run
  evaluates once (`config.eval_only`) and stops. The parameters are the
  encoder's, under 'encoder' as in a classifier, so the `init_from`s of
  the probes fit (pretraining runs, converted weights); the features are
  the tokens after the final norm.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    if not config.eval_only:
      raise ValueError("mode=knn trains nothing: it evaluates the encoder of "
                       "config.init_from once; keep --config.eval_only=True")
    self.config = config
    self.model = models.build_encoder(config.model)

  def validate(self, micro_batch: int | None):
    del micro_batch
    _validate_knn(self.config)

  def init_variables(self, rng: jax.Array, load_pretrained: bool
                     ) -> tuple[Any, dict]:
    size = self.config.model.image_size
    params = {"encoder": jax.device_get(jax.jit(self.model.init)(
        rng, jnp.zeros((1, size, size, 3)))["params"])}
    if load_pretrained:
      params = _load_encoder(self.config, params)
    return params, {}

  def encode(self, params, images: jnp.ndarray) -> jnp.ndarray:
    """(B, 1 + L, D) tokens after the final norm."""
    return self.model.apply({"params": params["encoder"]}, images)

  def evaluators(self, devices: Sequence[Any],
                 train_source: sources.Source | None
                 ) -> list[evaluators.Evaluator]:
    return [evaluators.KNNAccuracy(self.encode, self.config, devices,
                                   every_steps=0, bank_source=train_source)]


def make_task(config: ml_collections.ConfigDict, axis_name: str) -> Task:
  if config.mode == "pretrain" and models.method_of(config.model) == "cae":
    return CAEPretrainTask(config)
  if config.mode == "pretrain":
    return PretrainTask(config)
  if config.mode in CLASSIFICATION_MODES:
    return ClassificationTask(config, axis_name)
  if config.mode == "knn":
    return KNNTask(config)
  raise ValueError(f"mode={config.mode!r} is not known; use one of {MODES}")
