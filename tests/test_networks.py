"""The networks: the original DeblurNet, layer by layer."""

import torch
from torch import nn

from Deblur import DeblurNet


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
