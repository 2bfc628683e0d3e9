"""AdamW with the MAE recipe's lr scaling, schedule and decay mask (SPEC §2)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Parameters named here are never decayed, whatever their rank.
NO_DECAY_NAMES = ("cls_token", "mask_token")


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The linear scaling rule: lr = base_lr x global batch / 256."""
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


def weight_decay_mask(params):
  """True for weight matrices; False for biases, norms and tokens."""

  def decays(path, leaf):
    name = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
    return leaf.ndim > 1 and name not in NO_DECAY_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  opt = config.optimizer
  adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2,
                      weight_decay=opt.weight_decay, mask=weight_decay_mask)
  if opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adamw)
  return adamw
