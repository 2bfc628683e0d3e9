"""Reconstruction figures: masked input | reconstruction | reconstruction
with the visible patches pasted | original, one row per image.

Command line, for a user's own image and any checkpoint with a decoder (ours,
an official `.pth`, a HuggingFace ViTMAE directory):
  python -m mae_jax.visualize --checkpoint=PATH --image=PATH --out=fig.png
"""

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from mae_jax import cli
from mae_jax import convert
from mae_jax import losses
from mae_jax import models
from mae_jax import patches
from mae_jax.data import transforms

GAP = 2  # white pixels between panels
COLUMNS = ("masked input", "reconstruction", "with visible patches",
           "original")
PANELS = " | ".join(COLUMNS)
NORM_PIX_NOTE = ("norm-pix predictions shown with each patch's own mean and "
                 "std, taken from the original image")


def prediction_to_pixels(pred: np.ndarray, images: np.ndarray, patch_size: int,
                         norm_pix: bool) -> np.ndarray:
  """Decoder output -> normalised-image patches.

  A norm-pix model predicts standardised patches; they are shown with each
  patch's own mean and std taken from the original image (the usual way to
  display them: the figure borrows those two numbers per patch).
  """
  if not norm_pix:
    return pred
  target = np.asarray(patches.patchify(jnp.asarray(images), patch_size))
  mean = target.mean(axis=-1, keepdims=True)
  std = np.sqrt(target.var(axis=-1, keepdims=True, ddof=1) +
                losses.NORM_PIX_EPS)
  return pred * std + mean


