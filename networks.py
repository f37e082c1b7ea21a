"""The networks: the original's DeblurNet, and a small U-Net (model = "unet") for photos the
network never saw.

DeblurNet looks at 15x15 pixels, while a sigma-5 blur spreads a point over 31: it can sharpen,
but it cannot undo the blur's reach. A U-Net halves the image three times, so that its deepest
3x3 convolutions look eight pixels apart, and carries each level's detail across to the way up.
"""

import torch
from torch import nn
from torch.nn import functional as F


class DeblurNet(nn.Module):
    """Seven 3x3 convolutions, 3-64-128-256-256-128-64-3, Tanh between them, residual, sigmoid."""

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

    def forward(self, x):
        return self.restored(x, self.correction(x))

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


class UNet(nn.Module):
    """16-32-64 channels at full, half and quarter size, 64 at an eighth; 318,483 parameters.

    Pure residual: the output is the input plus what the network adds, and that starts at zero
    (the last convolution's weights are zeros), so that an untrained U-Net returns its input: after
    Wiener deconvolution, Wiener's result. Any size works: the image is padded to a multiple of 8
    by repeating its edges, and cropped back. A pixel of its correction sees up to 105x105 input
    pixels (REACH 52 each way, tested); taking away its local mean adds MEAN_WINDOW // 2.
    Clamped to [0, 1] outside training: while training, a clamp
    would stop the gradient of every pixel pushed past it, and one large step can push them all.
    """

    DOWNSAMPLING = 8  # three 2x2 max-poolings
    REACH = 52  # a pixel of the correction depends on input pixels up to 52 away, each way
    MEAN_WINDOW = 65  # the correction keeps the image's mean over windows this wide (restored)

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
        self.last = nn.Conv2d(width, 3, kernel_size=3, padding=1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x):
        return self.restored(x, self.correction(x))

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

    def restored(self, x, correction):
        # Blur moves light but keeps it: over a window wider than the kernel, the sharp image has
        # the blurred one's mean. So does the correction, whose local mean is taken away: no
        # brightness drifts in, which on a sharp photo costs more than any detail gains.
        restored = x[:, :3] + correction - local_mean(correction, self.MEAN_WINDOW)
        return restored if self.training else restored.clamp(0, 1)


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
