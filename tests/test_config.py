"""Config loading: YAML includes, dotted overrides, and load-time errors that name the key and what is allowed."""
import dataclasses
import re

import pytest

from nucleotron.configs import ConfigError, NucleotronConfig, load_config, to_yaml

TINY = "configs/models/tiny.yaml"


def write(path, text):
    path.write_text(text)
    return path


def test_yaml_values_land_in_typed_dataclasses():
    cfg = load_config(TINY)
    assert isinstance(cfg, NucleotronConfig)
    assert dataclasses.is_dataclass(cfg.model.gengram)
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.gengram.layers) == (4, 64, [2])
    assert cfg.optim.lr == NucleotronConfig().optim.lr  # untouched sections keep the schema defaults


def test_includes_then_file_then_overrides(tmp_path):
    base = write(tmp_path / "base.yaml", "model:\n  hidden_size: 32\n  num_layers: 2\noptim:\n  lr: 1.0e-3\n")
    exp = write(tmp_path / "exp.yaml", "defaults: [base.yaml]\noptim:\n  lr: 2.0e-3\nrun:\n  name: exp1\n")
    cfg = load_config(exp, ["optim.lr=3e-4", "model.gengram.window=15", "model.gengram.layers=[1,2]"])
    assert cfg.model.hidden_size == 32  # from the include
    assert cfg.optim.lr == 3e-4  # override beats file beats include
    assert cfg.model.gengram.window == 15 and cfg.model.gengram.layers == [1, 2]
    assert cfg.run.dir == "runs/exp1"  # run.dir defaults to runs/<run.name>


def test_null_window_means_no_window_mode():
    assert load_config(TINY, ["model.gengram.window=null"]).model.gengram.window is None


def test_resolved_yaml_loads_back_identically(tmp_path):
    cfg = load_config(TINY, ["optim.lr=5e-4", "run.name=roundtrip"])
    saved = write(tmp_path / "config.yaml", to_yaml(cfg))
    assert load_config(saved) == cfg


