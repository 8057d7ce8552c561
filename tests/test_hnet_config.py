"""model.arch=hnet configs: the shipped presets load and build; bad settings fail at load with one line naming the
key and what is allowed."""
import pytest
import torch

from nucleotron.configs import ConfigError
from nucleotron.configs.loader import load_config
from nucleotron.model.hnet import HNetLM

PRESETS = ["dnahnet-tiny", "dnahnet-1stage", "dnahnet-2stage-32", "dnahnet-2stage-22"]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_build(name):
    cfg = load_config(f"configs/models/{name}.yaml")
    assert cfg.model.arch == "hnet"
    with torch.device("meta"):
        model = HNetLM(cfg.model.hnet, cfg.model.vocab_size)
    assert len(model.stages()) == len(cfg.model.hnet.target_ratios) + 1


@pytest.mark.parametrize("override, message", [
    ("model.hnet.layout=[m4,[T2,m4],m4]", "model.hnet.layout[1]: expected [encoder, [inner...], decoder] or [main]"),
    ("model.hnet.d_model=[32,48]", "model.hnet.d_model=[32, 48] needs one value per stage (3 for layout"),
    ("model.hnet.target_ratios=[3,1]", "model.hnet.target_ratios=[3.0, 1.0] needs one ratio > 1 per routing stage"),
    ("model.hnet.d_model=[32,48,40]", "model.hnet.d_model=[32, 48, 40] must not shrink inward (stage 2)"),
    ("model.hnet.num_heads=[2,5,4]", "model.hnet.num_heads[1]=5 must divide model.hnet.d_model[1]=48"),
    ("model.hnet.d_intermediate=[0,0,128]", "model.hnet.d_intermediate[1]=0 must be positive: stage 1 has upper-case"),
    ("parallel.tensor=2", "model.arch=hnet trains data-parallel through DeepSpeed ZeRO: set parallel.tensor"),
    ("parallel.zero_stage=4", "parallel.zero_stage=4 is not one of: 0, 1, 2, 3"),
    ("model.arch=mamba", "model.arch='mamba' is not one of: gpt, hnet"),
])
def test_bad_hnet_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("configs/models/dnahnet-tiny.yaml", [override])
    assert message in str(err.value)
