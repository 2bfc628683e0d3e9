"""The optimizers of the MAE and CAE recipes (MAE A.1-A.2, CAE §5.2), chosen
by config.

- pretraining: AdamW, weight decay on everything but 1-D parameters;
- fine-tuning: AdamW that also spares pos_embed and cls_token from decay,
  with layer-wise lr decay, optionally with all but the last k blocks frozen
  (partial fine-tuning);
- linear probe: LARS on the head, the encoder frozen;
- attentive probe: SGD with Nesterov momentum on the attentive pooling and
  the head, the encoder frozen (CAE's recipe);
- k-NN trains nothing: every parameter is frozen.
Shared: the linear scaling rule lr = base_lr x batch/256 (or none, for
CAE's recipes, whose lr is given for their batch), a per-step linear
warm-up and half-cycle cosine, optional global-norm clipping.
"""

import functools
import math
import re
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

# The encoder's input side: layer 0 for the layer-wise lr decay.
EMBEDDING_NAMES = ("patch_embed", "cls_token", "pos_embed")
_BLOCK = re.compile(r"blocks_(\d+)$")
# Modes that train a head on a frozen encoder.
PROBE_MODES = ("linear_probe", "attentive_probe")


LR_SCALINGS = ("linear", "none")


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The peak lr: base_lr x global batch / 256 (the linear scaling rule of
  the MAE recipes, `lr_scaling='linear'`), or base_lr as it is ('none':
  CAE's scripts give the lr for their batch of 2048, and the attentive
  probe's 0.4 for 8192, without rescaling)."""
  scaling = config.optimizer.get("lr_scaling", "linear")
  if scaling not in LR_SCALINGS:
    raise ValueError(f"optimizer.lr_scaling={scaling!r}; use one of "
                     f"{LR_SCALINGS}")
  if scaling == "none":
    return config.optimizer.base_lr
  return config.optimizer.base_lr * config.batch_size / 256


def warmup_cosine_schedule(peak_lr: float, warmup_steps: int,
                           total_steps: int, min_lr: float = 0.0
                           ) -> optax.Schedule:
  """Linear warm-up from 0, then a half-cycle cosine to `min_lr`, per step.

  Step 0 has lr 0, as in the reference's per-iteration schedule.
  """

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = peak_lr * step / max(warmup_steps, 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    cosine = min_lr + (peak_lr - min_lr) * 0.5 * (
        1 + jnp.cos(math.pi * jnp.clip(progress, 0.0, 1.0)))
    return jnp.where(step < warmup_steps, warmup, cosine)

  return schedule


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The run's lr schedule; `config`'s durations resolved to steps."""
  return warmup_cosine_schedule(peak_learning_rate(config),
                                config.warmup_steps, config.total_steps,
                                config.optimizer.min_lr)


def _names(path) -> list[str]:
  return [str(getattr(k, "key", k)) for k in path]


def no_decay_names(mode: str) -> tuple[str, ...]:
  """Parameters of `mode` spared from weight decay besides the 1-D ones.

  As the reference groups them. Pretraining (main_pretrain.py) uses timm
  0.3.2's `add_weight_decay` with an empty skip list, which spares only 1-D
  parameters and biases: the cls and mask tokens *are* decayed (the fixed
  sin-cos position table is no parameter). The classifiers (main_finetune.py,
  util/lr_decay.py) also spare the model's `no_weight_decay()` set,
  pos_embed and cls_token.
  """
  return () if mode == "pretrain" else ("pos_embed", "cls_token")


def weight_decay_mask(params, skip: Sequence[str] = ()):
  """True for the parameters to decay: all but 1-D ones (biases, norms) and
  those named in `skip`."""

  def decays(path, leaf):
    return leaf.ndim > 1 and _names(path)[-1] not in skip

  return jax.tree_util.tree_map_with_path(decays, params)


def _block_index(names: list[str]) -> int | None:
  """i for a parameter of encoder block i, else None."""
  if names[:2] != ["encoder", "transformer"]:
    return None
  match = _BLOCK.match(names[2])
  return int(match.group(1)) if match else None


def _layer_scale(names: list[str], depth: int, decay: float) -> float:
  block = _block_index(names)
  if names[0] == "encoder" and names[1] in EMBEDDING_NAMES:
    layer = 0
  elif block is not None:
    layer = block + 1
  else:
    layer = depth + 1
  return decay ** (depth + 1 - layer)


def layer_decay_scales(params, depth: int, decay: float):
  """Per-parameter lr multipliers of the layer-wise lr decay (BEiT, MAE A.2).

  The embedding is layer 0, block i layer i + 1, everything after the blocks
  (final norm, fc_norm, head) layer depth + 1; a parameter of layer l gets
  decay^(depth + 1 - l): decay^(N+1) for the embedding, decay^(N-i) for
  block i, 1 for the head.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _layer_scale(_names(path), depth, decay), params)


def trainable_mask(config: ml_collections.ConfigDict, params):
  """True for the parameters that `config.mode` trains.

  linear_probe, attentive_probe: everything but the encoder (the head, and
  the attentive pooling). knn: nothing. finetune: everything when
  trainable_blocks is -1; otherwise the last `trainable_blocks` blocks, the
  final norm (fc_norm or the encoder's norm) and the head (paper Fig. 9; 0
  blocks is a linear probe without BatchNorm). pretrain: everything.
  """

  mode, depth = config.mode, config.model.depth
  trainable_blocks = config.get("trainable_blocks", -1)

  def trains(path, _):
    names = _names(path)
    if mode in PROBE_MODES:
      return names[0] != "encoder"
    if mode == "knn":
      return False
    if mode == "pretrain" or trainable_blocks == -1:
      return True
    if names[0] != "encoder" or names[1:3] == ["transformer", "norm"]:
      return True
    block = _block_index(names)
    return block is not None and block >= depth - trainable_blocks

  return jax.tree_util.tree_map_with_path(trains, params)


def split_frozen(config: ml_collections.ConfigDict, params
                 ) -> tuple[dict, dict]:
  """(trained, frozen) parameters of `config.mode`, as flat {path tuple:
  value} dicts (`flax.traverse_util.flatten_dict`)."""
  trainable = flax.traverse_util.flatten_dict(trainable_mask(config, params))
  flat = flax.traverse_util.flatten_dict(params)
  trained = {k: v for k, v in flat.items() if trainable[k]}
  return trained, {k: v for k, v in flat.items() if not trainable[k]}


def scale_by_layer_decay(depth: int, decay: float
                         ) -> optax.GradientTransformation:
  """Multiplies each update by its parameter's `layer_decay_scales` entry.

  The scale is looked up by the update's path, so the transform also works
  on the partial trees that `optax.multi_transform` hands it.
  """

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * _layer_scale(_names(path), depth, decay),
        updates), state

  return optax.GradientTransformation(optax.init_empty_state, update)


