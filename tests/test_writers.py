import json

from mae_jax import writers


def test_jsonl_writer_appends_one_object_per_summary(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  writer = writers.JsonlWriter(path)
  writer.write_scalars(1, {"train/loss": 2.5, "train/lr": 0.0})
  writer.close()
  writer = writers.JsonlWriter(path)  # a resumed run appends
  writer.write_scalars(2, {"train/loss": 1.5})
  writer.close()
  with open(path) as f:
    records = [json.loads(line) for line in f]
  assert records == [{"step": 1, "train/loss": 2.5, "train/lr": 0.0},
                     {"step": 2, "train/loss": 1.5}]


def test_create_writer_writes_metrics_jsonl_on_process_zero(tmp_path):
  writer = writers.create_writer(str(tmp_path))
  writer.write_scalars(3, {"train/loss": 1.0})
  writer.close()
  with open(tmp_path / "metrics.jsonl") as f:
    assert json.loads(f.read()) == {"step": 3, "train/loss": 1.0}
