"""Which patches are masked, per sample, inside the compiled step.

Every masking is a (B, L) noise: `random_masking` keeps the `len_keep`
patches of lowest noise (MAE §3: noise -> argsort -> keep the first
`len_keep` -> gather; `ids_restore` undoes the shuffle). The kinds of masking
differ only in the noise they draw (`make_noise`):
- 'random': uniform noise, the MAE default;
- 'block': BEiT's block-wise masking, CAE's default (`block_masking_noise`);
- 'grid': keep one patch of every 2x2 cell (MAE Table 1f).
Shapes are static (len_keep depends only on L and the ratio), so the compiled
step never changes. The noise of an example is drawn from a key folded with
its *global* position in the batch, never with the device that holds it, so a
run follows the same trajectory on 1 or on 8 devices.
"""

import math

import jax
import jax.numpy as jnp

from mae_jax import platforms

MASKINGS = ("random", "block", "grid")
# BEiT's `MaskingGenerator` defaults (beit/masking_generator.py, also in
# Atten4Vis/CAE furnace/masking_generator.py): each block covers at least 16
# patches, with an aspect ratio in [0.3, 1/0.3], placed in at most 10 attempts.
MIN_BLOCK_PATCHES = 16
BLOCK_SHAPE_RATIO = (0.3, 1 / 0.3)
BLOCK_ATTEMPTS = 10
# BEiT loops until the count is reached; a compiled step needs a bound. Its
# generator needs 6.3 blocks on average for 98 of 14x14 patches and fewer
# than 20 in 3000 of 3000 draws; past this bound random patches top it up.
MAX_BLOCKS = 32
# A grid masking keeps one of 2x2 patches: it implies this ratio.
GRID_CELL = 2
GRID_MASK_RATIO = 1 - 1 / GRID_CELL ** 2


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """Visible patches per image, as the reference computes it."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
  kept = int(num_patches * (1 - mask_ratio))
  if kept == 0:
    raise ValueError(
        f"mask_ratio={mask_ratio} leaves no visible patch of {num_patches} "
        f"(the encoder would see only its cls token); use a ratio below "
        f"{1 - 1 / num_patches:.4g}")
  return kept


def check(kind: str, grid_hw: tuple[int, int], mask_ratio: float) -> int:
  """Raises ValueError, with the fix, for a masking that cannot be drawn on
  this grid; returns the number of visible patches."""
  if kind not in MASKINGS:
    raise ValueError(f"masking={kind!r} is not known; use one of {MASKINGS}")
  gh, gw = grid_hw
  kept = num_kept(gh * gw, mask_ratio)
  masked = gh * gw - kept
  if kind == "block":
    side = math.isqrt(MIN_BLOCK_PATCHES - 1) + 1  # the smallest square block
    if masked < MIN_BLOCK_PATCHES or min(gh, gw) <= side:
      raise ValueError(
          f"block masking of {masked} of {gh}x{gw} patches: a block covers "
          f"at least {MIN_BLOCK_PATCHES} patches and must fit inside the grid "
          f"(narrower than it), so it needs at least {MIN_BLOCK_PATCHES} "
          f"masked patches and a grid of at least {side + 1}x{side + 1}; "
          "raise --config.model.mask_ratio or the image size, or use "
          "--config.model.masking=random")
  if kind == "grid" and (gh % GRID_CELL or gw % GRID_CELL
                         or masked * GRID_CELL ** 2 != gh * gw * (
                             GRID_CELL ** 2 - 1)):
    raise ValueError(
        f"grid masking keeps one of every {GRID_CELL}x{GRID_CELL} patches: "
        f"it needs an even grid (got {gh}x{gw}) and "
        f"--config.model.mask_ratio={GRID_MASK_RATIO} (got {mask_ratio}, "
        f"{masked} of {gh * gw} masked)")
  return kept


def random_masking(tokens: jnp.ndarray, noise: jnp.ndarray, len_keep: int):
  """Keeps the `len_keep` tokens with the lowest noise, per sample.

  Args:
    tokens: (B, L, D) patch tokens in image order.
    noise: (B, L) any real numbers; a lower value keeps the token.
    len_keep: how many tokens stay visible.

  Returns:
    kept: (B, len_keep, D) visible tokens, in shuffled order.
    mask: (B, L) 1.0 where the token was removed, in image order.
    ids_restore: (B, L) indices that undo the shuffle (see `unshuffle`).
  """
  ids_shuffle, mask, ids_restore = shuffle(noise, len_keep)
  return gather(tokens, ids_shuffle[:, :len_keep]), mask, ids_restore


def shuffle(noise: jnp.ndarray, len_keep: int):
  """(B, L) noise -> (ids_shuffle, mask, ids_restore), all (B, L).

  `ids_shuffle` lists the patches by increasing noise: the first `len_keep`
  stay visible, the rest are masked; mask is 1.0 where removed, in image
  order; `ids_restore` undoes the shuffle.
  """
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  # Removed tokens are those whose rank in the shuffle is >= len_keep.
  mask = (ids_restore >= len_keep).astype(jnp.float32)
  return ids_shuffle, mask, ids_restore


def _gather_by_index(tokens, ids):
  ids = ids.reshape(ids.shape + (1,) * (tokens.ndim - 2))
  return jnp.take_along_axis(tokens, ids, axis=1)


def _gather_by_matmul(tokens, ids):
  # Exact: each output row is one token times 1.0 (float32 accumulation).
  flat = tokens.reshape(tokens.shape[:2] + (-1,))
  one_hot = jax.nn.one_hot(ids, tokens.shape[1], dtype=tokens.dtype)
  out = jnp.einsum("bnl,bld->bnd", one_hot, flat,
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(ids.shape + tokens.shape[2:])


def gather(tokens: jnp.ndarray, ids: jnp.ndarray) -> jnp.ndarray:
  """(B, L, ...) tokens, (B, N) indices -> (B, N, ...) those tokens.

  An indexed gather on CPU; on accelerators, for floating-point tokens, a
  one-hot matmul, which XLA:TPU runs almost for free where its gather and
  the gather's scatter-add gradient cost ~0.5 ms of the ViT-L step (XLA's
  estimate), for 0.1% more FLOPs.
  """
  if not jnp.issubdtype(tokens.dtype, jnp.floating):
    return _gather_by_index(tokens, ids)
  return platforms.per_platform(tokens, ids, cpu=_gather_by_index,
                                accelerator=_gather_by_matmul)


def unshuffle(tokens: jnp.ndarray, ids_restore: jnp.ndarray) -> jnp.ndarray:
  """(B, L, D) tokens in shuffled order -> image order."""
  return gather(tokens, ids_restore)


def example_keys(rng: jax.Array, step: jnp.ndarray,
                 example_ids: jnp.ndarray) -> jax.Array:
  """One key per example, a pure function of (rng, step, global example id)."""
  step_key = jax.random.fold_in(rng, step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(example_ids)


def masking_noise(keys: jax.Array, num_patches: int) -> jnp.ndarray:
  """(B,) keys -> (B, L) uniform noise that drives `random_masking`."""
  return jax.vmap(lambda k: jax.random.uniform(k, (num_patches,)))(keys)


def make_noise(kind: str, keys: jax.Array, grid_hw: tuple[int, int],
               len_keep: int) -> jnp.ndarray:
  """(B,) keys -> (B, L) noise of the masking `kind` (see `MASKINGS`) that
  masks L - len_keep patches through `random_masking`."""
  num_patches = grid_hw[0] * grid_hw[1]
  if kind == "random":
    return masking_noise(keys, num_patches)
  if kind == "block":
    return jax.vmap(lambda k: block_masking_noise(
        k, grid_hw, num_patches - len_keep))(keys)
  if kind == "grid":
    return jax.vmap(lambda k: grid_masking_noise(k, grid_hw))(keys)
  raise ValueError(f"masking={kind!r} is not known; use one of {MASKINGS}")


def block_mask(key: jax.Array, grid_hw: tuple[int, int], num_masked: int
               ) -> jnp.ndarray:
  """BEiT's block-wise mask of one image: (L,) bool, at most `num_masked`.

  As BEiT's `MaskingGenerator` (CAE's default, `--mask_generator block`):
  while fewer than `num_masked` patches are masked, a block is drawn with an
  area uniform in [16, what remains], a log-uniform aspect ratio in
  [0.3, 1/0.3] and a uniform position; it must be narrower and lower than
  the grid and add between 1 and what remains of new patches, else it is
  drawn again, up to 10 attempts (drawn here at once: the first valid one
  is taken, which is the same distribution). Unlike BEiT's loop, at most
  `MAX_BLOCKS` blocks are drawn (a static bound for the compiled step), so
  the mask may fall short; `block_masking_noise` tops it up.
  """
  gh, gw = grid_hw
  rows = jnp.arange(gh * gw) // gw
  cols = jnp.arange(gh * gw) % gw
  log_aspect = tuple(math.log(r) for r in BLOCK_SHAPE_RATIO)

  def add_block(carry):
    mask, count, blocks = carry
    area_key, aspect_key, top_key, left_key = jax.random.split(
        jax.random.fold_in(key, blocks), 4)
    remaining = num_masked - count
    # BEiT's random.uniform(16, remaining), also when remaining < 16.
    area = MIN_BLOCK_PATCHES + (remaining - MIN_BLOCK_PATCHES) * (
        jax.random.uniform(area_key, (BLOCK_ATTEMPTS,)))
    aspect = jnp.exp(jax.random.uniform(
        aspect_key, (BLOCK_ATTEMPTS,), minval=log_aspect[0],
        maxval=log_aspect[1]))
    # Rounds half to even, as Python's round() does.
    h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    top = jax.random.randint(top_key, (BLOCK_ATTEMPTS,), 0,
                             jnp.maximum(gh - h + 1, 1))
    left = jax.random.randint(left_key, (BLOCK_ATTEMPTS,), 0,
                              jnp.maximum(gw - w + 1, 1))
    inside = ((rows >= top[:, None]) & (rows < (top + h)[:, None])
              & (cols >= left[:, None]) & (cols < (left + w)[:, None]))
    new = jnp.sum(inside & ~mask, axis=1)  # (attempts,)
    valid = (h < gh) & (w < gw) & (new > 0) & (new <= remaining)
    first = jnp.argmax(valid)
    found = valid[first]
    mask = mask | (inside[first] & found)
    return mask, count + jnp.where(found, new[first], 0), blocks + 1

  def more(carry):
    _, count, blocks = carry
    return (count < num_masked) & (blocks < MAX_BLOCKS)

  mask, _, _ = jax.lax.while_loop(
      more, add_block, (jnp.zeros(gh * gw, bool), jnp.int32(0), jnp.int32(0)))
  return mask


def block_masking_noise(key: jax.Array, grid_hw: tuple[int, int],
                        num_masked: int) -> jnp.ndarray:
  """(L,) noise that masks exactly `num_masked` patches: BEiT's blocks
  (`block_mask`), topped up with random patches if the blocks fell short.

  Blocked patches get noise in [1, 2), the others in [0, 1), so
  `random_masking` masks every blocked patch and, of the others, those with
  the highest noise: a uniformly random top-up.
  """
  block_key, noise_key = jax.random.split(key)
  blocked = block_mask(block_key, grid_hw, num_masked)
  return blocked + jax.random.uniform(noise_key, blocked.shape)


def grid_masking_noise(key: jax.Array, grid_hw: tuple[int, int]
                       ) -> jnp.ndarray:
  """(L,) noise that keeps one patch of every 2x2 cell (MAE Table 1f).

  The kept patch's place in the cell is drawn per image (one of 4), so that
  every position is sometimes visible; the ratio must be GRID_MASK_RATIO
  (`check`), which makes the kept patches exactly the lowest-noise ones.
  """
  gh, gw = grid_hw
  offset_key, noise_key = jax.random.split(key)
  dy, dx = jnp.divmod(jax.random.randint(offset_key, (), 0, GRID_CELL ** 2),
                      GRID_CELL)
  rows = jnp.arange(gh * gw) // gw
  cols = jnp.arange(gh * gw) % gw
  kept = (rows % GRID_CELL == dy) & (cols % GRID_CELL == dx)
  return (~kept) + jax.random.uniform(noise_key, (gh * gw,))
