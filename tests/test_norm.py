"""GroupNorm + Weight Standardization: the standardised conv, group choice, BN <-> GN+WS swaps."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from smnas.errors import SpecError
from smnas.models.norm import (
    FrozenStatsBatchNorm2d,
    WSConv2d,
    conv_layer,
    freeze_bn_statistics,
    group_norm,
    norm_kind_of,
    norm_layer,
    to_bn,
    to_gnws,
)

torch.set_num_threads(1)


def _reference_ws_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Weight standardisation written out independently of WSConv2d."""
    w = conv.weight.detach().double().flatten(1)
    w = (w - w.mean(dim=1, keepdim=True)) / torch.sqrt(w.var(dim=1, unbiased=False, keepdim=True) + 1e-5)
    bias = None if conv.bias is None else conv.bias.detach().double()
    return F.conv2d(x.double(), w.view_as(conv.weight), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def test_ws_conv_uses_standardised_weight() -> None:
    torch.manual_seed(0)
    conv = WSConv2d(6, 4, 3, padding=1, groups=2, bias=True)
    with torch.no_grad():  # a weight far from standardised: offset and scaled per channel
        conv.weight.mul_(torch.tensor([1.0, 5.0, 0.1, 30.0]).view(4, 1, 1, 1)).add_(3.0)
    w = conv.standardized_weight().detach().flatten(1)
    assert torch.allclose(w.mean(dim=1), torch.zeros(4), atol=1e-5)
    var = w.var(dim=1, unbiased=False)
    raw_var = conv.weight.detach().flatten(1).var(dim=1, unbiased=False)
    assert torch.allclose(var, raw_var / (raw_var + 1e-5), atol=1e-5)  # 1 up to eps
    x = torch.randn(2, 6, 8, 8)
    out = conv(x)
    assert torch.allclose(out.double(), _reference_ws_conv(x, conv), atol=1e-4, rtol=1e-5)
    plain = F.conv2d(x, conv.weight, conv.bias, padding=1, groups=2)
    assert not torch.allclose(out, plain, atol=1e-2)  # the raw weight is not what is applied


def test_ws_conv_is_invariant_to_weight_affine_and_passes_gradients() -> None:
    torch.manual_seed(1)
    conv = WSConv2d(3, 5, 3, bias=False)
    with torch.no_grad():  # variance ~1 so that eps (1e-5) is negligible against it
        conv.weight.normal_()
    x = torch.randn(1, 3, 7, 7, requires_grad=True)
    before = conv(x).detach()
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(-2.0)
    assert torch.allclose(conv(x).detach(), before, atol=1e-4, rtol=1e-4)
    conv(x).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Standardisation removes the weight's per-channel mean direction from the gradient.
    assert torch.allclose(conv.weight.grad.flatten(1).sum(dim=1), torch.zeros(5), atol=1e-3)


def test_ws_conv_rejects_fan_in_one() -> None:
    with pytest.raises(ValueError, match="fan-in"):
        WSConv2d(4, 4, 1, groups=4)


@pytest.mark.parametrize(("channels", "groups"), [(12, 6), (24, 12), (32, 16), (64, 32), (3, 1), (56, 28), (96, 32)])
def test_group_norm_groups(channels: int, groups: int) -> None:
    gn = group_norm(channels)
    assert (gn.num_groups, gn.num_channels) == (groups, channels)
    assert gn(torch.randn(2, channels, 4, 4)).shape == (2, channels, 4, 4)


def test_group_norm_max_groups_and_bad_input() -> None:
    assert group_norm(64, max_groups=10).num_groups == 8
    assert group_norm(7, max_groups=4).num_groups == 1
    with pytest.raises(ValueError, match="channels"):
        group_norm(0)


def test_norm_layer_and_conv_layer() -> None:
    assert isinstance(norm_layer("bn")(8), nn.BatchNorm2d)
    gn = norm_layer("gnws")(24)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 12
    assert conv_layer("bn") is nn.Conv2d and conv_layer("gnws") is WSConv2d
    with pytest.raises(SpecError, match="bn, gnws"):
        norm_layer("ln")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="unknown norm kind"):
        conv_layer("gn")  # type: ignore[arg-type]


