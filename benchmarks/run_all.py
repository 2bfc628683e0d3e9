"""Re-makes BENCHMARKS.md's figures: run_all.py --section=cpu|tpu|input|all.

  python benchmarks/run_all.py --section=cpu   # the CPU step table, timed
  python benchmarks/run_all.py --section=tpu   # XLA's TPU estimates
  python benchmarks/run_all.py --section=input # the input pipeline
  python benchmarks/run_all.py --section=all
  python benchmarks/run_all.py --section=all --small   # a quick check

cpu: the ViT-B/16 pretraining step of mae_jax and of the PyTorch reference
(benchmarks/torch_mae_step.py), each with glibc's default malloc and with
its huge-page malloc, and mae_jax's encoder with mask tokens
(`model.encoder_mask_tokens`), run as separate processes in interleaved
rounds (one of each per round, so that a busy spell of the machine touches
all of them); each figure is the median over the rounds of each run's median
step. The table BENCHMARKS.md shows is printed at the end, and then the
table of the step's matmuls in XLA:CPU and in PyTorch
(benchmarks/cpu_matmul.py, its own interleaved rounds), which says how much
of the ratio between the two steps is the matmul libraries', and the ViT-B
step's time by kind of operation (benchmarks/cpu_step_profile.py), and the
step against the forms the trainer ran before (benchmarks/cpu_step_forms.py).

tpu: every estimate of BENCHMARKS.md's TPU section (`python -m
mae_jax.benchmark --topology=...`, the stock-Flax reference,
benchmarks/flax_reference_mae.py, the per-operation shares of the ViT-B
and ViT-L steps, benchmarks/tpu_op_breakdown.py, the variants of the step
that benchmarks/tpu_step_breakdown.patch switches on, run in a scratch clone
of HEAD with the patch applied, and the attention layer's alternative forms,
benchmarks/tpu_attention_variants.py), one after the other (they are XLA's
deterministic cost-model figures; compiling ViT-H takes minutes). Needs libtpu (`scripts/in_venv.sh --tpu_estimate python
benchmarks/run_all.py --section=tpu`).

input: benchmarks/input_pipeline.py (its own interleaved rounds and
medians), writing its ImageNet-like data to `--input_data_dir` first if that
does not exist.

Every run's JSON line is appended to `--out`, with the command that made it
(the input section prints its own). The default, benchmarks/results.jsonl,
is ignored by git: the lines that BENCHMARKS.md cites are copied into the
section's file (benchmarks/cpu_results.jsonl, tpu_estimates.jsonl, ...).
"""

import dataclasses
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import cpu_matmul  # benchmarks/, this script's directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
from mae_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from mae_jax.huge_pages import TUNABLES as HUGE_PAGES  # pylint: disable=g-import-not-at-top,wrong-import-position


@dataclasses.dataclass(frozen=True)
class Run:
  """One benchmark command, the malloc it runs with and its other
  environment switches (`switches`, e.g. the step-breakdown patch's)."""
  label: str
  argv: tuple[str, ...]
  huge_pages: bool = True
  switches: tuple[tuple[str, str], ...] = ()

  def environment(self) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if self.huge_pages:
      env["GLIBC_TUNABLES"] = HUGE_PAGES
    else:  # mae_jax's entry points would otherwise re-execute with it
      env["MAE_JAX_NO_REEXEC"] = "1"
    return {**env, **dict(self.switches)}

  def command_line(self) -> str:
    prefix = (f"GLIBC_TUNABLES={HUGE_PAGES} " if self.huge_pages
              else "MAE_JAX_NO_REEXEC=1 ")
    prefix += "".join(f"{name}={value} " for name, value in self.switches)
    return prefix + " ".join(self.argv)


def mae_jax_step(config: str, *overrides: str, steps: int, warmup: int
                 ) -> tuple[str, ...]:
  return ("python", "-m", "mae_jax.benchmark", f"--config={config}",
          *overrides, f"--steps={steps}", f"--warmup={warmup}")


