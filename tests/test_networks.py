"""The networks: the original DeblurNet, layer by layer, and the U-Net."""

import torch
from torch import nn

from Deblur import DeblurNet
from UNet import UNet


def test_layers_are_the_originals_seven_convolutions_with_tanh_between():
    layers = list(DeblurNet().main)
    convs = [layer for layer in layers if isinstance(layer, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3, 64),
        (64, 128),
        (128, 256),
        (256, 256),
        (256, 128),
        (128, 64),
        (64, 3),
    ]
    assert all(
        c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs
    )
    assert [type(layer) for layer in layers] == [nn.Conv2d, nn.Tanh] * 6 + [nn.Conv2d]


def test_parameter_count_is_1331459():
    assert sum(p.numel() for p in DeblurNet().parameters()) == 1_331_459


def test_output_keeps_the_input_shape_and_lies_in_0_1():
    image = torch.rand(2, 3, 20, 28)
    output = DeblurNet()(image)
    assert output.shape == image.shape
    assert output.min() >= 0 and output.max() <= 1


def test_output_is_the_sigmoid_of_features_plus_input():
    net = DeblurNet()
    last = net.main[-1]
    nn.init.zeros_(last.weight)
    nn.init.constant_(last.bias, 0.25)
    image = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(net(image), torch.sigmoid(image + 0.25))


def test_unet_keeps_any_size_and_starts_as_its_input():
    net = UNet().eval()
    for shape in ((1, 3, 37, 50), (2, 3, 8, 8), (1, 3, 64, 64)):
        image = torch.rand(shape)
        assert torch.equal(net(image), image)  # its last convolution starts at zero


def test_unet_adds_to_its_input_and_clamps_only_outside_training():
    net = UNet()
    nn.init.constant_(net.last.bias, 0.6)
    image = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(net.train()(image), image + 0.6)
    torch.testing.assert_close(net.eval()(image), (image + 0.6).clamp(0, 1))


def test_unet_sees_reach_pixels_each_way_and_no_further():
    torch.manual_seed(0)
    net = UNet()
    nn.init.normal_(net.last.weight)
    image = torch.rand(1, 3, 256, 8, requires_grad=True)
    furthest = 0
    for row in range(120, 136):  # every position against the three poolings' grid, twice
        (gradient,) = torch.autograd.grad(net(image)[0, :, row, 4].sum(), image)
        seen = gradient.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
        furthest = max(furthest, row - seen.min().item(), seen.max().item() - row)
    assert furthest == UNet.REACH


def test_unet_parameter_count_is_318483():
    assert sum(p.numel() for p in UNet().parameters()) == 318_483
