"""A classifier's encoder from a pretraining checkpoint (`config.init_from`).

The encoder's options (layer scale, key bias, sin-cos order: models/vit.py)
are taken from the checkpoint's config first (`adopt_encoder_options`), so
that a CAE encoder drops into the MAE recipes' classifiers. Then the
encoder's parameters are copied by name, the decoder (and a CAE's regressor)
is dropped, the head stays freshly initialised. At another resolution than
the checkpoint's, its position table (a learned one, or the fixed sin-cos
table of its grid, which a pretraining checkpoint of the reference stores)
is resized bicubically on the grid, the cls row kept, as the reference's
`util/pos_embed.py interpolate_pos_embed` does; `pos_embed_resize='sincos'`
starts from the sin-cos table of the new grid instead.
"""

from absl import logging

import flax
import ml_collections
import numpy as np

from mae_jax import checkpointing
from mae_jax import patches
from mae_jax.models import dalle
from mae_jax.models import vit

# Encoder fields that must agree with the checkpoint's for its weights to fit.
_ENCODER_FIELDS = ("patch_size", "width", "depth", "num_heads", "mlp_dim")
# What `load_pretrained_encoder` does with the checkpoint's position table at
# another resolution: 'bicubic' resizes it (the reference), 'sincos' takes
# the sin-cos table of the new grid.
POS_EMBED_RESIZES = ("bicubic", "sincos")


# Encoder options a classifier takes from its init_from checkpoint, with the
# values of checkpoints written before the options existed (MAE's).
ENCODER_OPTIONS = {"layer_scale_init": 0.0, "key_bias": True,
                   "sincos_order": "w_first"}


def adopt_encoder_options(config: ml_collections.ConfigDict,
                          workdir: str | None = None
                          ) -> ml_collections.ConfigDict:
  """`config`, or for a classifier or k-NN (any mode but pretraining), a
  copy whose model has the encoder options of the encoder it evaluates
  (logged where they change): those stored with the run's own newest
  checkpoint in `workdir` when it has one (a resume or `eval_only`, which
  then need not name init_from again), else init_from's.

  The options decide which parameters the encoder has (layer scale) and
  what it computes (the sin-cos table), so the pretraining's must be used.
  Run before the task is built and on every resume alike, the adopted
  config is also what the workdir's checkpoints store and are checked
  against.
  """
  if config.mode == "pretrain":
    return config
  source = _own_checkpoint(workdir) or config.get("init_from")
  if not source:
    return config
  stored_config = checkpointing.load_config(source)
  if stored_config.get("mode") == dalle.TOKENIZER_MODE:
    raise ValueError(
        f"init_from={source} holds the DALL-E tokenizer (CAE's "
        "model.tokenizer_path), not an encoder; name a pretraining workdir "
        "or converted encoder weights")
  stored = stored_config.get("model", {})
  adopted = ml_collections.ConfigDict(config.to_dict())
  for name, default in ENCODER_OPTIONS.items():
    value = stored.get(name, default)
    if adopted.model[name] != value:
      logging.info("Encoder option model.%s=%r from %s (the config had %r).",
                   name, value, source, adopted.model[name])
      adopted.model[name] = value
  return adopted