def cpu_runs(small: bool) -> list[Run]:
  batch, steps, warmup = (2, 2, 1) if small else (8, 10, 2)
  config = "configs/mae_vit_base_pretrain.py"
  fixed = (f"--config.batch_size={batch}", "--config.model.dtype=float32")
  ours = mae_jax_step(config, *fixed, steps=steps, warmup=warmup)
  torch = ("python", "benchmarks/torch_mae_step.py", f"--batch={batch}",
           f"--steps={steps}", f"--warmup={warmup}")
  return [
      Run("mae_jax, glibc default malloc", ours, huge_pages=False),
      Run("mae_jax, glibc.malloc.hugetlb=1", ours),
      Run("PyTorch, glibc default malloc", torch, huge_pages=False),
      Run("PyTorch, glibc.malloc.hugetlb=1", torch),
      Run("mae_jax, encoder with mask tokens",
          mae_jax_step(config, *fixed, "--config.model.encoder_mask_tokens"
                       "=True", steps=steps, warmup=warmup)),
      # CAE-B's step (pixel targets: no tokenizer weights needed) against
      # MAE-B's (CAE §5.2: the regressor, decoder and alignment cost ~1.24x).
      Run("mae_jax, CAE-B (pixel targets)",
          mae_jax_step("configs/cae_vit_base_pretrain.py", *fixed,
                       "--config.model.target=pixels",
                       "--config.data.second_view_size=0", steps=steps,
                       warmup=warmup)),
  ]


def cpu_matmul_run(rounds: int, small: bool) -> Run:
  """The step's matmuls in XLA:CPU and in PyTorch (benchmarks/cpu_matmul.py),
  which say how much of the ratio between the two steps is the matmul
  libraries'."""
  return Run("XLA:CPU and PyTorch matmuls",
             ("python", "benchmarks/cpu_matmul.py", f"--rounds={rounds}",
              f"--repeats={1 if small else 10}"))


CPU_STEP_PROFILE = Run(
    "where the CPU step's time goes",
    ("python", "benchmarks/cpu_step_profile.py",
     "--config=configs/mae_vit_base_pretrain.py", "--config.batch_size=8",
     "--config.model.dtype=float32", "--steps=3"))


STEP_FORMS = Run(
    "the CPU step against its earlier forms",
    ("python", "benchmarks/cpu_step_forms.py",
     "--config=configs/mae_vit_base_pretrain.py", "--config.batch_size=8",
     "--config.model.dtype=float32", "--steps=3", "--rounds=6"))


def step_forms_table(result: dict) -> str:
  """The ViT-B step in the trainer's form and its earlier ones
  (cpu_step_forms.py)."""
  lines = [f"| form of the step | step (s), median of {result['rounds']} "
           "rounds | vs the trainer | state copies | GB copied a step | "
           "all-reduces |", "|---|---|---|---|---|---|"]
  for form, seconds in result["step_s_median"].items():
    lines.append(f"| {form} | {seconds:.2f} | "
                 f"{result['trainer_speedup'][form]:.2f}x | "
                 f"{result['state_copies'][form]} | "
                 f"{result['state_copy_gb_per_step'][form]:.2f} | "
                 f"{result['all_reduces'][form]} |")
  return "\n".join(lines)


def profile_table(result: dict) -> str:
  """The ViT-B step's seconds by kind of operation (cpu_step_profile.py)."""
  lines = [f"| kind of operation (step: {result['step_s_median']:.2f} s) | "
           "s per step | share |", "|---|---|---|"]
  for kind, seconds in result["seconds_per_step"].items():
    lines.append(f"| {kind} | {seconds:.2f} | {result['shares'][kind]:.0%} |")
  return "\n".join(lines)


def matmul_table(lines: list[dict]) -> str:
  return cpu_matmul.median_table(
      {library: [line for line in lines if line["library"] == library]
       for library in ("xla", "torch")})


