"""A small U-Net: the second network (model = "unet"), for photos the network never saw.

DeblurNet looks at 15x15 pixels, while a sigma-5 blur spreads a point over 31: it can sharpen,
but it cannot undo the blur's reach. A U-Net halves the image three times, so that its deepest
3x3 convolutions look eight pixels apart, and carries each level's detail across to the way up.
"""

import torch
from torch import nn
from torch.nn import functional as F


def two_convolutions(inputs, outputs):
    """Two 3x3 convolutions, each followed by a ReLU: one level's work."""
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(outputs, outputs, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """16-32-64 channels at full, half and quarter size, 64 at an eighth; 318,483 parameters.

    Pure residual: the output is the input plus what the network adds, and that starts at zero
    (the last convolution's weights are zeros), so that an untrained U-Net returns its input: after
    Wiener deconvolution, Wiener's result. Any size works: the image is padded to a multiple of 8
    by repeating its edges, and cropped back. An output pixel sees up to 105x105 input pixels
    (REACH 52 each way, tested). Clamped to [0, 1] outside training: while training, a clamp
    would stop the gradient of every pixel pushed past it, and one large step can push them all.
    """

    DOWNSAMPLING = 8  # three 2x2 max-poolings
    REACH = 52  # an output pixel depends on input pixels up to 52 away, each way

    def __init__(self, width=16):
        super().__init__()
        self.down1 = two_convolutions(3, width)
        self.down2 = two_convolutions(width, 2 * width)
        self.down3 = two_convolutions(2 * width, 4 * width)
        self.bottom = two_convolutions(4 * width, 4 * width)
        self.up3 = nn.ConvTranspose2d(4 * width, 4 * width, kernel_size=2, stride=2)
        self.after_up3 = two_convolutions(8 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, kernel_size=2, stride=2)
        self.after_up2 = two_convolutions(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, kernel_size=2, stride=2)
        self.after_up1 = two_convolutions(2 * width, width)
        self.last = nn.Conv2d(width, 3, kernel_size=3, padding=1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x):
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
        restored = x + self.last(up)[..., :height, :width]
        return restored if self.training else restored.clamp(0, 1)
