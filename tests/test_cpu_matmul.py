import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))
import cpu_matmul  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = (("a", 16, 32, 48), ("b", 64, 16, 8))
TINY_ATTENTION = (("c", 4, 8, 8, 16),)


@pytest.mark.parametrize("library", ["xla", "torch"])
def test_every_product_of_every_layer_is_timed(library):
  if library == "torch":
    pytest.importorskip("torch")
  line = cpu_matmul.measure(library, repeats=2, layers=TINY,
                            attention=TINY_ATTENTION)
  rates = line["gflop_per_s"]
  assert list(rates) == [f"{name}, {product}"
                         for name, *_ in TINY + TINY_ATTENTION
                         for product in cpu_matmul.PRODUCTS]
  assert all(rate > 0 for rate in rates.values())
  # All layers together: total FLOPs over total time lies between the
  # slowest and the fastest product; the same for the attention's.
  dense = [rate for key, rate in rates.items() if not key.startswith("c")]
  assert min(dense) <= line["all_layers_gflop_per_s"] <= max(dense)
  attention = [rate for key, rate in rates.items() if key.startswith("c")]
  assert min(attention) <= line["attention_gflop_per_s"] <= max(attention)


def test_the_attention_products_are_batched_over_images_and_heads():
  # Each product of a batched entry is `batch` independent matmuls.
  forward, d_x, d_w = cpu_matmul.xla_products(8, 8, 16, batch=(4,))
  assert forward().shape == (4, 8, 16)
  assert d_x().shape == (4, 8, 8)
  assert d_w().shape == (4, 8, 16)
  encoder, decoder = cpu_matmul.ATTENTION
  assert encoder[1:] == (cpu_matmul.BATCH * 12, 50, 50, 64)
  assert decoder[1:] == (cpu_matmul.BATCH * 16, 197, 197, 32)


def test_the_table_takes_each_librarys_median_over_the_rounds():
  def line(rate):
    return {"gflop_per_s": {"a, forward": rate},
            "all_layers_gflop_per_s": rate}
  table = cpu_matmul.median_table({"xla": [line(100), line(300), line(110)],
                                   "torch": [line(220), line(200), line(0)]})
  assert "| a, forward | 110 | 200 | 1.82x |" in table
  assert "| all layers | 110 | 200 | 1.82x |" in table
  assert "attention" not in table  # lines from before it was timed

  def with_attention(rate):
    return {**line(rate), "attention_gflop_per_s": rate / 2}
  table = cpu_matmul.median_table({"xla": [with_attention(100)],
                                   "torch": [with_attention(300)]})
  assert "| all attention products | 50 | 150 | 3.00x |" in table


def test_the_layers_are_the_vit_base_steps():
  # Forward FLOPs of the dense layers per image, 24 N D^2 per block with N
  # tokens of width D: 12 encoder blocks on 50 tokens of 768, 8 decoder
  # blocks on 197 of 512; the table holds one block of each.
  encoder = sum(2 * r * i * o for name, r, i, o in cpu_matmul.LAYERS
                if name.startswith("encoder")) / cpu_matmul.BATCH
  decoder = sum(2 * r * i * o for name, r, i, o in cpu_matmul.LAYERS
                if name.startswith("decoder")) / cpu_matmul.BATCH
  assert encoder == 24 * 50 * 768 ** 2
  assert decoder == 24 * 197 * 512 ** 2


def test_without_pytorch_the_torch_side_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
  with pytest.raises(SystemExit, match="requirements-test.txt"):
    cpu_matmul.measure("torch", repeats=1, layers=TINY)


def test_no_rounds_is_refused(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["cpu_matmul.py", "--rounds=0"])
  with pytest.raises(SystemExit):
    cpu_matmul.main()
  assert "at least 1" in capsys.readouterr().err