def lars(learning_rate: optax.ScalarOrSchedule, momentum: float,
         trust_coefficient: float, weight_decay: float
         ) -> optax.GradientTransformation:
  """LARS in the reference's order: decay, trust ratio, momentum, then lr.

  Weight decay and the trust ratio apply to matrices only, not to 1-D
  parameters (biases). Unlike `optax.lars`, the learning rate scales the
  momentum buffer's output rather than its input, as in the reference, which
  matters while the lr changes.
  """
  matrices = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=matrices),
      optax.masked(optax.scale_by_trust_ratio(
          trust_coefficient=trust_coefficient), matrices),
      optax.trace(decay=momentum),
      optax.scale_by_learning_rate(learning_rate))


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                   params) -> optax.GradientTransformation:
  """The optimizer of `config.mode` for `params` (shapes suffice).

  Frozen parameters get no update and no optimizer state at all.
  """
  opt = config.optimizer
  if opt.name == "adamw":
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2,
                     weight_decay=opt.weight_decay,
                     mask=functools.partial(
                         weight_decay_mask, skip=no_decay_names(config.mode)))
    if opt.get("layer_decay", 1.0) != 1.0:
      tx = optax.chain(tx, scale_by_layer_decay(config.model.depth,
                                                opt.layer_decay))
  elif opt.name == "lars":
    tx = lars(schedule, opt.momentum, opt.trust_coefficient, opt.weight_decay)
  elif opt.name == "sgd":
    # PyTorch's SGD order: decay added to the gradient, then momentum; the
    # lr scales the momentum's output.
    tx = optax.chain(
        optax.add_decayed_weights(opt.weight_decay, mask=weight_decay_mask),
        optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov))
  else:
    raise ValueError(f"optimizer.name={opt.name!r}; use 'adamw', 'lars' or "
                     "'sgd'")
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  mask = trainable_mask(config, params)
  if all(jax.tree.leaves(mask)):
    return tx
  labels = jax.tree.map(lambda t: "train" if t else "freeze", mask)
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                               labels)