def test_norm_layer_builds_torchvision_resnet() -> None:
    model = torchvision.models.resnet18(norm_layer=norm_layer("gnws"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def _count(model: nn.Module, cls: type) -> int:
    return sum(type(m) is cls for m in model.modules())


def test_to_gnws_and_back_on_resnet18() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    n_conv, n_bn = _count(model, nn.Conv2d), _count(model, nn.BatchNorm2d)
    first_weight = model.conv1.weight.detach().clone()
    x = torch.randn(1, 3, 32, 32)
    assert to_gnws(model) is model
    assert _count(model, nn.Conv2d) == 0 and _count(model, nn.BatchNorm2d) == 0
    assert _count(model, WSConv2d) == n_conv and _count(model, nn.GroupNorm) == n_bn
    assert torch.equal(model.conv1.weight, first_weight)  # raw weights carried over
    assert model.layer1[0].bn1.num_groups == 32 and model.layer4[0].bn2.num_channels == 512
    assert norm_kind_of(model) == "gnws"
    gnws_out = model(x)
    assert gnws_out.shape == (1, 1000)

    assert to_bn(model) is model
    assert _count(model, WSConv2d) == 0 and _count(model, nn.GroupNorm) == 0
    assert _count(model, nn.Conv2d) == n_conv and _count(model, nn.BatchNorm2d) == n_bn
    assert norm_kind_of(model) == "bn"
    assert model(x).shape == (1, 1000)


def test_to_bn_conv_computes_what_ws_conv_computed() -> None:
    torch.manual_seed(2)
    ws = WSConv2d(4, 6, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 4, 9, 9)
    expected = ws(x).detach()
    plain = to_bn(ws)
    assert type(plain) is nn.Conv2d and (plain.stride, plain.padding) == ((2, 2), (1, 1))
    assert torch.allclose(plain(x), expected, atol=1e-5)


def test_to_gnws_handles_frozen_bn_and_mobilenet() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 12, 3), FrozenBatchNorm2d(12), nn.ReLU())
    to_gnws(seq)
    assert isinstance(seq[0], WSConv2d) and isinstance(seq[1], nn.GroupNorm) and seq[1].num_groups == 6
    mobile = to_gnws(torchvision.models.mobilenet_v2(weights=None, width_mult=0.25)).eval()
    assert _count(mobile, nn.Conv2d) == 0 and _count(mobile, nn.BatchNorm2d) == 0
    assert mobile.features(torch.randn(1, 3, 32, 32)).shape == (1, 1280, 1, 1)


def test_to_gnws_rejects_unknown_conv_subclass() -> None:
    class OddConv(nn.Conv2d):
        pass

    with pytest.raises(TypeError, match="'1'.*OddConv"):
        to_gnws(nn.Sequential(nn.Conv2d(3, 4, 3), OddConv(4, 4, 3)))


def test_norm_kind_of_detects_and_rejects_mixtures() -> None:
    assert norm_kind_of(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))) == "bn"
    assert norm_kind_of(nn.Sequential(WSConv2d(3, 4, 3), group_norm(4))) == "gnws"
    # A plain conv without a norm (an FPN's) does not decide the kind.
    assert norm_kind_of(nn.Sequential(WSConv2d(3, 4, 3), group_norm(4), nn.Conv2d(4, 4, 1))) == "gnws"
    with pytest.raises(ValueError, match="mixed.*bn at '1'.*gn at '3'"):
        norm_kind_of(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), WSConv2d(4, 4, 3), group_norm(4)))
    with pytest.raises(ValueError, match="mixed"):
        norm_kind_of(nn.Sequential(WSConv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="come together"):
        norm_kind_of(nn.Sequential(nn.Conv2d(3, 4, 3), group_norm(4)))
    with pytest.raises(ValueError, match="no BatchNorm"):
        norm_kind_of(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_freeze_bn_statistics_keeps_the_loaded_statistics_and_trains_the_affine_part() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():  # statistics unlike a fresh BN's, as a pretrained backbone's are
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    expected = model.eval()(x)  # what the loaded statistics compute
    assert freeze_bn_statistics(model) == 20  # every BN of ResNet-18
    assert list(model.state_dict()) == list(before)  # same keys: checkpoints load either way
    model.train()
    assert all(m.training is False for m in model.modules() if isinstance(m, FrozenStatsBatchNorm2d))
    assert model.fc.training  # only the BN layers stay in eval mode
    out = model(x)
    torch.testing.assert_close(out, expected)  # the running statistics, not the batch's
    out.sum().backward()
    assert model.bn1.weight.grad is not None and model.bn1.weight.grad.abs().sum() > 0
    state = model.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in state if "running" in k or "num_batches" in k)


def test_freeze_bn_statistics_leaves_other_norms_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), group_norm(4), FrozenBatchNorm2d(4))
    assert freeze_bn_statistics(model) == 0
    with pytest.raises(ValueError, match="inside a module"):
        freeze_bn_statistics(nn.BatchNorm2d(4))
