"""The networks: the original's DeblurNet; a small U-Net (model = "unet") and a ResNet of EDSR's
blocks (model = "resnet") for photos the network never saw; and the PatchGAN discriminator of
the adversarial term (adversarial_weight).

DeblurNet looks at 15x15 pixels, while a sigma-5 blur spreads a point over 31: it can sharpen,
but it cannot undo the blur's reach. A U-Net halves the image three times, so that its deepest
3x3 convolutions look eight pixels apart, and carries each level's detail across to the way up.
"""

import torch
from torch import nn
from torch.nn import functional as F

MEAN_WINDOW = 65  # the U-Net's and the ResNet's correction keeps the image's mean over this width


class Restorer(nn.Module):
    """What every network the `model` setting names is: its name there, its title in the plan, its
    REACH (how many input pixels each way a pixel of its correction sees: --apply's tiles overlap
    by that much), and its forward in two halves, so that --apply can run the first in tiles:
    `correction(x)` (the convolutions' work) and `restored(x, correction)` (the image made from
    it). `inputs`: 3 colours, or 5 after a Wiener step (the colours, the noise and the spread).
    Add a network by subclassing it and listing it in NETWORKS."""

    name = ""
    title = ""
    REACH = 0

    def forward(self, x):
        return self.restored(x, self.correction(x))