def _own_checkpoint(workdir: str | None) -> str | None:
  """The newest checkpoint step directory in `workdir`, if there is one."""
  if not workdir:
    return None
  try:
    return checkpointing.resolve_checkpoint(workdir)
  except FileNotFoundError:
    return None


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys' cubic convolution weights at offsets -1, 0, 1, 2 (PyTorch's a)."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) matrix of PyTorch's bicubic resize along one axis
  (align_corners=False, borders clamped)."""
  source = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  base = np.floor(source)
  weights = _cubic_weights(source - base)
  matrix = np.zeros((size_out, size_in))
  for offset in range(4):
    index = np.clip(base + offset - 1, 0, size_in - 1).astype(int)
    np.add.at(matrix, (np.arange(size_out), index), weights[:, offset])
  return matrix


def resize_pos_embed(pos_embed: np.ndarray, grid: tuple[int, int]
                     ) -> np.ndarray:
  """(1, 1 + h*w, D) on a square h x w grid -> (1, 1 + grid[0]*grid[1], D)."""
  cls_row, tokens = pos_embed[:, :1], pos_embed[0, 1:]
  side = int(round(np.sqrt(tokens.shape[0])))
  if side * side != tokens.shape[0]:
    raise ValueError(f"pos_embed with {tokens.shape[0]} patch positions is not "
                     "a square grid")
  tokens = tokens.reshape(side, side, -1).astype(np.float64)
  resized = np.einsum("ih,hwd,jw->ijd", _bicubic_matrix(side, grid[0]), tokens,
                      _bicubic_matrix(side, grid[1]))
  return np.concatenate(
      [cls_row, resized.reshape(1, -1, tokens.shape[-1]).astype(
          pos_embed.dtype)], axis=1)


def load_pretrained_encoder(init_from: str, params,
                            model_config: ml_collections.ConfigDict,
                            pos_embed_resize: str = "bicubic"):
  """`params` with 'encoder' replaced by the checkpoint's encoder.

  `pos_embed_resize` is one of POS_EMBED_RESIZES. Raises ValueError naming
  every parameter that is missing or does not fit.
  """
  if pos_embed_resize not in POS_EMBED_RESIZES:
    raise ValueError(f"pos_embed_resize={pos_embed_resize!r}; use one of "
                     f"{POS_EMBED_RESIZES}")
  stored_config, stored_params = checkpointing.load_params(init_from)
  _check_holds_whole_encoder(init_from, stored_config)
  stored_model = stored_config.model
  if stored_model.patch_size != model_config.patch_size:
    raise ValueError(
        f"init_from={init_from} was trained with patch size "
        f"{stored_model.patch_size}, but the model has "
        f"{model_config.patch_size}; the patch embedding cannot be reused. "
        f"Set --config.model.patch_size={stored_model.patch_size}.")
  if "encoder" not in stored_params:
    raise ValueError(f"init_from={init_from} holds no 'encoder' parameters "
                     f"(found {sorted(stored_params)})")
  ours = flax.traverse_util.flatten_dict(params["encoder"], sep="/")
  theirs = flax.traverse_util.flatten_dict(stored_params["encoder"], sep="/")
  table = _checkpoint_pos_embed(theirs, stored_model)
  loaded, problems = {}, []
  for name, value in ours.items():
    if name == "pos_embed" and table.shape[-1] != value.shape[-1]:
      problems.append(f"encoder/pos_embed: checkpoint {table.shape} vs model "
                      f"{value.shape}")
    elif name == "pos_embed":
      loaded[name] = _pos_embed(table, value, pos_embed_resize)
    elif name not in theirs:
      problems.append(f"encoder/{name}: not in the checkpoint")
    elif theirs[name].shape != value.shape:
      problems.append(f"encoder/{name}: checkpoint {theirs[name].shape} vs "
                      f"model {value.shape}")
    else:
      loaded[name] = theirs[name]
  # Global pooling leaves the final norm unused, as in the reference; a
  # learned pos_embed is dropped when the model uses the fixed table.
  unused = [n for n in theirs if n not in ours
            and not n.startswith(("transformer/norm/", "pos_embed"))]
  problems += [f"encoder/{n}: in the checkpoint, not in the model"
               for n in unused]
  if "pos_embed" in theirs and "pos_embed" not in ours:
    logging.warning("init_from has a learned pos_embed, which the model does "
                    "not use (it has the fixed sin-cos table); set "
                    "--config.model.learned_pos_embed=True to load it.")
  if problems:
    fields = ", ".join(f"{f}={stored_model.get(f)}" for f in _ENCODER_FIELDS)
    raise ValueError(
        f"the encoder in init_from={init_from} ({fields}) does not fit the "
        "configured model:\n  " + "\n  ".join(problems[:20]) +
        "\nSet --config.model to the checkpoint's sizes.")
  if "pos_embed" not in ours:
    _check_fixed_table_fits(table, model_config, pos_embed_resize)
  logging.info("Initialised %d encoder tensors from %s; the head is new.",
               len(loaded), init_from)
  return {**params, "encoder": flax.traverse_util.unflatten_dict(
      loaded, sep="/")}


def _check_holds_whole_encoder(init_from: str,
                               stored_config: ml_collections.ConfigDict):
  """A probe or a partial fine-tuning saves only what it trains (train.py
  `checkpoint_tree`): its frozen encoder is in its own init_from."""
  mode = stored_config.get("mode")
  partial = (mode == "finetune"
             and stored_config.get("trainable_blocks", -1) >= 0)
  if mode in ("linear_probe", "attentive_probe") or partial:
    raise ValueError(
        f"init_from={init_from} is a {mode} run, whose checkpoints hold only "
        "the parameters it trained, not its frozen encoder; use the encoder "
        f"it started from, init_from={stored_config.get('init_from')!r}, or "
        "a full fine-tuning run (trainable_blocks=-1)")


def _checkpoint_pos_embed(theirs: dict, stored_model: ml_collections.ConfigDict
                          ) -> np.ndarray:
  """The checkpoint's position table, (1, 1 + h*w, D): its learned
  'pos_embed', or else the fixed sin-cos table of its grid with a zero cls
  row (what the reference's pretraining checkpoints hold), in the order of
  the checkpoint's halves (CAE's is h first)."""
  if "pos_embed" in theirs:
    return theirs["pos_embed"]
  grid = patches.grid_size(stored_model.image_size, stored_model.patch_size)
  order = stored_model.get("sincos_order", ENCODER_OPTIONS["sincos_order"])
  table = vit.sincos_pos_embed_2d(stored_model.width, grid, grid, order)
  return np.pad(table, ((1, 0), (0, 0)))[None]


def _check_fixed_table_fits(table: np.ndarray,
                            model_config: ml_collections.ConfigDict,
                            pos_embed_resize: str):
  """A model with the fixed sin-cos table (learned_pos_embed=False) has no
  parameter to hold a resized checkpoint table: at another resolution, say
  so rather than silently use another table than the reference."""
  grid = patches.grid_size(model_config.image_size, model_config.patch_size)
  if table.shape[1] - 1 != grid * grid and pos_embed_resize == "bicubic":
    raise ValueError(
        f"the checkpoint's position table has {table.shape[1] - 1} positions, "
        f"the model {grid}x{grid}; the reference resizes the checkpoint's "
        "table (bicubic), which needs --config.model.learned_pos_embed=True "
        "(a linear probe keeps it frozen); or set "
        "--config.pos_embed_resize=sincos for the sin-cos table of the new "
        "grid")


def _pos_embed(table: np.ndarray, initial: np.ndarray,
               pos_embed_resize: str) -> np.ndarray:
  """The checkpoint's position table for the model's grid; `initial` is the
  model's own (the sin-cos table of its grid, zero cls row)."""
  if table.shape == initial.shape:
    return table
  grid = int(round(np.sqrt(initial.shape[1] - 1)))
  if pos_embed_resize == "sincos":
    logging.info("pos_embed_resize=sincos: starting from the sin-cos table "
                 "of the %dx%d grid, not the checkpoint's %d positions.",
                 grid, grid, table.shape[1] - 1)
    return initial
  logging.info("Resizing the checkpoint's position table from %d positions "
               "to %dx%d (bicubic).", table.shape[1] - 1, grid, grid)
  return resize_pos_embed(table, (grid, grid)).astype(initial.dtype)
