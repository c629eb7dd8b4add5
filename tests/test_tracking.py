"""Metric writing (reasondistill.tracking): metrics.jsonl, TensorBoard events read back, report_to
validation, the clear error for a missing optional tracker, and real offline wandb / local trackio
runs where those optional extras are installed. Nothing here touches the network."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from reasondistill.config import ConfigError, TrainConfig
from reasondistill.tracking import MetricsWriter, validate_report_to

# two logged steps: a string and non-finite values go to metrics.jsonl but never to a tracker
STEPS = [(0, {"loss": 0.5, "lr": 1e-3, "tokens": 96, "note": "warmup"}),
         (1, {"loss": 0.25, "lr": 5e-4, "tokens": 80, "grad_norm": float("nan"), "kl": float("inf")})]
ROOT = Path(__file__).resolve().parents[1]
PLOTTED = {"loss": [0.5, 0.25], "lr": [1e-3, 5e-4], "tokens": [96, 80]}


def _run(tmp_path, report_to, is_main=True, **kw):
    """Log STEPS through a MetricsWriter into tmp_path/<name>; returns (output dir, resolved config)."""
    out = tmp_path / kw.pop("name", "run")
    out.mkdir()
    cfg = TrainConfig(output_dir=str(out), report_to=report_to)
    writer = MetricsWriter(cfg, is_main, config=dataclasses.asdict(cfg), **kw)
    for step, metrics in STEPS:
        writer.write(step, metrics)
    writer.close()
    writer.close()  # a second close is harmless (the engine closes in a finally block)
    return out, cfg


def _jsonl(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_validate_report_to():
    assert validate_report_to("tensorboard") == ["tensorboard"]
    assert validate_report_to(" TensorBoard , wandb,trackio,wandb,") == ["tensorboard", "wandb", "trackio"]
    assert validate_report_to("none") == []
    assert validate_report_to(TrainConfig().report_to) == ["tensorboard"]  # the default needs no extra


@pytest.mark.parametrize("value", ["mlflow", "tensorboard,wnadb"])
def test_unknown_tracker_is_a_config_error_listing_the_valid_names(value, tmp_path):
    bad = value.split(",")[-1]
    for check in (lambda: validate_report_to(value),
                  lambda: MetricsWriter(TrainConfig(output_dir=str(tmp_path), report_to=value), True)):
        with pytest.raises(ConfigError, match="report_to") as e:
            check()
        assert repr(bad) in str(e.value)
        assert all(name in str(e.value) for name in ("tensorboard", "wandb", "trackio", "none"))
    assert list(tmp_path.iterdir()) == []  # refused before writing anything


@pytest.mark.parametrize("value", ["", " , ", "none,wandb"])
def test_empty_or_contradictory_report_to_is_refused(value):
    with pytest.raises(ConfigError, match="none alone"):
        validate_report_to(value)


def test_metrics_jsonl_and_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = _run(tmp_path, "tensorboard")
    rows = _jsonl(out)
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0] == {"step": 0, **STEPS[0][1]}
    assert rows[1]["loss"] == 0.25 and rows[1]["grad_norm"] != rows[1]["grad_norm"]  # NaN kept in the log
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(PLOTTED)  # no string, NaN or inf tags
    for tag, values in PLOTTED.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [0, 1]
        assert [s.value for s in scalars] == pytest.approx(values, rel=1e-6)  # stored as float32


def test_none_writes_only_metrics_jsonl(tmp_path):
    out, _ = _run(tmp_path, "none")
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]
    assert len(_jsonl(out)) == 2


def test_other_processes_write_nothing(tmp_path):
    out, _ = _run(tmp_path, "tensorboard", is_main=False)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_missing_optional_tracker_names_the_package_and_the_install_line(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # makes `import <name>` fail even where it is installed
    for is_main in (True, False):  # every process fails, not only the one that would log
        cfg = TrainConfig(output_dir=str(tmp_path), report_to=f"tensorboard,{name}")
        with pytest.raises(ConfigError) as e:
            MetricsWriter(cfg, is_main)
        msg = str(e.value)
        assert "report_to" in msg and f"{name!r}" in msg and f"pip install 'reasondistill[{name}]'" in msg
    assert list(tmp_path.iterdir()) == []  # raised before TensorBoard or any tracker started


def _wandb_records(path):
    """Decode a wandb transaction log (.wandb): a 7-byte file header, then 32 KiB blocks of chunks,
    each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) holding
    serialized ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        parts = (b"" if kind in (1, 2) else parts) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def test_wandb_offline_run_holds_the_logged_values(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is the optional extra: pip install 'reasondistill[wandb]'")
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "wandb_config"),
                     ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")  # writes the run locally; nothing is sent
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "rd-test")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    try:
        out, cfg = _run(tmp_path, "wandb", name="gkd-run")
    finally:
        wandb.teardown()  # stop the background service and forget the settings read from the env
    assert len(_jsonl(out)) == 2
    [log] = (tmp_path / "wandb_dir").glob("wandb/offline-run-*/run-*.wandb")
    records = list(_wandb_records(log))
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("rd-test", "gkd-run")
    stored = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") in ("run", "config")
              for item in (r.run.config if r.HasField("run") else r.config).update}
    assert stored["learning_rate"] == cfg.learning_rate and stored["report_to"] == "wandb"
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [0, 1]
    for tag, values in PLOTTED.items():
        assert [h[tag] for h in history] == values
    assert not any(k in h for h in history for k in ("note", "grad_norm", "kl"))


def test_trackio_local_run_holds_the_logged_values(tmp_path):
    pytest.importorskip("trackio", reason="trackio is the optional extra: pip install 'reasondistill[trackio]'")
    # trackio reads TRACKIO_DIR (its local SQLite store) when first imported, so the run goes in a
    # fresh process that sees it
    child = ("import sys, tests.test_tracking as t; from pathlib import Path; "
             "t._run(Path(sys.argv[1]), 'trackio', name='gkd-run')")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "TRACKIO_PROJECT": "rd-test",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", child, str(tmp_path)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(_jsonl(tmp_path / "gkd-run")) == 2
    db = sqlite3.connect(tmp_path / "trackio" / "rd-test.db")
    rows = db.execute("SELECT run_name, step, metrics FROM metrics ORDER BY step").fetchall()
    assert [(name, step) for name, step, _ in rows] == [("gkd-run", 0), ("gkd-run", 1)]
    logged = [json.loads(m) for _, _, m in rows]
    assert {tag: [m[tag] for m in logged] for tag in PLOTTED} == PLOTTED
    assert not any(k in m for m in logged for k in ("note", "grad_norm", "kl"))
    [(stored,)] = db.execute("SELECT config FROM configs WHERE run_name = 'gkd-run'").fetchall()
    stored = json.loads(stored)
    assert stored["learning_rate"] == TrainConfig().learning_rate and "allow_val_change" not in stored
    db.close()