def tpu_runs(small: bool) -> list[Run]:
  """The estimates of BENCHMARKS.md's TPU section (with --small, the demo
  configs on a v3-8)."""
  def ours(config, *overrides, pod="v3-128"):
    return ("python", "-m", "mae_jax.benchmark", f"--config={config}",
            "--topology=v3-8", f"--pod={pod}", *overrides)

  def stock(config, pod="v3-128"):
    return ("python", "benchmarks/flax_reference_mae.py",
            f"--config={config}", "--topology=v3-8", f"--pod={pod}")

  if small:
    return [Run("demo MAE", ours("configs/demo.py", pod="v3-8")),
            Run("demo MAE, stock Flax", stock("configs/demo.py", pod="v3-8")),
            Run("demo CAE", ours("configs/demo_cae.py", pod="v3-8"))]
  def pretrain(size):
    return f"configs/mae_vit_{size}_pretrain.py"

  # The figures the issue asks for first: a partial run still has them.
  runs = []
  for size in ("base", "large"):
    runs += [Run(f"MAE {size} pretraining", ours(pretrain(size))),
             Run(f"MAE {size} pretraining, stock Flax", stock(pretrain(size)))]
  runs += [
      Run("MAE large pretraining, encoder with mask tokens",
          ours(pretrain("large"), "--config.model.encoder_mask_tokens=True")),
      # Pixel targets: the DALL-E target needs the released tokenizer's
      # weights on disk (its encoder would add its forward on the 112 px
      # second view).
      Run("CAE base pretraining, pixel targets",
          ours("configs/cae_vit_base_pretrain.py",
               "--config.model.target=pixels",
               "--config.data.second_view_size=0"))]
  runs += [Run(f"MAE {size} pretraining, remat",
               ours(pretrain(size), "--config.model.remat=True"))
           for size in ("base", "large")]
  # Batch 1024 on 128 cores is 8 per core: mixup/cutmix groups of 8 (the
  # recipe's 32 need 32 per core).
  runs += [Run(f"{size} fine-tuning",
               ours(f"configs/mae_vit_{size}_finetune.py",
                    "--config.augment.mix_group_size=8"))
           for size in ("base", "large", "huge")]
  runs += [Run("MAE huge pretraining", ours(pretrain("huge"))),
           Run("MAE huge pretraining, remat",
               ours(pretrain("huge"), "--config.model.remat=True")),
           Run("MAE huge pretraining, stock Flax", stock(pretrain("huge")))]
  return runs


def tpu_breakdown_runs(small: bool) -> list[Run]:
  """The per-operation shares of XLA's estimate (with --small, the demo's)."""
  def breakdown(config):
    return ("python", "benchmarks/tpu_op_breakdown.py", f"--config={config}",
            "--topology=v3-8", f"--pod={'v3-8' if small else 'v3-128'}")

  if small:
    return [Run("demo MAE", breakdown("configs/demo.py"))]
  return [Run(f"MAE {size} pretraining",
              breakdown(f"configs/mae_vit_{size}_pretrain.py"))
          for size in ("base", "large")]


BREAKDOWN_PATCH = "benchmarks/tpu_step_breakdown.patch"
# The variants of the step that the patch's switches make (BENCHMARKS.md,
# "Where the rest of the step goes").
STEP_VARIANTS = (
    ("no gradient all-reduce", (("BREAKDOWN_NO_ALLREDUCE", "1"),)),
    ("gradients all-reduced in bfloat16", (("BREAKDOWN_BF16_ALLREDUCE", "1"),)),
    ("no update norm metric", (("BREAKDOWN_NO_UPDATE_NORM", "1"),)),
    ("AdamW first moment in bfloat16", (("BREAKDOWN_BF16_MOMENTS", "1"),)),
    ("bfloat16 all-reduce and first moment",
     (("BREAKDOWN_BF16_ALLREDUCE", "1"), ("BREAKDOWN_BF16_MOMENTS", "1"))),
    ("AdamW sharded over the 8 cores (ZeRO-1)",
     (("BREAKDOWN_SHARDED_UPDATE", "8"),)),
)


def step_variant_runs(small: bool) -> tuple[list[Run], list[Run]]:
  """(runs of the patched step, runs of the trainer's own) for the
  variant table: each switch of the patch, and 64 images per core, for
  ViT-B and ViT-L (with --small, the demo)."""
  sizes = ({"demo": "configs/demo.py"} if small else
           {size: f"configs/mae_vit_{size}_pretrain.py"
            for size in ("base", "large")})
  pod = "v3-8" if small else "v3-128"
  def step(config, *overrides):
    return ("python", "-m", "mae_jax.benchmark", f"--config={config}",
            "--topology=v3-8", f"--pod={pod}", *overrides)
  patched = [Run(f"{size}: {variant}", step(config), switches=switches)
             for size, config in sizes.items()
             for variant, switches in STEP_VARIANTS]
  own = [Run(f"{size}: twice the images per core",
             step(config, f"--config.batch_size={2 * batch_size(config)}"))
         for size, config in sizes.items()]
  return patched, own


def batch_size(config_path: str) -> int:
  """The global batch of a configs/*.py file."""
  module = os.path.splitext(config_path)[0].replace("/", ".")
  return importlib.import_module(module).get_config().batch_size


def scratch_clone_with_breakdown_patch(directory: str) -> str:
  """A clone of this checkout's HEAD in `directory` with
  benchmarks/tpu_step_breakdown.patch applied: the patch's switches are
  never in the trainer itself."""
  clone = os.path.join(directory, "step_variants")
  for argv in (["git", "clone", "-q", ROOT, clone],
               ["git", "-C", clone, "apply", BREAKDOWN_PATCH]):
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
      raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
  return clone