def reconstruction_figure(images: np.ndarray, pred: np.ndarray,
                          mask: np.ndarray, patch_size: int,
                          norm_pix: bool,
                          visible_predicted: bool = True) -> np.ndarray:
  """(B, H, W, 3) normalised images + model output -> one uint8 figure.

  `visible_predicted=False` (a CAE, whose decoder predicts the masked
  patches only): the reconstruction panel leaves the visible patches blank,
  as the masked input leaves the masked ones.
  """
  images = np.asarray(images, np.float32)
  b, h, w, _ = images.shape
  grid_hw = (h // patch_size, w // patch_size)
  pixels = prediction_to_pixels(np.asarray(pred, np.float32), images,
                                patch_size, norm_pix)
  recon = np.asarray(patches.unpatchify(jnp.asarray(pixels), patch_size,
                                        grid_hw))
  mask_pixels = np.asarray(patches.unpatchify(
      jnp.repeat(jnp.asarray(mask, jnp.float32)[..., None],
                 patch_size ** 2 * 3, axis=-1), patch_size, grid_hw))
  masked = images * (1 - mask_pixels)
  pasted = masked + recon * mask_pixels
  if not visible_predicted:
    recon = recon * mask_pixels
  return panels_figure([masked, recon, pasted, images])


def panels_figure(panels: list[np.ndarray]) -> np.ndarray:
  """Panels of (B, H, W, 3) normalised images -> one uint8 figure, a column
  per panel and a row per image."""
  b, h, w, _ = panels[0].shape
  figure = np.ones((b * (h + GAP) - GAP, len(panels) * (w + GAP) - GAP, 3),
                   np.float32)
  for col, panel in enumerate(panels):
    # A diverging model predicts inf/nan: show it as black, not as an error.
    shown = np.nan_to_num(transforms.denormalize(panel), nan=0.0)
    for row in range(b):
      top, left = row * (h + GAP), col * (w + GAP)
      figure[top:top + h, left:left + w] = shown[row]
  return np.round(figure * 255).astype(np.uint8)


def _wrap(text: str, font, width: int) -> list[str]:
  """Greedy word wrap to lines at most `width` pixels wide."""
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  lines = []
  for paragraph in text.split("\n"):
    line = ""
    for word in paragraph.split():
      candidate = f"{line} {word}".strip()
      if line and measure.textlength(candidate, font=font) > width:
        lines.append(line)
        candidate = word
      line = candidate
    lines.append(line)
  return lines


def _text_strip(width: int, lines_at: list[tuple[int, list[str]]]
                ) -> Image.Image:
  """A white strip `width` wide with each block of lines drawn from its x."""
  font = ImageFont.load_default()
  pad = 4
  line_height = font.getbbox("Ag")[3] + 2
  height = 2 * pad + max(len(lines) for _, lines in lines_at) * line_height
  strip = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(strip)
  for x, lines in lines_at:
    for i, line in enumerate(lines):
      draw.text((x, pad + i * line_height), line, fill="black", font=font)
  return strip


def _stack(top: Image.Image, image: Image.Image) -> Image.Image:
  canvas = Image.new("RGB", (image.width, top.height + image.height), "white")
  canvas.paste(top, (0, 0))
  canvas.paste(image, (0, top.height))
  return canvas


def _with_column_titles(image: Image.Image,
                        columns: tuple[str, ...]) -> Image.Image:
  """Each column's name above it, centred (wrapped if the column is narrow),
  so that a figure read alone says what its panels are."""
  font = ImageFont.load_default()
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  column_width = image.width / len(columns)
  blocks = []
  for i, name in enumerate(columns):
    lines = _wrap(name, font, int(column_width) - 4)
    widest = max(measure.textlength(line, font=font) for line in lines)
    blocks.append((int(i * column_width + (column_width - widest) / 2),
                   lines))
  return _stack(_text_strip(image.width, blocks), image)


def _with_title(image: Image.Image, title: str) -> Image.Image:
  """The image under a white strip with `title` in it, wrapped to fit."""
  lines = _wrap(title, ImageFont.load_default(), image.width - 8)
  return _stack(_text_strip(image.width, [(4, lines)]), image)


def upscale(figure: np.ndarray, image_size: int,
            min_panel: int = 128) -> np.ndarray:
  """The figure enlarged (nearest) so that each panel is >= min_panel px."""
  scale = max(1, -(-min_panel // image_size))
  return np.repeat(np.repeat(figure, scale, axis=0), scale, axis=1)


def annotate(figure: np.ndarray, columns: tuple[str, ...] = COLUMNS,
             title: str | None = None) -> np.ndarray:
  """The figure with its column names above it and, if given, a title."""
  image = _with_column_titles(Image.fromarray(figure), columns)
  if title:
    image = _with_title(image, title)
  return np.asarray(image)


def save_png(figure: np.ndarray, path: str):
  """Writes a uint8 (H, W, 3) figure; `path` may be gs://..."""
  with epath.Path(path).open("wb") as f:
    Image.fromarray(figure).save(f, format="PNG")


def reconstruct(model_config, params, image: np.ndarray, seed: int = 0):
  """One uint8 image (H, W, 3), centre-cropped to the model's size ->
  (figure, loss on the masked patches), masked with `model_config`'s ratio."""
  crop = transforms.center_crop(image, model_config.image_size)
  images = transforms.normalize(crop[None])
  grid = patches.grid_size(model_config.image_size, model_config.patch_size)
  noise = jax.random.uniform(jax.random.key(seed), (1, grid * grid))
  output = jax.jit(models.build(model_config).apply)({"params": params},
                                                     images, noise)
  figure = reconstruction_figure(images, output.pred, output.mask,
                                 model_config.patch_size,
                                 model_config.norm_pix_loss)
  return figure, float(output.loss)


def main(argv: list[str] | None = None):
  parser = cli.ArgumentParser(
      prog="python -m mae_jax.visualize",
      description="Masks a random part of your image and shows the MAE's "
      f"reconstruction: {PANELS}.")
  parser.add_argument("--checkpoint", required=True,
                      help="a checkpoint of ours, an official .pth with its "
                      "decoder (mae_visualize_*.pth) or a HuggingFace "
                      "ViTMAE directory")
  parser.add_argument("--image", required=True,
                      help="any image PIL reads; resized and centre-cropped "
                      "to the model's size")
  parser.add_argument("--out", required=True, help="the PNG to write")
  parser.add_argument("--mask_ratio", type=float, default=0.75)
  parser.add_argument("--seed", type=int, default=0,
                      help="which patches are masked")
  convert.add_model_arguments(parser)
  args = parser.parse_args(argv)
  config, params = convert.load_from_arguments(args.checkpoint, args)
  if config.mode == "pretrain" and models.method_of(config.model) != "mae":
    raise ValueError(
        f"{args.checkpoint} is a {models.method_of(config.model).upper()} "
        "checkpoint: this command draws an MAE's reconstructions. A CAE "
        "run writes its own figures (reconstruction_*.png and "
        "all_patches_*.png) to its workdir while it trains.")
  if config.mode != "pretrain" or "decoder" not in params:
    raise ValueError(
        f"{args.checkpoint} has no decoder (a classifier or a pretrained "
        "encoder alone): reconstructions need an MAE with its decoder, e.g. "
        "the official mae_visualize_*.pth or HuggingFace facebook/vit-mae-*")
  config.model.mask_ratio = args.mask_ratio
  with epath.Path(args.image).open("rb") as f:
    image = np.asarray(Image.open(f).convert("RGB"))
  figure, loss = reconstruct(config.model, params, image, args.seed)
  title = (f"{epath.Path(args.checkpoint).name}, {args.mask_ratio:.0%} of "
           f"the patches masked: {PANELS}")
  if config.model.norm_pix_loss:
    title += f"\n{NORM_PIX_NOTE}"
  save_png(annotate(upscale(figure, config.model.image_size), title=title),
           args.out)
  print(f"Wrote {args.out}; loss on the masked patches {loss:.4f}")


if __name__ == "__main__":
  cli.run(main)
