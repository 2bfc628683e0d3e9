"""The CPU step's matmuls, XLA:CPU against PyTorch: python benchmarks/cpu_matmul.py.

mae_jax's CPU step and the PyTorch reference (benchmarks/torch_mae_step.py)
do the same matmuls; ~90% of either step's time is in them. Which one is
faster on a given CPU is mostly a matter of the matmul library each brings:
XLA:CPU its own kernels (YNNPACK, Eigen), PyTorch Intel's MKL. This times
the dense layers of the MAE ViT-B/16 step at the CPU benchmark's batch of 8
(encoder: 8 x 50 visible tokens, width 768; decoder: 8 x 197 tokens, width
512), each as the forward product and the two products of its backward (dX =
dY W^T, dW = X^T dY), float32, in both libraries, each in its own process,
in interleaved rounds. It prints one JSON line per library and round and a
table of medians.

  python benchmarks/cpu_matmul.py --rounds=3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BATCH = 8
ENCODER_TOKENS = BATCH * 50  # 49 visible patches and the class token
DECODER_TOKENS = BATCH * 197  # every patch and the class token

# (name, rows, inputs, outputs) of the step's dense layers.
LAYERS = (
    ("encoder qkv", ENCODER_TOKENS, 768, 3 * 768),
    ("encoder attention output", ENCODER_TOKENS, 768, 768),
    ("encoder MLP in", ENCODER_TOKENS, 768, 4 * 768),
    ("encoder MLP out", ENCODER_TOKENS, 4 * 768, 768),
    ("decoder qkv", DECODER_TOKENS, 512, 3 * 512),
    ("decoder attention output", DECODER_TOKENS, 512, 512),
    ("decoder MLP in", DECODER_TOKENS, 512, 4 * 512),
    ("decoder MLP out", DECODER_TOKENS, 4 * 512, 512),
)
PRODUCTS = ("forward", "dX", "dW")


def best_seconds(call, repeats: int) -> float:
  """The fastest of `repeats` calls after one untimed call."""
  call()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    best = min(best, time.perf_counter() - start)
  return best


def xla_products(rows: int, inputs: int, outputs: int):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.ones((rows, inputs), jnp.float32)
  w = jnp.ones((inputs, outputs), jnp.float32)
  dy = jnp.ones((rows, outputs), jnp.float32)
  forward = jax.jit(lambda x, w: x @ w)
  d_x = jax.jit(lambda dy, w: dy @ w.T)
  d_w = jax.jit(lambda x, dy: x.T @ dy)
  return (lambda: forward(x, w).block_until_ready(),
          lambda: d_x(dy, w).block_until_ready(),
          lambda: d_w(x, dy).block_until_ready())


def torch_products(rows: int, inputs: int, outputs: int):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit("cpu_matmul.py: PyTorch is not installed; it is a test "
             "dependency (pip install -r requirements-test.txt)")
  x = torch.ones(rows, inputs)
  w = torch.ones(inputs, outputs)
  dy = torch.ones(rows, outputs)
  return (lambda: x @ w, lambda: dy @ w.T, lambda: x.T @ dy)


def measure(library: str, repeats: int, layers=LAYERS) -> dict:
  """GFLOP/s of every product of every layer, in this process, and of all
  of them together (their FLOPs over the sum of their times)."""
  products = xla_products if library == "xla" else torch_products
  gflops, total_flop, total_s = {}, 0, 0.0
  for name, rows, inputs, outputs in layers:
    flop = 2 * rows * inputs * outputs
    for product, call in zip(PRODUCTS, products(rows, inputs, outputs)):
      seconds = best_seconds(call, repeats)
      gflops[f"{name}, {product}"] = flop / seconds / 1e9
      total_flop, total_s = total_flop + flop, total_s + seconds
  return {"library": library, "gflop_per_s": gflops,
          "all_layers_gflop_per_s": total_flop / total_s / 1e9,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def median_table(results: dict[str, list[dict]]) -> str:
  """Per product, each library's median GFLOP/s over the rounds."""
  lines = ["| product | XLA:CPU GFLOP/s | PyTorch GFLOP/s | PyTorch / XLA |",
           "|---|---|---|---|"]
  for key in [*results["xla"][0]["gflop_per_s"], "all layers"]:
    median = {
        library: statistics.median(
            line["all_layers_gflop_per_s"] if key == "all layers"
            else line["gflop_per_s"][key] for line in lines_of_library)
        for library, lines_of_library in results.items()}
    lines.append(f"| {key} | {median['xla']:.0f} | {median['torch']:.0f} | "
                 f"{median['torch'] / median['xla']:.2f}x |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=10,
                      help="timed calls of each product (the fastest counts)")
  parser.add_argument("--library", choices=("xla", "torch"),
                      help="measure one library in this process (what each "
                      "round runs)")
  args = parser.parse_args()
  if args.rounds < 1 or args.repeats < 1:
    parser.error("--rounds and --repeats must be at least 1")
  if args.library:
    print(json.dumps(measure(args.library, args.repeats)))
    return
  results = {"xla": [], "torch": []}
  for round_index in range(args.rounds):
    for library in results:
      command = [sys.executable, os.path.abspath(__file__),
                 f"--library={library}", f"--repeats={args.repeats}"]
      done = subprocess.run(command, capture_output=True, text=True,
                            check=False)
      if done.returncode != 0:
        sys.exit(done.stderr.strip()[-2000:] or
                 f"cpu_matmul.py: the {library} round failed")
      line = json.loads(done.stdout.strip().splitlines()[-1])
      print(json.dumps({"round": round_index, **line}), flush=True)
      results[library].append(line)
  print(median_table(results))


if __name__ == "__main__":
  main()
