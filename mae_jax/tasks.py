"""What differs between the modes: the model, its loss, what it trains.

`config.mode` picks a task; the train loop (train.py) is the same for all:
- 'pretrain': the MAE and its masked reconstruction loss (SPEC §1);
- 'linear_probe' and 'finetune': a ViT classifier (SPEC §2), whose encoder
  train.py loads from `config.init_from`.

Randomness enters `loss` as the step's key; per-example randomness (masking,
drop path, random erasing) is keyed by each example's global index and
batch-level randomness (mixup/cutmix) by the step alone, so a run is the
same on any number of devices.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mae_jax import augment
from mae_jax import masking
from mae_jax import models
from mae_jax.data import transforms

MODES = ("pretrain", "linear_probe", "finetune")

Batch = dict[str, jnp.ndarray]


class PretrainTask:
  """MAE pretraining: all parameters trained, no model state."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = models.build(config.model)

  def init_variables(self, rng: jax.Array) -> tuple[Any, dict]:
    """(params, model_state) of a fresh model."""
    images = jnp.zeros((1, self.model.image_size, self.model.image_size, 3))
    noise = jnp.zeros((1, self.model.num_patches))
    return jax.jit(self.model.init)(rng, images, noise)["params"], {}

  def loss(self, params, model_state: dict, batch: Batch, rng: jax.Array,
           step: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    images = transforms.normalize(batch["image"], xp=jnp)
    keys = masking.example_keys(rng, step, batch["example_id"])
    noise = masking.masking_noise(keys, self.model.num_patches)
    return self.model.apply({"params": params}, images, noise).loss, model_state


class ClassificationTask:
  """Linear probe or (partial) fine-tuning of a ViT classifier."""

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str):
    self.config = config
    self.model = models.build_classifier(config.model, axis_name)
    self.num_classes = config.model.num_classes

  def init_variables(self, rng: jax.Array) -> tuple[Any, dict]:
    """(params, model_state) of a fresh model."""
    size = self.config.model.image_size
    variables = jax.jit(self.model.init)(rng, jnp.zeros((1, size, size, 3)))
    params = jax.device_get(variables["params"])
    return params, {k: v for k, v in variables.items() if k != "params"}

  def _variables(self, params, model_state: dict) -> dict:
    return {"params": params, **model_state}

  def loss(self, params, model_state: dict, batch: Batch, rng: jax.Array,
           step: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """Soft-target cross-entropy after random erasing and mixup/cutmix."""
    aug = self.config.augment
    example_rng, batch_rng = jax.random.split(rng)
    keys = masking.example_keys(example_rng, step, batch["example_id"])
    erase_keys, drop_keys = jax.vmap(jax.random.split)(keys).swapaxes(0, 1)
    images = transforms.normalize(batch["image"], xp=jnp)
    # The reference erases per image (in its transform), then mixes batches.
    if aug.random_erasing > 0:
      images = augment.random_erasing(erase_keys, images, aug.random_erasing)
    images, targets = augment.mixup_or_cutmix_in_groups(
        jax.random.fold_in(batch_rng, step), images, batch["label"],
        batch["example_id"], self.num_classes,
        group_size=aug.mix_group_size, mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha, switch_prob=aug.switch_prob,
        label_smoothing=aug.label_smoothing)
    logits, updates = self.model.apply(
        self._variables(params, model_state), images, train=True,
        drop_keys=drop_keys if self.config.model.drop_path_rate > 0 else None,
        mutable=list(model_state))
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.sum(targets * log_probs, axis=-1)), {
        **model_state, **updates}

  def eval_counts(self, params, model_state: dict,
                  batch: Batch) -> dict[str, jnp.ndarray]:
    """Correct top-1/top-5 predictions and examples, padding excluded."""
    images = transforms.normalize(batch["image"], xp=jnp)
    logits = self.model.apply(self._variables(params, model_state), images)
    valid = batch["mask"]
    return {"top1": jnp.sum(in_top_k(logits, batch["label"], 1) * valid),
            "top5": jnp.sum(in_top_k(logits, batch["label"], 5) * valid),
            "count": jnp.sum(valid)}


def in_top_k(logits: jnp.ndarray, labels: jnp.ndarray, k: int) -> jnp.ndarray:
  """(B,) whether the true class is among the k highest logits.

  The true class's rank is how many other classes score at least as high:
  ties count against the model, and a NaN logit is never correct.
  """
  true_logit = jnp.take_along_axis(logits, labels[:, None], axis=1)
  rank = jnp.sum(~(logits < true_logit), axis=1) - 1
  return rank < k


def make_task(config: ml_collections.ConfigDict, axis_name: str):
  if config.mode == "pretrain":
    return PretrainTask(config)
  if config.mode in ("linear_probe", "finetune"):
    return ClassificationTask(config, axis_name)
  raise ValueError(f"mode={config.mode!r} is not known; use one of {MODES}")