def step_variant_table(results: list[dict]) -> str:
  """Estimated step and MFU of each variant (rows) for each model
  (columns, from the labels' "size: variant")."""
  sizes = list(dict.fromkeys(r["label"].split(": ")[0] for r in results))
  variants = list(dict.fromkeys(r["label"].split(": ")[1] for r in results))
  by_label = {r["label"]: r for r in results}
  lines = ["| variant | " + " | ".join(
      f"{size} est. step (ms) | {size} est. MFU" for size in sizes) + " |",
           "|---" * (2 * len(sizes) + 1) + "|"]
  for variant in variants:
    cells = []
    for size in sizes:
      r = by_label.get(f"{size}: {variant}")
      cells += ([f"{r['estimated_step_s'] * 1e3:.1f}",
                 f"{r['estimated_mfu']:.0%}"] if r else ["", ""])
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def json_lines(run: Run, timeout_s: float, cwd: str = ROOT) -> list[dict]:
  """The JSON lines `run` prints in `cwd`, each with the run's label and
  command; a failure, a timeout or no JSON at all ends run_all."""
  try:
    # "python" in the printed command; this interpreter runs it.
    argv = (sys.executable,) + run.argv[1:]
    done = subprocess.run(argv, cwd=cwd, env=run.environment(),
                          capture_output=True, text=True, timeout=timeout_s,
                          check=False)
  except subprocess.TimeoutExpired as e:
    raise SystemExit(f"{run.label}: no result after {timeout_s:.0f} s "
                     f"(--timeout_s): {run.command_line()}") from e
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if done.returncode or not lines:
    raise SystemExit(f"{run.label} failed (exit {done.returncode}): "
                     f"{run.command_line()}\n{done.stderr[-2000:]}")
  return [{"label": run.label, "command": run.command_line(),
           **json.loads(line)} for line in lines]


def keep(lines: list[dict], out) -> list[dict]:
  """Appends `lines` to `out`, one JSON line each; returns them."""
  for line in lines:
    print(json.dumps(line), file=out, flush=True)
  return lines


def run_once(run: Run, timeout_s: float, cwd: str = ROOT) -> dict:
  """The (last) JSON line `run` prints in `cwd`, with its label and
  command."""
  return json_lines(run, timeout_s, cwd)[-1]


def one_after_the_other(runs: list[Run], timeout_s: float, out,
                        cwd: str = ROOT) -> list[dict]:
  """Each run once in `cwd`, its JSON line appended to `out` as soon as it
  is done."""
  results = []
  for run in runs:
    results.append(run_once(run, timeout_s, cwd))
    print(json.dumps(results[-1]), file=out, flush=True)
    print(f"{run.label} ({run.argv[1]}): done", file=sys.stderr)
  return results


def interleaved(runs: list[Run], rounds: int, timeout_s: float,
                out) -> dict[str, list[dict]]:
  """Every run once per round, in order; their results by label."""
  results = {run.label: [] for run in runs}
  for round_index in range(rounds):
    for run in runs:
      result = {"round": round_index, **run_once(run, timeout_s)}
      print(json.dumps(result), file=out, flush=True)
      results[run.label].append(result)
      print(f"round {round_index + 1}/{rounds}: {run.label}: "
            f"{result['step_s_median']:.3f} s", file=sys.stderr)
  return results


OURS = "mae_jax, glibc.malloc.hugetlb=1"
TORCH = ("PyTorch, glibc default malloc", "PyTorch, glibc.malloc.hugetlb=1")


def _median(rows: list[dict], key: str) -> float | None:
  """The median of `key` over `rows`, None where runs did not record it
  (lines made before the benchmark printed it)."""
  values = [r[key] for r in rows if key in r]
  return statistics.median(values) if values else None


def _cell(value: float | None, form: str) -> str:
  return "" if value is None else format(value, form)


