"""K seeds packed into one network (models/packed.py) train exactly as K separate runs (what `bench --pack`
reports of them: tests/bench/test_measure.py)."""

import contextlib
import copy

import torch

from resbench.data.batches import TrainBatches
from resbench.models import packed
from resbench.models.resnet import resnet
from resbench.settings.config import TrainConfig
from resbench.train.lossscale import ConstantLossScale
from resbench.train.step import train_step

K = 3


CFG = TrainConfig(optim_momentum=0.9, optim_weight_decay=0.01)


def perturbed_models(k: int, depth: int = 8, num_classes: int = 10) -> list[torch.nn.Module]:
    """K differently seeded models, nudged off the zero-init layers so every gradient path is live."""
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        model = resnet(depth, num_classes=num_classes)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        models.append(model.to(memory_format=torch.channels_last))
    return models


def toy_batches(k: int) -> list[TrainBatches]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 32, 32, 3), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (96,), generator=gen)
    return [TrainBatches(images, labels, batch_size=32, seed=100 + i) for i in range(k)]


def test_pack_then_unpack_gives_back_every_model_exactly():
    models = perturbed_models(K)
    for model in models:  # non-trivial running statistics too
        model(torch.rand(8, 3, 32, 32))
    copies = packed.unpack(packed.pack(models), resnet(8), K)
    for model, state in zip(models, copies):
        assert state.keys() == model.state_dict().keys()
        for key, tensor in model.state_dict().items():
            assert torch.equal(state[key], tensor), key


def test_packed_logits_are_each_models_own():
    models = [m.eval() for m in perturbed_models(K)]
    net = packed.pack(models).eval()
    images = [torch.rand(4, 3, 32, 32) for _ in range(K)]
    logits = net(packed.packed_input(images))
    for i, model in enumerate(models):
        torch.testing.assert_close(logits[:, i], model(images[i]), rtol=0, atol=1e-5)


def test_each_packed_run_trains_as_it_would_alone():
    """Own weights, own BN statistics, own data order and augmentation: after 4 SGD steps (weight
    decay and momentum on) every copy equals the same run trained alone, within float tolerance."""
    alone = perturbed_models(K)
    net = packed.pack(copy.deepcopy(alone))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9, weight_decay=0.01) for m in alone]
    packed_optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9, weight_decay=0.01)
    scaler = ConstantLossScale("cpu", enabled=False)
    batches = toy_batches(K)
    for step in range(4):
        pairs = [b.batch(step) for b in batches]
        for model, optimizer, (x, y) in zip(alone, optimizers, pairs):
            train_step(model, optimizer, scaler, x, y, 0.1, CFG, contextlib.nullcontext())
        packed.packed_step(net, packed_optimizer, [x for x, _ in pairs], [y for _, y in pairs], 0.1,
                           CFG.optim_label_smoothing, contextlib.nullcontext())
    for model, state in zip(alone, packed.unpack(net, resnet(8), K)):
        for key, tensor in model.state_dict().items():
            torch.testing.assert_close(state[key], tensor, rtol=0, atol=2e-5, msg=key)


def test_runs_that_decide_per_run_are_not_packed():
    assert packed.packable("fp32", global_clipping=1.0)
    assert packed.packable("fp16")
    assert packed.packable("fp32", bn_groups=2)
    assert packed.packable("bf16") is None
