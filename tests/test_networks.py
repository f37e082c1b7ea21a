"""The networks: the original DeblurNet, layer by layer, the U-Net, the ResNet and the
adversarial term's discriminator."""

import pytest
import torch
from torch import nn

from networks import (
    MEAN_WINDOW,
    NETWORKS,
    DeblurNet,
    PatchDiscriminator,
    ResNet,
    UNet,
    local_mean,
)


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


def test_unet_adds_detail_but_keeps_the_local_mean_and_clamps_only_outside_training():
    torch.manual_seed(0)
    net = UNet()
    nn.init.constant_(net.last.bias, 0.6)  # a brightness shift, all of it taken away
    image = torch.rand(1, 3, 160, 160)
    torch.testing.assert_close(net.train()(image), image)
    nn.init.normal_(net.last.weight, std=3.0)
    restored = net.train()(image)
    assert (restored - image).abs().max() > 0.5 and (restored > 1).any()  # detail, unclamped
    assert net.eval()(image).min() >= 0 and net.eval()(image).max() <= 1


def test_the_local_mean_is_each_pixels_window_mean_with_the_edges_replicated():
    image = torch.rand(1, 2, 12, 9, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(image, [2] * 4, mode="replicate")
    expected = torch.stack(
        [
            padded[..., row : row + 5, column : column + 5].mean(dim=(-2, -1))
            for row in range(12)
            for column in range(9)
        ],
        dim=-1,
    ).reshape(1, 2, 12, 9)
    torch.testing.assert_close(local_mean(image, 5), expected)


def test_the_networks_take_wieners_result_and_its_blur_description():
    image = torch.rand(2, 5, 24, 24)  # Wiener's result, the noise map and the spread map
    for net in (UNet(inputs=5).eval(), DeblurNet(inputs=5)):
        assert net(image).shape == (2, 3, 24, 24)
    torch.testing.assert_close(UNet(inputs=5).eval()(image), image[:, :3])


def furthest_seen(function, image):
    """How far, in rows, an output pixel of `function` depends on the image, at its worst."""
    furthest = 0
    for row in range(120, 136):  # every position against the three poolings' grid, twice
        (gradient,) = torch.autograd.grad(function(image)[0, :, row, 4].sum(), image)
        seen = gradient.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
        furthest = max(furthest, row - seen.min().item(), seen.max().item() - row)
    return furthest


def test_unet_sees_reach_pixels_each_way_and_no_further():
    torch.manual_seed(0)
    net = UNet()
    nn.init.normal_(net.last.weight)
    image = torch.rand(1, 3, 256, 8, requires_grad=True)
    assert furthest_seen(net.correction, image) == UNet.REACH
    assert furthest_seen(net, image) == UNet.REACH + MEAN_WINDOW // 2


def test_unet_parameter_count_is_318483():
    assert sum(p.numel() for p in UNet().parameters()) == 318_483


def test_resnet_blocks_are_edsrs_conv_relu_conv_at_one_width_without_norm():
    net = ResNet()
    assert len(net.blocks) == 6
    for block in net.blocks:
        assert [type(layer) for layer in block] == [nn.Conv2d, nn.ReLU, nn.Conv2d]
        assert [layer.weight.shape for layer in block[::2]] == [(32, 32, 3, 3)] * 2
    assert sum(p.numel() for p in ResNet(inputs=5).parameters()) == 113_315


def test_resnet_adds_each_blocks_output_to_its_input():
    torch.manual_seed(0)
    net = ResNet()
    nn.init.normal_(net.last.weight)
    image = torch.rand(1, 3, 20, 20)
    for block in net.blocks:  # every block adds nothing: what is left is first then last
        nn.init.zeros_(block[2].weight)
        nn.init.zeros_(block[2].bias)
    torch.testing.assert_close(net.correction(image), net.last(net.first(image)))


def test_resnet_keeps_any_size_and_starts_as_its_input():
    net = ResNet(inputs=5).eval()
    for shape in ((1, 5, 37, 50), (2, 5, 8, 8)):
        image = torch.rand(shape)
        assert torch.equal(net(image), image[:, :3])  # its last convolution starts at zero


def test_resnet_sees_reach_pixels_each_way_and_no_further():
    torch.manual_seed(0)
    net = ResNet()
    nn.init.normal_(net.last.weight)
    image = torch.rand(1, 3, 256, 8, requires_grad=True)
    assert furthest_seen(net.correction, image) == ResNet.REACH == 14
    assert furthest_seen(net, image) == ResNet.REACH + MEAN_WINDOW // 2


def test_the_discriminator_scores_34_pixel_patches():
    torch.manual_seed(0)
    net = PatchDiscriminator()
    assert [type(layer) for layer in net.main].count(nn.InstanceNorm2d) == 2
    # Through its convolutions; the instance norms' means and spreads are the whole image's
    net.main = nn.Sequential(*(layer for layer in net.main if type(layer) is not nn.InstanceNorm2d))
    image = torch.rand(1, 3, 96, 96, requires_grad=True)
    scores = net(image)
    assert scores.shape == (1, 1, 22, 22)
    (gradient,) = torch.autograd.grad(scores[0, 0, 10, 10], image)
    rows = gradient.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    assert rows.max().item() - rows.min().item() + 1 == 34


@pytest.mark.parametrize("name", NETWORKS)
def test_every_networks_correction_sees_its_reach_each_way_and_no_further(name):
    """--apply's tiles overlap by REACH: a network that saw further would seam its tiles."""
    torch.manual_seed(0)
    net = NETWORKS[name]()
    for parameter in net.parameters():
        nn.init.normal_(parameter, std=0.2)  # none zero (a last layer starts so), none dead
    image = torch.rand(1, 3, 256, 8, requires_grad=True)
    assert furthest_seen(net.correction, image) == net.REACH
    assert net.name == name and net.title
