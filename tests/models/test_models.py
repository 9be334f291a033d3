import math

import pytest
import torch

from resbench.data.facts import DATASETS, IMPORT_SIZES
from resbench.models.resnet import IMAGE_SIZES, BasicBlock, Bottleneck, count_parameters, resnet
from resbench.results.reference import imagenet_rows, reference_rows


@pytest.mark.parametrize("row", reference_rows(), ids=lambda r: f"{r.data_name}-R{r.depth}x{r.width}-{r.precision}")
def test_parameter_count_matches_reference(row):
    spec = DATASETS[row.data_name]
    with torch.device("meta"):  # shapes only: a count needs no initialised weights
        model = resnet(row.depth, row.width, spec.num_classes, spec.image_size)
    assert count_parameters(model) == row.params


def test_the_image_sizes_data_imports_are_those_the_networks_take():
    """Spelled on two floors side by side (data and models import neither the other): kept equal here."""
    assert IMPORT_SIZES == IMAGE_SIZES
    assert all(spec.image_size in IMAGE_SIZES for spec in DATASETS.values())


def test_all_26_rows_are_checked():
    assert len(reference_rows()) == 26


@pytest.mark.parametrize("depth, params", [(18, 11_680_832), (34, 21_788_992), (50, 25_548_352)])
def test_the_imagenet_rows_counts_at_1000_classes(depth, params):
    """imagenet-x.md's exact counts (the same at 32 and 64 px: the head pools globally); on the meta device."""
    assert {row.params for row in imagenet_rows() if row.depth == depth} == {params}
    for image_size in (32, 64):
        with torch.device("meta"):
            model = resnet(depth, 1, num_classes=1000, image_size=image_size)
        assert count_parameters(model) == params


@pytest.mark.parametrize("width, params", [(1, 23_520_832), (2, 66_847_040)])
def test_bottleneck_width_widens_the_inner_convolutions_only(width, params):
    """The reference's depth-50 counts (10 classes): as torchvision's resnet50 and wide_resnet50_2 with
    a 3×3 stem and a 10-class bias-free head. Each block's output keeps 4 × base planes. (Built on the meta
    device: shapes only, without initialising 67 million weights.)"""
    with torch.device("meta"):
        model = resnet(50, width, num_classes=10)
    assert count_parameters(model) == params
    for block in [m for m in model.modules() if isinstance(m, Bottleneck)]:
        assert block.conv2[0].out_channels == width * block.conv3[0].out_channels // 4


@pytest.mark.parametrize("depth", [8, 20, 110, 18, 34, 50])
def test_forward_shapes(depth):
    model = resnet(depth, 1, num_classes=7, image_size=64).eval()
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("depth", [0, 19, 21, 100])
def test_unsupported_depth_is_refused(depth):
    with pytest.raises(ValueError, match="unsupported resnet depth"):
        resnet(depth)


@pytest.mark.parametrize("depth", [20, 50])
def test_zero_init_residual_and_zero_classifier(depth):
    model = resnet(depth)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks
    for block in blocks:
        assert torch.all(block.last_bn().weight == 0)
        for bn in [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d) and m is not block.last_bn()]:
            assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert model.fc.bias is None and torch.all(model.fc.weight == 0)
    # A freshly built network is the identity function at every block: every output is 0 logits.
    assert torch.all(model.eval()(torch.rand(2, 3, 32, 32)) == 0)


def test_convs_are_he_normal_without_bias():
    torch.manual_seed(0)
    model = resnet(18)
    for conv in [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]:
        assert conv.bias is None
        fan_in = conv.weight[0].numel()
        if conv.weight.numel() >= 20_000:
            std = conv.weight.std().item()
            assert std == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
            assert conv.weight.abs().max().item() <= 2 * math.sqrt(2 / fan_in) / 0.8796 + 1e-6  # truncated at 2σ


def test_batchnorm_settings():
    for bn in [m for m in resnet(20).modules() if isinstance(m, torch.nn.BatchNorm2d)]:
        assert bn.eps == 1e-5 and bn.momentum == 0.1


def model_with_a_nonzero_head() -> torch.nn.Module:
    torch.manual_seed(0)
    model = resnet(8)
    torch.nn.init.normal_(model.fc.weight)  # zero-initialised, it would give 0 logits in any dtype
    return model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_head_computes_in_float32_under_autocast(dtype):
    """As the reference's Dense layer: low-precision features, upcast, times float32 weights."""
    model = model_with_a_nonzero_head()
    seen = []
    model.fc.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.autocast("cpu", dtype=dtype):
        logits = model(torch.rand(4, 3, 32, 32))
    (features,) = seen
    assert torch.equal(features, features.to(dtype).float())  # the convolutions did run in `dtype`
    assert features.dtype == logits.dtype == torch.float32
    assert torch.equal(logits, torch.nn.functional.linear(features, model.fc.weight))


def test_the_compiled_head_computes_in_float32_under_autocast():
    """One forward compile of depth 8 (about 10 s on 2 cores)."""
    model = model_with_a_nonzero_head()
    x = torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = model(x)
        compiled = torch.compile(model)(x)
    assert compiled.dtype == torch.float32
    torch.testing.assert_close(compiled, eager, rtol=0.05, atol=0.05 * eager.abs().max().item())
