import pytest

from reasondistill.config import ConfigError, TrainConfig, build_config, describe, field_doc
from reasondistill.methods import get_method


def test_defaults_yaml_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 0.01\nmax_steps: 7\nbeta: 0.3\n")
    cfg = build_config(get_method("gkd").Config, y, ["max_steps=9", "seq_kd=true", "teacher=none"])
    assert cfg.learning_rate == 0.01 and cfg.max_steps == 9 and cfg.beta == 0.3 and cfg.seq_kd is True
    assert cfg.teacher is None


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_config(get_method("grpo").Config, overrides=["num_generation=4"])
    msg = str(e.value)
    assert "num_generation" in msg and "Did you mean num_generations" in msg and "learning_rate" in msg
    y = tmp_path / "c.yaml"
    y.write_text("max_steps: 3\nlearnin_rate: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: unknown config key 'learnin_rate'"):
        build_config(TrainConfig, y)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="max_steps='ten' is not a valid int"):
        build_config(TrainConfig, overrides=["max_steps=ten"])
    with pytest.raises(ValueError, match="lmbda must be in"):
        build_config(get_method("gkd").Config, overrides=["lmbda=2"])
    with pytest.raises(ValueError, match="loss_type"):
        build_config(get_method("grpo").Config, overrides=["loss_type=ppo"])


def test_every_field_is_documented():
    for name in ("sft", "kd", "gkd", "grpo"):
        cls = get_method(name).Config
        text = describe(cls)
        for f in cls.__dataclass_fields__:
            assert field_doc(cls, f), f"{name}.{f} has no docstring"
        assert "learning_rate" in text


def test_yaml_values_are_type_checked(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("max_steps: 2.5\n")
    with pytest.raises(ConfigError, match=r"c.yaml:1: max_steps=2.5 is not a valid int"):
        build_config(TrainConfig, y)
    y.write_text("learning_rate: 1\nteacher: null\nresume: true\n")
    cfg = build_config(TrainConfig, y)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float) and cfg.teacher is None and cfg.resume


def test_shared_fields_are_checked_and_yaml_no_stays_a_word(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("mixed_precision: no\n")
    assert build_config(TrainConfig, y).mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision must be no or bf16"):
        build_config(TrainConfig, overrides=["mixed_precision=fp16"])
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        build_config(TrainConfig, overrides=["max_steps=0"])


def test_shipped_configs_parse():
    """The shipped GRPO config builds with the values its comment promises."""
    from pathlib import Path

    cfg = build_config(get_method("grpo").Config, Path(__file__).resolve().parents[1] / "configs" / "grpo_embedded.yaml")
    assert cfg.num_generations == 8 and cfg.per_device_train_batch_size == 32 and cfg.learning_rate == 1e-4


def test_min_lr_ratio_without_a_decay_is_refused():
    """A floor on a schedule that never decays would be silently ignored."""
    with pytest.raises(ConfigError, match="min_lr_ratio=0.1 .* lr_scheduler_type=constant never decays"):
        build_config(TrainConfig, overrides=["lr_scheduler_type=constant", "min_lr_ratio=0.1"])
    assert build_config(TrainConfig, overrides=["lr_scheduler_type=cosine", "min_lr_ratio=0.1"]).min_lr_ratio == 0.1


def test_every_shipped_compare_config_builds_every_run():
    """Each configs/*.yaml with ``runs:`` loads, and its bootstrap and every run build a valid
    method config (what ``reasondistill compare`` checks before it trains anything)."""
    from pathlib import Path

    import yaml

    from reasondistill.pipelines import compare

    found = 0
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        if "runs" not in (yaml.safe_load(path.read_text()) or {}):
            continue
        cfg = compare.load_config(path)
        common = dict(cfg["common"])
        if cfg["bootstrap"] is not None:
            b = dict(cfg["bootstrap"])
            compare._build_run_config({"name": "bootstrap", "method": b.pop("method"), "overrides": b}, common,
                                      Path("boot"))
        for run in cfg["runs"]:
            compare._build_run_config(run, common, Path("run"))
        found += 1
    assert found >= 5
