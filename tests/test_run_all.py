import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))
import run_all  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_default_malloc_runs_opt_out_of_the_reexec_and_drop_tunables(
    monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
  plain = run_all.Run("x", ("python", "a.py"), huge_pages=False)
  env = plain.environment()
  assert "GLIBC_TUNABLES" not in env and env["MAE_JAX_NO_REEXEC"] == "1"
  assert plain.command_line() == "MAE_JAX_NO_REEXEC=1 python a.py"
  huge = run_all.Run("x", ("python", "a.py")).environment()
  assert huge["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_every_cpu_figure_of_the_table_has_a_run():
  labels = [run.label for run in run_all.cpu_runs(small=True)]
  steps = dict(zip(labels, (4.0, 3.0, 4.0, 3.6, 9.0, 3.6)))
  # Two rounds: PyTorch's faster malloc differs between them.
  torch_rounds = {"PyTorch, glibc default malloc": (4.0, 3.3),
                  "PyTorch, glibc.malloc.hugetlb=1": (3.6, 3.6)}
  rows = {label: [{"step_s_median": torch_rounds.get(label, (s, s))[r],
                   "batch": 8, "mfu": 0.5, "train_gflop_per_img": 59.0,
                   "minor_page_faults_per_step": 1000.0 * (r + 1),
                   "kernel_s_per_step": 0.1}
                  for r in range(2)] for label, s in steps.items()}
  for row in rows["mae_jax, encoder with mask tokens"]:
    row["train_gflop_per_img"] = 177.0
  table = run_all.cpu_table(rows)
  # PyTorch's medians: 3.65 s (default), 3.6 s (hugetlb, the faster).
  assert ("| mae_jax, glibc.malloc.hugetlb=1 | 3.00 | 2.67 | 0.50 | 1,500 | "
          "0.10 | 1.20x | 1.20x |") in table
  # The default-malloc row: PyTorch's default-malloc median is 3.65 s.
  assert "| mae_jax, glibc default malloc | 4.00 | 2.00 | 0.50 | 1,500 | " \
         "0.10 | 0.91x | 0.90x |" in table
  assert "faster malloc (3.60 s)" in table
  assert "by round: 1.20x, 1.10x" in table
  assert "3.00x the step time, 3.00x the FLOPs" in table
  assert "CAE-B: 1.20x MAE-B's step time" in table


def test_the_cpu_table_leaves_blank_what_a_run_did_not_record():
  labels = [run.label for run in run_all.cpu_runs(small=True)]
  rows = {label: [{"step_s_median": 3.0, "batch": 8,
                   "train_gflop_per_img": 59.0}] for label in labels}
  assert "| PyTorch, glibc default malloc | 3.00 | 2.67 |  |  |  | 1.00x |" in (
      run_all.cpu_table(rows))


def test_tpu_runs_cover_the_issues_figures():
  labels = " ".join(run.label for run in run_all.tpu_runs(small=False))
  for size in ("base", "large", "huge"):
    assert f"MAE {size} pretraining, remat" in labels
    assert f"MAE {size} pretraining, stock Flax" in labels
    assert f"{size} fine-tuning" in labels
  assert "CAE base pretraining" in labels and "mask tokens" in labels


def test_the_step_breakdown_patch_still_applies_to_the_trainer():
  """BENCHMARKS.md's variants of the TPU step are made by applying this
  patch in a scratch clone; it must keep applying as train.py changes."""
  root = run_all.ROOT
  if not os.path.isdir(os.path.join(root, ".git")):
    pytest.skip("not a git checkout")
  done = subprocess.run(
      ["git", "apply", "--check", "benchmarks/tpu_step_breakdown.patch"],
      cwd=root, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr


def test_the_op_share_table_puts_the_steps_side_by_side():
  runs = run_all.tpu_breakdown_runs(small=False)
  assert [run.label for run in runs] == ["MAE base pretraining",
                                         "MAE large pretraining"]
  assert all("benchmarks/tpu_op_breakdown.py" in run.argv for run in runs)
  table = run_all.op_share_table([
      {"label": "B", "op_shares": {"MLP": 0.6, "attention": 0.4}},
      {"label": "L", "op_shares": {"attention": 0.3, "MLP": 0.5,
                                   "update": 0.2}}])
  assert table.splitlines() == [
      "| part of the step | B | L |", "|---|---|---|",
      "| MLP | 60.0% | 50.0% |", "| attention | 40.0% | 30.0% |",
      "| update |  | 20.0% |"]


def test_the_attention_variant_table_has_a_row_per_layer():
  lines = [
      {"topology": "v3-8", "layer": "enc", "variant": "current",
       "estimated_ms": 1.0},
      {"topology": "v3-8", "layer": "enc", "variant": "two_images",
       "estimated_ms": 0.5},
      {"topology": "v3-8", "layer": "dec", "variant": "current",
       "estimated_ms": 2.0},
      {"topology": "v3-8", "layer": "dec", "variant": "pallas",
       "compiles": False, "error": "Mosaic failed"},
      {"topology": "v4-8", "layer": "dec", "variant": "pallas",
       "compiles": True, "estimated_s": -1.0},
      {"topology": "v3-8", "step": "MAE", "variant": "two_images",
       "estimated_step_ms": 61.94, "executed_gflop_per_img": 65.34}]
  assert run_all.attention_variant_table(lines).splitlines() == [
      "| layer | current | two images |", "|---|---|---|",
      "| enc | 1.000 | 0.500 |", "| dec | 2.000 |  |",
      "v3-8 dec, pallas: Mosaic failed",
      "v4-8 dec, pallas: compiles; XLA's estimate -1 s",
      "v3-8 MAE, attention two images: 61.9 ms, 65.3 GFLOP/img executed"]


def test_the_step_variants_run_the_patchs_switches_in_a_scratch_clone(
    tmp_path):
  patched, own = run_all.step_variant_runs(small=False)
  assert len(patched) == 2 * len(run_all.STEP_VARIANTS)
  assert patched[0].command_line() == (
      "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 BREAKDOWN_NO_ALLREDUCE=1 python "
      "-m mae_jax.benchmark --config=configs/mae_vit_base_pretrain.py "
      "--topology=v3-8 --pod=v3-128")
  assert patched[0].environment()["BREAKDOWN_NO_ALLREDUCE"] == "1"
  assert [run.argv[-1] for run in own] == ["--config.batch_size=8192"] * 2
  if not os.path.isdir(os.path.join(run_all.ROOT, ".git")):
    pytest.skip("not a git checkout")
  clone = run_all.scratch_clone_with_breakdown_patch(str(tmp_path))
  with open(os.path.join(clone, "mae_jax", "train.py"), encoding="utf-8") as f:
    assert "BREAKDOWN_NO_ALLREDUCE" in f.read()


def test_the_step_variant_table_has_a_row_per_variant():
  def result(label, ms, mfu):
    return {"label": label, "estimated_step_s": ms / 1e3,
            "estimated_mfu": mfu}
  table = run_all.step_variant_table([
      result("base: no all-reduce", 52.8, 0.58),
      result("large: no all-reduce", 104.1, 0.63),
      result("base: twice the images per core", 107.3, 0.57)])
  assert table.splitlines() == [
      "| variant | base est. step (ms) | base est. MFU | large est. step "
      "(ms) | large est. MFU |", "|---|---|---|---|---|",
      "| no all-reduce | 52.8 | 58% | 104.1 | 63% |",
      "| twice the images per core | 107.3 | 57% |  |  |"]


def test_every_json_line_of_a_run_is_kept_and_a_failure_ends_run_all():
  two = run_all.Run("two", ("python", "-c",
                            "print('{\"a\": 1}'); print('log'); "
                            "print('{\"a\": 2}')"))
  lines = run_all.json_lines(two, timeout_s=60)
  assert [line["a"] for line in lines] == [1, 2]
  assert lines[0]["label"] == "two" and "python -c" in lines[0]["command"]
  assert run_all.run_once(two, timeout_s=60)["a"] == 2
  failing = run_all.Run("failing", ("python", "-c", "raise SystemExit(3)"))
  with pytest.raises(SystemExit, match="failing failed \\(exit 3\\)"):
    run_all.json_lines(failing, timeout_s=60)


def test_the_machine_is_named_with_its_core_count():
  assert run_all.machine().endswith(f", {os.cpu_count()} cores")


def test_the_matmul_table_splits_the_lines_by_library():
  def line(library, rate):
    return {"label": "m", "library": library,
            "gflop_per_s": {"a, forward": rate}, "all_layers_gflop_per_s": rate}
  table = run_all.matmul_table([line("xla", 200), line("torch", 300),
                                line("xla", 100), line("torch", 250),
                                line("xla", 150), line("torch", 280)])
  assert "| all layers | 150 | 280 | 1.87x |" in table
  run = run_all.cpu_matmul_run(rounds=2, small=True)
  assert run.argv == ("python", "benchmarks/cpu_matmul.py", "--rounds=2",
                      "--repeats=1")


def test_the_profile_table_has_a_row_per_kind():
  table = run_all.profile_table({
      "step_s_median": 3.4, "seconds_per_step": {"matmuls": 2.8, "other": 0.6},
      "shares": {"matmuls": 0.82, "other": 0.18}})
  assert "| kind of operation (step: 3.40 s) | s per step | share |" in table
  assert "| matmuls | 2.80 | 82% |" in table
  assert "| other | 0.60 | 18% |" in table


def test_the_step_forms_table_has_a_row_per_form():
  table = run_all.step_forms_table({
      "rounds": 6,
      "step_s_median": {"state mapped": 3.5, "the trainer": 2.8},
      "trainer_speedup": {"state mapped": 1.25, "the trainer": 1.0},
      "state_copies": {"state mapped": 758, "the trainer": 254},
      "state_copy_gb_per_step": {"state mapped": 1.34, "the trainer": 0.45},
      "all_reduces": {"state mapped": 1, "the trainer": 0}})
  assert "median of 6 rounds" in table
  assert "| state mapped | 3.50 | 1.25x | 758 | 1.34 | 1 |" in table
  assert "| the trainer | 2.80 | 1.00x | 254 | 0.45 | 0 |" in table
  assert "cpu_step_forms.py" in " ".join(run_all.STEP_FORMS.argv)


@pytest.mark.parametrize("arguments, message", [
    ([], "the following arguments are required: --section"),
    (["--section=cpu", "--rounds=0"], "--rounds must be at least 1"),
    (["--section=cpu", "--out=no_such_dir/x.jsonl"],
     "--out=no_such_dir/x.jsonl: no directory"),
])
def test_bad_arguments_end_run_all_before_any_run(arguments, message):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, "benchmarks/run_all.py", *arguments],
                        cwd=root, capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == 2 and message in done.stderr
  assert "Traceback" not in done.stderr
