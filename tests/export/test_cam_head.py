import numpy as np
import pytest
import torch
from tiny_models import TimmStyle, TorchvisionStyle, seeded

from camdeploy.export.cam_head import CamModel, class_activation_maps, upsample_and_normalize
from camdeploy.export.contract import find_contract


def slow_cams(features, weight, classes):
    """CAM by the paper's definition, one pixel at a time."""
    n, c, h, w = features.shape
    t = classes.shape[1]
    out = torch.zeros(n, t, h, w, dtype=torch.float64)
    for i in range(n):
        for j in range(t):
            k = int(classes[i, j])
            for y in range(h):
                for x in range(w):
                    out[i, j, y, x] = sum(float(weight[k, ch]) * float(features[i, ch, y, x])
                                          for ch in range(c))
    return out


def test_class_activation_maps_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 3, 4, generator=g)
    weight = torch.randn(7, 5, generator=g)
    classes = torch.tensor([[6, 0, 3], [2, 2, 5]])
    got = class_activation_maps(features, weight, classes)
    assert got.shape == (2, 3, 3, 4)
    torch.testing.assert_close(got.double(), slow_cams(features, weight, classes), atol=1e-5, rtol=1e-5)


def test_normalised_maps_span_zero_to_one_and_constant_maps_are_zero():
    maps = torch.stack([torch.arange(12.0).reshape(3, 4), torch.full((3, 4), 2.5)])[None]  # [1, 2, 3, 4]
    out = upsample_and_normalize(maps, (9, 12))
    assert out.shape == (1, 2, 9, 12)
    assert float(out[0, 0].min()) == 0.0
    assert float(out[0, 0].max()) == pytest.approx(1.0)
    assert torch.equal(out[0, 1], torch.zeros(9, 12))


def test_upsampling_is_bilinear_with_half_pixel_centres():
    maps = torch.tensor([[[[0.0, 1.0]]]])  # [1, 1, 1, 2] -> width 4
    out = upsample_and_normalize(maps, (1, 4))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


@pytest.mark.parametrize("model", [TorchvisionStyle(), TimmStyle()], ids=["torchvision", "timm"])
def test_cam_model_outputs(model):
    model = seeded(model)
    contract = find_contract(model, (32, 32))
    cam_model = CamModel(contract, topk=3, input_size=(32, 32)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits, features, classes, scores, cams = cam_model(x)
        expected = model(x)
    torch.testing.assert_close(logits, expected)
    assert features.shape == (4, 8, 8, 8)
    assert classes.dtype == torch.int64 and classes.shape == (4, 3)
    probs = torch.softmax(expected, 1)
    torch.testing.assert_close(scores, probs.gather(1, classes))
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    assert cams.shape == (4, 3, 32, 32)
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0 + 1e-6
    # The map of the first class of the first image, by the definition then upsampled.
    raw = slow_cams(features[:1], contract.linear.weight.detach(), classes[:1, :1]).float()
    torch.testing.assert_close(cams[:1, :1], upsample_and_normalize(raw, (32, 32)), atol=1e-5, rtol=1e-5)


def test_numpy_cams_equal_the_torch_cams():
    """One CAM rule: the host's NumPy/OpenCV maps (for classes outside the top T, and torchcam's row)
    equal the graph's torch maps."""
    from camdeploy.runtime.cams import class_maps, host_cams

    generator = torch.Generator().manual_seed(3)
    features = torch.randn(3, 16, 7, 5, generator=generator)
    weight = torch.randn(10, 16, generator=generator)
    classes = torch.tensor([[1, 4], [9, 0], [3, 3]])
    raw = class_activation_maps(features, weight, classes)
    np.testing.assert_allclose(class_maps(features.numpy(), weight.numpy(), classes.numpy()), raw.numpy(),
                               rtol=1e-5, atol=1e-5)
    expected = upsample_and_normalize(raw, (28, 20)).numpy()
    got = host_cams(features.numpy(), weight.numpy(), classes.numpy(), (28, 20))
    np.testing.assert_allclose(got, expected, atol=2e-5)
    flat = host_cams(np.zeros((1, 16, 7, 5), np.float32), weight.numpy(), classes.numpy()[:1], (28, 20))
    assert not flat.any(), "a constant map is all 0"
