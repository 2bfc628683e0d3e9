"""Line charts of a run's `metrics.jsonl` against the step, as one PNG.

  python -m mae_jax.plot_metrics workdirs/demo --out docs/demo_knn.png

One panel per metric, stacked over a shared step axis (by default the
training loss and the k-NN top-1 of the digits demo), drawn with PIL so that
no plotting library is needed.
"""

import argparse
import json
import math

import numpy as np
from etils import epath
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from mae_jax import visualize

DEFAULT_METRICS = ("train/loss", "eval/knn_top1")
WIDTH, PANEL_HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 24, 28  # margins around each plot area
TITLE_HEIGHT = 20
LINE = (31, 119, 180)
GRID = (225, 225, 225)

Series = tuple[np.ndarray, np.ndarray]  # steps, values


def read_series(path: str, names: tuple[str, ...]) -> dict[str, Series]:
  """{name: (steps, values)} from a metrics.jsonl, in file order; a record
  without the name is skipped. Raises ValueError naming the metrics the file
  has if one of `names` is not among them."""
  records = [json.loads(line) for line in
             epath.Path(path).read_text().splitlines() if line.strip()]
  found = {}
  for name in names:
    rows = [(r["step"], r[name]) for r in records if name in r]
    if not rows:
      known = sorted({k for r in records for k in r} - {"step"})
      raise ValueError(f"{path} has no metric {name!r}; it has {known}")
    steps, values = zip(*rows)
    found[name] = (np.asarray(steps, np.float64),
                   np.asarray(values, np.float64))
  return found


def ticks(low: float, high: float, count: int = 5) -> list[float]:
  """Round values (1, 2 or 5 x 10^n apart) from `low` to `high`, at most
  `count` + 1 of them."""
  if high <= low:
    return [low]
  raw = (high - low) / count
  power = 10 ** math.floor(math.log10(raw))
  spacing = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
  first = math.ceil(low / spacing - 1e-9) * spacing
  return [first + i * spacing
          for i in range(int((high - first) / spacing + 1e-9) + 1)]


def _label(value: float) -> str:
  return f"{value:.4g}"


def _panel(name: str, steps: np.ndarray, values: np.ndarray,
           step_range: tuple[float, float]) -> Image.Image:
  """One metric's chart: grid, axes labels, the line and its points."""
  image = Image.new("RGB", (WIDTH, PANEL_HEIGHT), "white")
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()
  x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, PANEL_HEIGHT - BOTTOM
  low, high = float(values.min()), float(values.max())
  pad = 0.05 * (high - low) or 0.5 * abs(low) or 1.0
  low, high = low - pad, high + pad

  def x(step):
    return x0 + (step - step_range[0]) / (
        step_range[1] - step_range[0] or 1) * (x1 - x0)

  def y(value):
    return y1 - (value - low) / (high - low) * (y1 - y0)

  for value in ticks(low, high):
    draw.line([(x0, y(value)), (x1, y(value))], fill=GRID)
    text = _label(value)
    draw.text((x0 - 6 - draw.textlength(text, font=font), y(value) - 6),
              text, fill="black", font=font)
  draw.text((x0 - 6 - draw.textlength("step", font=font), y1 + 4), "step",
            fill="black", font=font)
  for step in ticks(*step_range):
    draw.line([(x(step), y0), (x(step), y1)], fill=GRID)
    text = _label(step)
    draw.text((x(step) - draw.textlength(text, font=font) / 2, y1 + 4), text,
              fill="black", font=font)
  draw.rectangle([x0, y0, x1, y1], outline="black")
  points = [(x(s), y(v)) for s, v in zip(steps, values)]
  if len(points) > 1:
    draw.line(points, fill=LINE, width=2)
  for px, py in points:
    draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=LINE)
  title = (f"{name}: {_label(values[0])} at step {_label(steps[0])}, "
           f"{_label(values[-1])} at step {_label(steps[-1])}")
  draw.text((x0, 6), title, fill="black", font=font)
  return image


def line_charts(series: dict[str, Series], title: str = "") -> np.ndarray:
  """uint8 (H, W, 3): a panel per metric, in the order given, all over the
  same step range, under an optional title."""
  first = min(s.min() for s, _ in series.values())
  last = max(s.max() for s, _ in series.values())
  panels = [_panel(name, steps, values, (first, last))
            for name, (steps, values) in series.items()]
  top = TITLE_HEIGHT if title else 0
  canvas = Image.new("RGB", (WIDTH, top + PANEL_HEIGHT * len(panels)),
                     "white")
  ImageDraw.Draw(canvas).text((LEFT, 6), title, fill="black",
                              font=ImageFont.load_default())
  for i, panel in enumerate(panels):
    canvas.paste(panel, (0, top + i * PANEL_HEIGHT))
  return np.asarray(canvas)


def main(argv: list[str] | None = None):
  parser = argparse.ArgumentParser(
      prog="python -m mae_jax.plot_metrics",
      description="Plots metrics of a run's metrics.jsonl against the step.")
  parser.add_argument("workdir", help="a workdir (or its metrics.jsonl)")
  parser.add_argument("--out", required=True, help="the PNG to write")
  parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                      help="comma-separated names, one panel each "
                      f"(default: {','.join(DEFAULT_METRICS)})")
  parser.add_argument("--title", default="", help="a line above the panels")
  args = parser.parse_args(argv)
  path = epath.Path(args.workdir)
  if path.is_dir():
    path = path / "metrics.jsonl"
  series = read_series(str(path), tuple(args.metrics.split(",")))
  visualize.save_png(line_charts(series, args.title), args.out)
  print(f"Wrote {args.out}: {', '.join(series)} over "
        f"{len(next(iter(series.values()))[0])} points")


if __name__ == "__main__":
  main()