def test_unknown_key_in_file_names_file_key_and_allowed(tmp_path):
    bad = write(tmp_path / "bad.yaml", "model:\n  hiden_size: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert str(bad) in msg and "unknown key 'model.hiden_size'" in msg
    assert "did you mean 'model.hidden_size'" in msg and "num_attention_heads" in msg


def test_unknown_key_in_override_names_the_override():
    with pytest.raises(ConfigError, match=r"command-line override 'optim.lrr=1': unknown key 'optim.lrr'"):
        load_config(TINY, ["optim.lrr=1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"bad value for 'model.hidden_size'.*'abc'"):
        load_config(TINY, ["model.hidden_size=abc"])


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match=r"override 'optim.lr' must look like section.key=value"):
        load_config(TINY, ["optim.lr"])


@pytest.mark.parametrize("overrides, expected", [
    (["parallel.tensor=3"], "model.num_attention_heads=4 is not divisible by parallel.tensor=3"),
    (["model.num_query_groups=3"], "model.num_query_groups=3 must divide model.num_attention_heads=4"),
    (["parallel.tensor=4"], "model.num_query_groups=2 is not divisible by parallel.tensor=4"),
    (["model.moe.num_experts=6", "parallel.expert=4"], "model.moe.num_experts=6 is not divisible by parallel.expert=4"),
    (["parallel.expert=2"], "parallel.expert=2 needs a MoE model"),
    (["model.moe.num_experts=4", "model.moe.top_k=5"], "model.moe.top_k=5 must be between 1 and model.moe.num_experts=4"),
    (["parallel.context=3"], "data.seq_len=256 is not divisible by 2*parallel.context=6"),
    (["parallel.pipeline=3"], "model.num_layers=4 is not divisible by parallel.pipeline=3"),
    (["model.gengram.layers=[0,5]"], "model.gengram.layers has [0, 5]: layers are 1-based and must lie in 1..4"),
    (["model.gengram.orders=[1,7]"], "model.gengram.orders=[1, 7] must be distinct k-mer orders in 1..6"),
    (["model.gengram.window=0"], "model.gengram.window=0 must be >= 1, or null for no-window mode"),
    (["model.attention_backend=cudnn"], "model.attention_backend='cudnn' is not one of: auto, flash, sdpa, local"),
    (["parallel.sequence_parallel=true"], "parallel.sequence_parallel=true needs parallel.tensor > 1"),
    (["train.global_batch_size=5"], "train.global_batch_size=5 is not divisible by train.micro_batch_size=2"),
    (["model.hidden_size=0"], "model.hidden_size=0 must be a positive integer"),
    (["data.soft_masked_loss_weight=-0.1"], "data.soft_masked_loss_weight=-0.1 must be a finite number in [0, 1]"),
    (["data.verify=none"], "data.verify='none' is not one of: sampled, full"),
])
def test_invalid_values_fail_at_load_naming_key(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, overrides)
    assert expected in str(err.value)
    assert str(err.value).startswith(TINY)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["parallel.tensor=3", "parallel.pipeline=3"])
    assert len(re.findall(r"^  - ", str(err.value), flags=re.M)) >= 3


def test_missing_file_and_include_cycle(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")
    write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path / "b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_non_mapping_yaml_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=inf", "optim.lr=inf must be a finite number > 0"),
    ("optim.lr=nan", "optim.lr=nan must be a finite number > 0"),
    ("optim.lr=0", "optim.lr=0.0 must be a finite number > 0"),
    ("optim.min_lr=-1e-5", "optim.min_lr=-1e-05 must be a finite number >= 0"),
    ("optim.min_lr=nan", "optim.min_lr=nan must be a finite number >= 0"),
    ("optim.min_lr=1", "optim.min_lr=1.0 must not exceed optim.lr=0.0001"),
    ("optim.adam_beta1=1", "optim.adam_beta1=1.0 must be a finite number in [0, 1)"),
    ("optim.adam_beta2=-0.1", "optim.adam_beta2=-0.1 must be a finite number in [0, 1)"),
    ("optim.adam_eps=0", "optim.adam_eps=0.0 must be a finite number > 0"),
    ("optim.weight_decay=inf", "optim.weight_decay=inf must be a finite number >= 0"),
    ("optim.clip_grad=nan", "optim.clip_grad=nan must be a finite number >= 0"),
    ("train.loss_spike_factor=1", "train.loss_spike_factor=1.0 must be a finite number > 1 (or null)"),
    ("train.loss_spike_factor=inf", "train.loss_spike_factor=inf must be a finite number > 1 (or null)"),
    ("train.peak_tflops=nan", "train.peak_tflops=nan must be a finite number > 0 (or null)"),
    ("model.norm_eps=0", "model.norm_eps=0.0 must be a finite number > 0"),
    ("model.init_std=-0.01", "model.init_std=-0.01 must be a finite number > 0"),
    ("model.rope_base=nan", "model.rope_base=nan must be a finite number > 0"),
    ("model.gengram.table_lr_mult=inf", "model.gengram.table_lr_mult=inf must be a finite number > 0"),
    ("model.moe.aux_loss_coeff=-1", "model.moe.aux_loss_coeff=-1.0 must be a finite number >= 0"),
    ("model.moe.z_loss_coeff=nan", "model.moe.z_loss_coeff=nan must be a finite number >= 0"),
    ("model.kv_channels=0", "model.kv_channels=0 must be positive (or null)"),
    ("model.mla.kv_lora_rank=0", "model.mla.kv_lora_rank=0 must be a positive integer"),
    ("data.num_workers=-1", "data.num_workers=-1 must be a finite number >= 0"),
    ("data.soft_masked_loss_weight=1.5", "data.soft_masked_loss_weight=1.5 must be a finite number in [0, 1]"),
    ("schedule.warmup_fraction=nan", "schedule.warmup_fraction=nan must be a finite number in [0, 1]"),
    ("schedule.decay_fraction=-0.1", "schedule.decay_fraction=-0.1 must be a finite number in [0, 1]"),
    ("schedule.warmup_fraction=0.5", "schedule.warmup_fraction=0.5 and schedule.decay_fraction=0.8 must add up to "
                                     "at most 1"),
])
def test_numeric_settings_must_be_finite_and_in_range(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert expected in str(err.value), str(err.value)


def test_numeric_edges_that_are_allowed_still_load():
    cfg = load_config(TINY, ["optim.min_lr=0", "optim.adam_beta1=0", "optim.weight_decay=0", "optim.clip_grad=0",
                             "data.num_workers=0", "data.soft_masked_loss_weight=0", "train.loss_spike_factor=null",
                             "schedule.warmup_fraction=0.2", "data.verify=full"])
    assert (cfg.optim.min_lr, cfg.data.verify) == (0.0, "full")
