"""Charts of metrics.jsonl: what is read, what is drawn, bad names."""

import json

import numpy as np
import pytest
from PIL import Image

from mae_jax import plot_metrics


def _write_metrics(path):
  records = [{"step": 1, "train/loss": 3.0},
             {"step": 50, "train/loss": 1.0},
             {"step": 100, "eval/knn_top1": 40.0},
             {"step": 100, "train/loss": 0.5},
             {"step": 200, "eval/knn_top1": 80.0}]
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_each_metric_is_read_where_it_was_logged(tmp_path):
  series = plot_metrics.read_series(_write_metrics(tmp_path / "m.jsonl"),
                                    ("train/loss", "eval/knn_top1"))
  np.testing.assert_array_equal(series["train/loss"][0], [1, 50, 100])
  np.testing.assert_array_equal(series["train/loss"][1], [3.0, 1.0, 0.5])
  np.testing.assert_array_equal(series["eval/knn_top1"][0], [100, 200])


def test_an_unknown_metric_names_those_there_are(tmp_path):
  with pytest.raises(ValueError, match=r"no metric 'eval/top1'; it has "
                     r"\['eval/knn_top1', 'train/loss'\]"):
    plot_metrics.read_series(_write_metrics(tmp_path / "m.jsonl"),
                             ("eval/top1",))


def test_ticks_are_round_and_inside_the_range():
  assert plot_metrics.ticks(0.0, 1000.0) == [0, 200, 400, 600, 800, 1000]
  np.testing.assert_allclose(plot_metrics.ticks(74.5, 96.2),
                             [75, 80, 85, 90, 95])
  np.testing.assert_allclose(plot_metrics.ticks(0.31, 0.72),
                             [0.4, 0.5, 0.6, 0.7])


def test_command_line_draws_one_panel_per_metric(tmp_path):
  _write_metrics(tmp_path / "metrics.jsonl")
  out = tmp_path / "chart.png"
  plot_metrics.main([str(tmp_path), "--out", str(out), "--title", "demo"])
  chart = np.asarray(Image.open(out))
  assert chart.shape == (plot_metrics.TITLE_HEIGHT
                         + 2 * plot_metrics.PANEL_HEIGHT,
                         plot_metrics.WIDTH, 3)
  line = np.all(chart == plot_metrics.LINE, axis=-1)
  for panel in range(2):
    top = plot_metrics.TITLE_HEIGHT + panel * plot_metrics.PANEL_HEIGHT
    assert line[top:top + plot_metrics.PANEL_HEIGHT].sum() > 100