def cpu_table(results: dict[str, list[dict]]) -> str:
  """BENCHMARKS.md's CPU table: medians over the rounds, each step against
  PyTorch's at the same malloc and at PyTorch's faster one, then our step
  against PyTorch's round by round (its faster malloc in each round)."""
  step = {label: _median(rows, "step_s_median")
          for label, rows in results.items()}
  torch = {"glibc default": step[TORCH[0]], "hugetlb": step[TORCH[1]]}
  fastest_torch = min(torch.values())
  lines = [f"| implementation | step (s) | img/s | MFU | minor page faults "
           f"per step | kernel s per step | vs PyTorch, same malloc | "
           f"vs PyTorch's faster malloc ({fastest_torch:.2f} s) |",
           "|---|---|---|---|---|---|---|---|"]
  for label, rows in results.items():
    malloc = "glibc default" if "default" in label else "hugetlb"
    batch = rows[0]["batch"]
    lines.append(
        f"| {label} | {step[label]:.2f} | {batch / step[label]:.2f} | "
        f"{_cell(_median(rows, 'mfu'), '.2f')} | "
        f"{_cell(_median(rows, 'minor_page_faults_per_step'), ',.0f')} | "
        f"{_cell(_median(rows, 'kernel_s_per_step'), '.2f')} | "
        f"{torch[malloc] / step[label]:.2f}x | "
        f"{fastest_torch / step[label]:.2f}x |")

  def by_round_index(label):
    return {r.get("round", i): r["step_s_median"]
            for i, r in enumerate(results[label])}
  ours = by_round_index(OURS)
  torch_rounds = [by_round_index(label) for label in TORCH]
  by_round = [min(t[i] for t in torch_rounds) / ours[i] for i in sorted(ours)
              if all(i in t for t in torch_rounds)]
  lines.append("\nours (hugetlb) against PyTorch's faster malloc, by round: "
               + ", ".join(f"{ratio:.2f}x" for ratio in by_round))
  ratio = (step["mae_jax, encoder with mask tokens"] / step[OURS])
  flops = (_median(results["mae_jax, encoder with mask tokens"],
                   "train_gflop_per_img") /
           _median(results[OURS], "train_gflop_per_img"))
  lines.append(f"encoder with mask tokens: {ratio:.2f}x the step time, "
               f"{flops:.2f}x the FLOPs")
  cae = "mae_jax, CAE-B (pixel targets)"
  if cae in step:
    lines.append(f"CAE-B: {step[cae] / step[OURS]:.2f}x MAE-B's step time")
  return "\n".join(lines)


