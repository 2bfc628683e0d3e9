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


def test_a_resumed_run_drops_the_rows_it_writes_again(tmp_path):
  # Killed at step 5 after its checkpoint at step 3: steps 4 and 5 are
  # replayed by the resumed run. The last line was cut short by the kill.
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n"
                          for s in range(1, 6)) + '{"step": 6, "tr')
  writer = writers.JsonlWriter(str(path), resumed_at=3)
  writer.write_scalars(4, {"train/loss": 0.5})
  writer.close()
  with open(path) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]


def test_an_object_store_file_is_rewritten_without_the_replayed_rows(
    tmp_path, monkeypatch):
  # gs:// cannot append: the writer keeps the lines and rewrites the file.
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
  monkeypatch.setattr(writers, "_can_append", lambda path: False)
  writer = writers.JsonlWriter(str(path), resumed_at=1)
  writer.write_scalars(2, {"train/loss": 0.5})
  writer.close()
  with open(path) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2]