class DeblurNet(Restorer):
    """Seven 3x3 convolutions, 3-64-128-256-256-128-64-3, Tanh between them, residual, sigmoid."""

    name = "deblurnet"
    title = "DeblurNet"
    REACH = 7  # seven 3x3 convolutions: an output pixel sees 7 pixels each way

    def __init__(self, inputs=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(inputs, 64, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(64, 128, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(128, 256, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(256, 128, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(64, 3, kernel_size=3, padding=1),
        )

    def correction(self, x):
        """What the convolutions add to the image (it reaches REACH pixels each way)."""
        return self.main(x)

    def restored(self, x, correction):
        # The residual keeps the input's colours and structure; the convolutions add the detail.
        return torch.sigmoid(correction + x[:, :3])


def two_convolutions(inputs, outputs):
    """Two 3x3 convolutions, each followed by a ReLU: one level's work."""
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(outputs, outputs, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


class Correcting(Restorer):
    """The U-Net's and the ResNet's shape: the image plus what the network adds (`correction`),
    whose mean over each MEAN_WINDOW-wide window is taken away; clamped to [0, 1] outside
    training. Blur moves light but keeps it: over a window wider than the kernel, the sharp image
    has the blurred one's mean. So does the correction: no brightness drifts in, which on a sharp
    photo costs more than any detail gains."""

    def restored(self, x, correction):
        restored = x[:, :3] + correction - local_mean(correction, MEAN_WINDOW)
        return restored if self.training else restored.clamp(0, 1)


def last_convolution(width):
    """The 3x3 convolution to the correction's 3 colours, its weights zeros: an untrained network
    returns its input (after Wiener deconvolution, Wiener's result)."""
    last = nn.Conv2d(width, 3, kernel_size=3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return last


class UNet(Correcting):
    """16-32-64 channels at full, half and quarter size, 64 at an eighth; 318,483 parameters.

    Pure residual: the output is the input plus what the network adds, and that starts at zero
    (the last convolution's weights are zeros), so that an untrained U-Net returns its input: after
    Wiener deconvolution, Wiener's result. Any size works: the image is padded to a multiple of 8
    by repeating its edges, and cropped back. A pixel of its correction sees up to 105x105 input
    pixels (REACH 52 each way, tested); taking away its local mean adds MEAN_WINDOW // 2.
    Clamped to [0, 1] outside training: while training, a clamp
    would stop the gradient of every pixel pushed past it, and one large step can push them all.
    """

    name = "unet"
    title = "U-Net"
    DOWNSAMPLING = 8  # three 2x2 max-poolings
    REACH = 52  # a pixel of the correction depends on input pixels up to 52 away, each way

    def __init__(self, inputs=3, width=16):
        super().__init__()
        self.down1 = two_convolutions(inputs, width)
        self.down2 = two_convolutions(width, 2 * width)
        self.down3 = two_convolutions(2 * width, 4 * width)
        self.bottom = two_convolutions(4 * width, 4 * width)
        self.up3 = nn.ConvTranspose2d(4 * width, 4 * width, kernel_size=2, stride=2)
        self.after_up3 = two_convolutions(8 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, kernel_size=2, stride=2)
        self.after_up2 = two_convolutions(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, kernel_size=2, stride=2)
        self.after_up1 = two_convolutions(2 * width, width)
        self.last = last_convolution(width)

    def correction(self, x):
        """What the network adds to the image, before its local mean is taken away."""
        height, width = x.shape[-2:]
        padding = [0, -width % self.DOWNSAMPLING, 0, -height % self.DOWNSAMPLING]
        full = self.down1(F.pad(x, padding, mode="replicate"))
        half = self.down2(F.max_pool2d(full, 2))
        quarter = self.down3(F.max_pool2d(half, 2))
        eighth = self.bottom(F.max_pool2d(quarter, 2))
        # On the way up, each level sees the coarser result and its own detail from the way down
        up = self.after_up3(torch.cat([self.up3(eighth), quarter], dim=1))
        up = self.after_up2(torch.cat([self.up2(up), half], dim=1))
        up = self.after_up1(torch.cat([self.up1(up), full], dim=1))
        return self.last(up)[..., :height, :width]


class ResNet(Correcting):
    """EDSR's residual blocks (Lim et al. 2017) at one width, every layer at full size: a 3x3
    convolution into 32 channels; six blocks, each conv 3x3, ReLU, conv 3x3 added to the block's
    input (no batch norm: EDSR found it takes away the range of values a restoration needs); a
    3x3 convolution back to 3 channels, whose weights start at zero; and, as the U-Net, the input
    added to the whole and the correction's local mean taken away. 113,315 parameters (with 5
    inputs). Fourteen 3x3 convolutions: a pixel of the correction sees 29x29 input pixels (REACH
    14 each way, tested), less than the U-Net's 105, and a step of fresh weights costs about three
    of the U-Net's (docs/method.md): its depth is all at full size, where the U-Net spends most of
    its convolutions at a half, a quarter and an eighth of it.
    """

    name = "resnet"
    title = "ResNet"
    REACH = 14  # 1 + 2 a block + 1: a pixel of the correction sees 14 pixels each way

    def __init__(self, inputs=3, width=32, blocks=6):
        super().__init__()
        self.first = nn.Conv2d(inputs, width, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(residual_block(width) for _ in range(blocks))
        self.last = last_convolution(width)

    def correction(self, x):
        """What the network adds to the image, before its local mean is taken away."""
        features = self.first(x)
        for block in self.blocks:
            features = features + block(features)  # each block adds to what it is given
        return self.last(features)


def residual_block(width):
    """EDSR's block without its addition: conv 3x3, ReLU, conv 3x3, at one width."""
    return nn.Sequential(
        nn.Conv2d(width, width, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, kernel_size=3, padding=1),
    )


# The networks the `model` setting may name, by name: its choices, the plan's title, a checkpoint's
NETWORKS = {network.name: network for network in (DeblurNet, UNet, ResNet)}


class PatchDiscriminator(nn.Module):
    """The adversarial term: pix2pix's PatchGAN (Isola et al. 2017), smaller. It scores
    each patch of an image (high: a sharp photo's), not the whole image, so that it judges texture
    and edges, which is what blur takes away. Four 4x4 convolutions, 3-32 (stride 2), 32-64
    (stride 2), 64-128, 128-1, LeakyReLU(0.2) between; through them an output score sees a 34x34
    patch (tested), and a 96-pixel crop gets 22x22 scores. Instance norm after the second and
    third, as DeblurGAN's (a batch norm would mix the sharp and the restored images' statistics in
    one batch); 167,649 parameters."""

    def __init__(self, width=32):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, kernel_size=4, stride=2, padding=1),
            nn.InstanceNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 4 * width, kernel_size=4, padding=1),
            nn.InstanceNorm2d(4 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * width, 1, kernel_size=4, padding=1),
        )

    def forward(self, image):
        return self.main(image)


def local_mean(image, window):
    """The mean over the window x window pixels around each pixel, edges replicated: differences
    of running sums, a row's then a column's, so that a wide window costs no more than a narrow
    one. (In float32 the running sums of a 12-megapixel correction keep the mean within 1e-4 of
    an 8-bit step of float64's.)"""
    half = window // 2
    padded = F.pad(image, [half + 1, half, half + 1, half], mode="replicate")
    rows = padded.cumsum(dim=-2)
    del padded
    rows = rows[..., window:, :] - rows[..., :-window, :]
    both = rows.cumsum(dim=-1)
    del rows
    return (both[..., window:] - both[..., :-window]).div_(window**2)
