"""Whether a model fits before it is built (device/memory.py): the memory need follows the built network,
and a model too big is one line at once."""

import re

import pytest
import torch

from resbench.cli.main import main
from resbench.device import memory
from resbench.models.resnet import count_parameters, resnet
from resbench.settings.config import ConfigError, TrainConfig
from resbench.train.checks import validate_config


@pytest.mark.parametrize("depth, width, image_size", [(8, 3, 32), (14, 2, 64), (18, 1, 32), (50, 2, 32)])
def test_the_memory_need_follows_the_built_network(depth, width, image_size):
    params, outputs = memory.network_size(depth, width, 10, image_size)
    model = resnet(depth, width, 10, image_size)
    assert params == count_parameters(model)
    counted = []
    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(lambda m, i, o: counted.append(o.numel()))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    assert outputs == sum(counted)


def test_what_fits_is_decided_per_depth_against_the_device(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: (8 * 2**30, "this machine has available"))
    validate_config(TrainConfig(resnet_depth=8, resnet_width=16, device="cpu"))  # needs 1.6 GiB: fits
    with pytest.raises(ConfigError, match=r"training --resnet_depth 152 --resnet_width 16 \([\d,]+ parameters, with "
                                          r"gradients, momentum and the activations of 256 images per process\) needs "
                                          r"at least [\d.]+ GiB, more than the 8.0 GiB this machine has available; "
                                          r"train it where there is more memory \(a GPU node; a sweep for a cluster, --launcher "
                                          r"slurm\|ray, plans without this machine's\), or with a smaller --resnet_width, "
                                          r"--resnet_depth or --batch_size \(another run than the recipe's\)"):
        validate_config(TrainConfig(resnet_depth=152, resnet_width=16, device="cpu"))
    validate_config(TrainConfig(resnet_depth=152, resnet_width=1, batch_size=16, device="cpu"))


def test_a_model_too_big_for_any_machine_is_one_line_at_once(capsys):
    assert main(["train", "--resnet_depth", "152", "--resnet_width", "64", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    params, _ = memory.network_size(152, 64, 10, 32)  # 1.2e11 since Bottlenecks widen their inner convolutions only
    assert f"({params:,} parameters" in err and re.search(r"needs at least 1\d{3}\.\d GiB, more than", err), err
