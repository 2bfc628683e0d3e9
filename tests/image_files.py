"""Image files written by the data tests: solid colours, PNGs of any bit
depth, and a folder with one file that does not decode."""

import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

RED = (200, 30, 40)
BLUE = (20, 40, 220)
GREEN = (30, 200, 60)
FOLDER_COLOURS = (RED, BLUE, GREEN, (250, 250, 10), (120, 20, 160))


def solid(height: int, width: int, colour) -> np.ndarray:
  return np.full((height, width, 3), colour, np.uint8)


def save(path: pathlib.Path, pixels: np.ndarray):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


def png_bytes(pixels: np.ndarray, bit_depth: int, color_type: int) -> bytes:
  """A PNG of (H, W[, C]) pixels at `bit_depth` (8 or 16); PNG colour types:
  0 grey, 2 RGB, 4 grey + alpha, 6 RGBA. PIL cannot write 16-bit colour."""
  height = pixels.shape[0]
  rows = pixels.astype(">u2" if bit_depth == 16 else "u1").reshape(height, -1)
  raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter: none

  def chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body +
            struct.pack(">I", zlib.crc32(kind + body)))

  header = struct.pack(">IIBBBBB", pixels.shape[1], height, bit_depth,
                       color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
          chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def folder_with_corrupt_image(root: pathlib.Path) -> pathlib.Path:
  """root/train/class{0,1}/: five readable solid-colour images (colours
  FOLDER_COLOURS) and class0/broken.jpg of garbage bytes, which it returns."""
  for i, colour in enumerate(FOLDER_COLOURS):
    save(root / "train" / f"class{i % 2}" / f"img{i}.png",
         solid(12 + i, 16, colour))
  bad = root / "train" / "class0" / "broken.jpg"
  bad.write_bytes(b"\xff\xd8 this is not a jpeg " * 7)
  return bad
