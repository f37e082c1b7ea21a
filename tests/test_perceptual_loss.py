"""The VGG19 perceptual loss: its layers, its sum, frozen, and its weights when offline."""

import pytest
import torch
import torchvision
from conftest import offline
from torch import nn
from torch.nn import functional as F
from torchvision.models import VGG19_Weights, vgg19

from PerceptualLoss import VGG19Loss, load_vgg19_loss

# torchvision's vgg19().features indices of relu1_1 ... relu4_4
RELU_INDICES = (1, 3, 6, 8, 11, 13, 15, 17, 20, 22, 24, 26)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGG19Loss(weights=None)


def test_vgg_is_cut_after_conv4_4_and_its_relu(vgg):
    layers = list(vgg.features)
    assert len(layers) == 27
    assert isinstance(layers[-1], nn.ReLU)
    assert isinstance(layers[-2], nn.Conv2d) and layers[-2].out_channels == 512
    assert sum(isinstance(layer, nn.Conv2d) for layer in layers) == 12
    assert [i for i, layer in enumerate(layers) if isinstance(layer, nn.ReLU)] == list(RELU_INDICES)


def test_feature_maps_are_the_12_relu_outputs(vgg):
    maps = vgg.feature_maps(torch.rand(1, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512]
    assert all((m >= 0).all() for m in maps)


def test_loss_is_the_sum_of_mses_over_every_relu_map(vgg):
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    expected = 0.0
    x, y = a, b
    for i, layer in enumerate(vgg.features):
        x, y = layer(x.clone()), layer(y.clone())
        if i in RELU_INDICES:
            expected += F.mse_loss(x, y).item()
    assert vgg(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_identical_images_give_zero_and_different_images_a_positive_loss(vgg):
    image = torch.rand(1, 3, 32, 32)
    assert vgg(image, image.clone()).item() == 0
    assert vgg(image, torch.rand(1, 3, 32, 32)).item() > 0


def test_vgg_is_frozen_and_in_eval_mode(vgg):
    assert not any(p.requires_grad for p in vgg.parameters())
    assert not vgg.training and not any(layer.training for layer in vgg.features)


def test_gradients_reach_the_prediction_but_not_the_vgg(vgg):
    prediction = torch.rand(1, 3, 32, 32, requires_grad=True)
    vgg(prediction, torch.rand(1, 3, 32, 32)).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def test_precomputed_target_maps_give_the_same_loss(vgg):
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        target_maps = vgg.feature_maps(b)
    assert vgg(a, target_maps).item() == pytest.approx(vgg(a, b).item(), rel=1e-6)


def test_pretrained_weights_are_read_from_the_torch_home_cache(tmp_path, monkeypatch):
    # A full VGG19 state dict where torchvision looks for it: loading needs no network. Random
    # convolutions; the classifier, never used, one number each (548 MB written out in full)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(1)
    with torch.device("meta"):
        shapes = vgg19().state_dict()
    state = {}
    for name, tensor in shapes.items():
        drawn = torch.randn if name.startswith("features") else torch.zeros(()).expand
        state[name] = drawn(tensor.shape)
    torch.save(state, cache / VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1])
    loaded = VGG19Loss("IMAGENET1K_V1")
    for name, tensor in loaded.features.state_dict().items():
        assert torch.equal(tensor, state[f"features.{name}"]), name


def test_unloadable_weights_give_none_and_a_message_naming_the_damaged_file(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    damaged = cache / VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    damaged.write_bytes(b"half a download")
    assert load_vgg19_loss("IMAGENET1K_V1", torch.device("cpu")) is None
    err = capsys.readouterr().err
    assert f"delete {damaged}" in err and "MSE loss only" in err and "perceptual_weight = 0" in err


def test_offline_the_message_says_where_to_put_the_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    offline(monkeypatch)
    assert load_vgg19_loss("IMAGENET1K_V1", torch.device("cpu")) is None
    err = capsys.readouterr().err
    url = VGG19_Weights.IMAGENET1K_V1.url
    assert f"download {url} and put it in {tmp_path / 'hub' / 'checkpoints'}/" in err
    assert "URLError" in err and "MSE loss only" in err


def test_a_bug_in_the_vgg_loss_raises_instead_of_training_without_it(monkeypatch):
    def bug(*args, **kwargs):
        raise TypeError("vgg19() got an unexpected keyword argument")

    monkeypatch.setattr(torchvision.models, "vgg19", bug)
    with pytest.raises(TypeError, match="unexpected keyword"):
        load_vgg19_loss(None, torch.device("cpu"))
