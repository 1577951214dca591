import pytest
import torch
from tiny_models import (
    ActivationAfterFeatures,
    Custom,
    FunctionalPool,
    NoHead,
    ResNetStyle,
    TimmStyle,
    TorchvisionStyle,
    TwoLinearHeads,
    seeded,
)

from camdeploy.errors import CamdeployError
from camdeploy.export.contract import find_contract, global_pool

SIZE = (32, 32)


@pytest.mark.parametrize(
    ("model", "shape", "pooling"),
    [
        (TorchvisionStyle(), "torchvision style", "avg"),
        (TorchvisionStyle(pool="max"), "torchvision style", "max"),
        (FunctionalPool(), "torchvision style", "avg"),
        (ResNetStyle(), "ResNet style", "avg"),
        (TimmStyle(), "timm style", "avg"),
    ],
    ids=["torchvision", "torchvision-gmp", "functional-pool", "resnet", "timm"],
)
def test_detects_supported_shapes(model, shape, pooling):
    model = seeded(model)
    contract = find_contract(model, SIZE)
    assert contract.shape.startswith(shape)
    assert contract.pooling == pooling
    x = torch.randn(3, 3, *SIZE)
    with torch.no_grad():
        fmap = contract.features(x)
        assert fmap.ndim == 4
        torch.testing.assert_close(contract.linear(global_pool(fmap, pooling)), model(x))


def test_override_names_feature_and_linear_modules():
    model = seeded(Custom())
    with pytest.raises(CamdeployError, match="matches none of the supported"):
        find_contract(model, SIZE)
    contract = find_contract(model, SIZE, feature_module="body", linear_module="out")
    assert contract.pooling == "max"
    assert contract.linear is model.out


def test_override_with_dotted_path_runs_children_in_order():
    model = seeded(Custom())
    # body.1 is the last 1x1 conv inside body: same features as "body".
    contract = find_contract(model, SIZE, feature_module="body.1", linear_module="out")
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(contract.features(x), model.body(x))


def test_override_needs_both_names():
    with pytest.raises(CamdeployError, match="--feature-module and --linear-module go together"):
        find_contract(seeded(Custom()), SIZE, feature_module="body")


def test_override_unknown_module_lists_children():
    with pytest.raises(CamdeployError, match=r"has no child 'trunk'; its children are body, pool, out"):
        find_contract(seeded(Custom()), SIZE, feature_module="trunk", linear_module="out")


def test_refuses_two_linear_layers():
    with pytest.raises(CamdeployError, match=r"single nn\.Linear.*found Linear, ReLU, Linear"):
        find_contract(seeded(TwoLinearHeads()), SIZE)


def test_refuses_activation_between_features_and_pooling():
    with pytest.raises(CamdeployError, match=r"model\(x\) is not linear\(global_pool\(features\(x\)\)\)"):
        find_contract(seeded(ActivationAfterFeatures()), SIZE)


def test_refuses_unknown_shape():
    with pytest.raises(CamdeployError, match="NoHead matches none of the supported GAP classifier shapes"):
        find_contract(NoHead(), SIZE)


def test_refuses_non_module():
    with pytest.raises(CamdeployError, match=r"expected a torch\.nn\.Module, got str"):
        find_contract("resnet50", SIZE)  # type: ignore[arg-type]


def test_forced_pooling_that_does_not_match_is_refused():
    with pytest.raises(CamdeployError, match=r"global max pooling: max \|diff\| [0-9.e-]+; tolerance"):
        find_contract(seeded(TorchvisionStyle()), SIZE, pooling="max")


class BigKernel(TorchvisionStyle):
    """Needs inputs of at least 16 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 16))


def test_input_too_small_for_the_model_is_reported():
    with pytest.raises(CamdeployError, match=r"failed on a probe input \[2, 3, 8, 8\].*is --input-size right"):
        find_contract(seeded(BigKernel()), (8, 8))


@pytest.mark.parametrize("size", [(0, 0), (4, 32), (5000, 5000)])
def test_input_size_out_of_range_is_refused_before_any_allocation(size):
    with pytest.raises(CamdeployError, match=r"--input-size .*: expected 8 to 4096 pixels per side"):
        find_contract(seeded(TorchvisionStyle()), size)


def test_non_float32_model_is_refused():
    with pytest.raises(CamdeployError, match=r"torch\.float64 on cpu; export needs a float32 model"):
        find_contract(seeded(TorchvisionStyle()).double(), SIZE)


class FlatFeatures(TorchvisionStyle):
    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def test_feature_map_must_be_4d_and_match_the_head():
    model = seeded(FlatFeatures())
    model.features.append(torch.nn.Flatten())
    with pytest.raises(CamdeployError, match=r"returned \(2, 512\); CAM needs a 4-D feature map"):
        find_contract(model, SIZE)
    model = seeded(TorchvisionStyle())
    model.classifier[1] = torch.nn.Linear(5, 10)
    with pytest.raises(CamdeployError, match="the feature map has 8 channels but the linear head expects 5 inputs"):
        find_contract(model, SIZE)