def tpu_table(results: list[dict]) -> str:
  lines = ["| step | GFLOP/img | memory/core (GiB) | fits | est. step (ms) | "
           "est. img/s/core | est. MFU | est. recipe (h) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in results:
    lines.append(
        f"| {r['label']} | {r['train_gflop_per_img']:.1f} | "
        f"{r['memory_total_gib']:.1f} | {'yes' if r['fits_hbm'] else 'NO'} | "
        f"{r['estimated_step_s'] * 1e3:.1f} | "
        f"{r['estimated_img_per_s_per_device']:.0f} | "
        f"{r['estimated_mfu']:.0%} | {r['estimated_recipe_hours']:.1f} |")
  return "\n".join(lines)


def op_share_table(results: list[dict]) -> str:
  """The steps' per-operation shares side by side, in the first step's
  order."""
  groups = list(results[0]["op_shares"])
  for r in results[1:]:
    groups += [g for g in r["op_shares"] if g not in groups]
  lines = ["| part of the step | " + " | ".join(r["label"] for r in results)
           + " |", "|---" * (len(results) + 1) + "|"]
  for group in groups:
    cells = [f"{r['op_shares'][group]:.1%}" if group in r["op_shares"]
             else "" for r in results]
    lines.append(f"| {group} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


ATTENTION_VARIANTS = Run("attention variants",
                         ("python", "benchmarks/tpu_attention_variants.py"))


def attention_variant_table(lines: list[dict]) -> str:
  """Estimated ms of each form (columns) of each layer (rows) on v3, then
  the whole steps with other forms and what became of the Pallas kernel."""
  timed = [l for l in lines if "estimated_ms" in l]
  variants = list(dict.fromkeys(l["variant"] for l in timed))
  layers = list(dict.fromkeys(l["layer"] for l in timed))
  ms = {(l["layer"], l["variant"]): l["estimated_ms"] for l in timed}
  table = ["| layer | " + " | ".join(v.replace("_", " ") for v in variants)
           + " |", "|---" * (len(variants) + 1) + "|"]
  table += [f"| {layer} | " + " | ".join(
      f"{ms[layer, v]:.3f}" if (layer, v) in ms else "" for v in variants)
            + " |" for layer in layers]
  for l in lines:
    if "estimated_step_ms" in l:
      table.append(f"{l['topology']} {l['step']}, attention "
                   f"{l['variant'].replace('_', ' ')}: "
                   f"{l['estimated_step_ms']:.1f} ms, "
                   f"{l['executed_gflop_per_img']:.1f} GFLOP/img executed")
    if "compiles" in l:
      outcome = (l["error"] if not l["compiles"] else
                 f"compiles; XLA's estimate {l['estimated_s']:.3g} s")
      table.append(f"{l['topology']} {l['layer']}, {l['variant']}: "
                   f"{outcome}")
  return "\n".join(table)


def input_pipeline(data_dir: str, rounds: int, small: bool,
                   timeout_s: float):
  """benchmarks/input_pipeline.py, printing its own lines and tables."""
  argv = [sys.executable, "benchmarks/input_pipeline.py",
          f"--data_dir={data_dir}", f"--rounds={rounds}"]
  if not os.path.isdir(data_dir):
    argv.append("--make_data")
  if small:
    argv += ["--num_images=64", "--batch_size=16", "--steps=2"]
  try:
    subprocess.run(argv, cwd=ROOT, check=True, timeout=timeout_s)
  except subprocess.TimeoutExpired as e:
    raise SystemExit(f"the input pipeline benchmark took over {timeout_s:.0f}"
                     " s (--timeout_s)") from e
  except subprocess.CalledProcessError as e:
    raise SystemExit(f"the input pipeline benchmark failed (exit "
                     f"{e.returncode}): {' '.join(argv)}") from e


def machine() -> str:
  """The CPU model and core count, kept with every run: the CPU figures (and
  mae_jax's ratio to PyTorch) depend on the CPU, its vector units and the
  matmul library each framework brings for it."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:  # not Linux
    pass
  return f"{model}, {os.cpu_count()} cores"


def main():
  parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
  # No default: all of it takes hours.
  parser.add_argument("--section", choices=("cpu", "tpu", "input", "all"),
                      required=True)
  parser.add_argument("--rounds", type=int, default=3,
                      help="interleaved rounds of the CPU runs")
  parser.add_argument("--small", action="store_true",
                      help="tiny settings, to check that everything runs")
  parser.add_argument("--timeout_s", type=float, default=3600,
                      help="longest one command may take")
  parser.add_argument("--input_data_dir", default="/tmp/bench_images",
                      help="the input section's data, made if missing")
  parser.add_argument("--out", default="benchmarks/results.jsonl",
                      help="every run's JSON line is appended here")
  args = parser.parse_args()
  if args.rounds < 1 or args.timeout_s <= 0:
    parser.error("--rounds must be at least 1 and --timeout_s positive")
  out_dir = os.path.dirname(os.path.join(ROOT, args.out))
  if not os.path.isdir(out_dir):
    parser.error(f"--out={args.out}: no directory {out_dir} to write into")
  started = time.strftime("%Y-%m-%d %H:%M:%S")
  with open(os.path.join(ROOT, args.out), "a", encoding="utf-8") as out:
    print(json.dumps({"run_all": vars(args), "started": started,
                      "machine": machine()}), file=out)
    if args.section in ("cpu", "all"):
      print(cpu_table(interleaved(cpu_runs(args.small), args.rounds,
                                  args.timeout_s, out)))
      print(matmul_table(keep(json_lines(
          cpu_matmul_run(args.rounds, args.small), args.timeout_s), out)))
      if not args.small:
        print(profile_table(keep(
            [run_once(CPU_STEP_PROFILE, args.timeout_s)], out)[0]))
        print(step_forms_table(keep(
            [run_once(STEP_FORMS, args.timeout_s)], out)[0]))
    if args.section in ("tpu", "all"):
      print(tpu_table(one_after_the_other(tpu_runs(args.small),
                                          args.timeout_s, out)))
      print(op_share_table(one_after_the_other(
          tpu_breakdown_runs(args.small), args.timeout_s, out)))
      patched, own = step_variant_runs(args.small)
      with tempfile.TemporaryDirectory() as scratch:
        variants = one_after_the_other(
            patched, args.timeout_s, out,
            cwd=scratch_clone_with_breakdown_patch(scratch))
      variants += one_after_the_other(own, args.timeout_s, out)
      print(step_variant_table(variants))
      if not args.small:
        print(attention_variant_table(keep(
            json_lines(ATTENTION_VARIANTS, args.timeout_s), out)))
    if args.section in ("input", "all"):
      input_pipeline(args.input_data_dir, args.rounds, args.small,
                     args.timeout_s)


if __name__ == "__main__":
  cli.run(main)
