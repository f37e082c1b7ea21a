"""VGG19 perceptual loss: how far apart two images look to an ImageNet classifier.

Both go through VGG19 up to conv4_4's ReLU; the loss sums the mean squared differences of the 12
ReLU outputs on the way (relu1_1 ... relu4_4). Inputs stay in [0, 1], not ImageNet-normalised, as
in the original. The VGG is frozen.
"""

import pickle
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class VGG19Loss(nn.Module):
    """`weights`: a torchvision VGG19_Weights name (fetched once into TORCH_HOME); None: random."""

    def __init__(self, weights="IMAGENET1K_V1"):
        super().__init__()
        from torchvision.models import vgg19  # imported only when needed: it takes over a second

        state = pretrained_state(weights) if weights else None  # first: offline, fail fast
        with torch.device("meta"):  # no time and no memory for the classifier, never used
            vgg = vgg19()
        if state is None:
            initialised_as_torchvision_does(vgg.features.to_empty(device="cpu"))
        else:
            vgg.load_state_dict(state, assign=True)
        self.features = vgg.features[:27]  # conv1_1 ... conv4_4 and its ReLU
        self.requires_grad_(False)
        self.eval()

    def feature_maps(self, image):
        """The 12 ReLU outputs of `image`, shallowest first."""
        maps = []
        for layer in self.features:
            image = layer(image)
            if isinstance(layer, nn.ReLU):
                maps.append(image)
        return maps

    def forward(self, prediction, target):
        """The loss; `target` is an image, or its feature_maps (a fixed target's, computed once)."""
        if torch.is_tensor(target):
            target = self.feature_maps(target)
        maps = self.feature_maps(prediction)
        return sum(F.mse_loss(m, t) for m, t in zip(maps, target, strict=True))


def initialised_as_torchvision_does(features):
    """Random weights, drawn as torchvision's VGG draws them."""
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)


class WeightsUnavailable(Exception):
    """The pretrained weights could not be had: offline, blocked, or a damaged download."""


def pretrained_state(weights):
    """torchvision's VGG19 state dict, downloaded once into TORCH_HOME's cache."""
    from torchvision.models import VGG19_Weights

    try:
        return VGG19_Weights.verify(weights).get_state_dict(progress=False)
    # Offline or blocked: an OSError (URLError, timeouts). A damaged file: torch.load raises one of
    # the others, depending on where the bytes stop making sense.
    except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as e:
        raise WeightsUnavailable(f"{type(e).__name__}: {e}") from e


def load_vgg19_loss(weights, device):
    """VGG19Loss on `device`; or None, said on stderr, when its weights cannot be had, so that
    training goes on with the MSE loss only, as in the original. Other errors are bugs: raised."""
    try:
        return VGG19Loss(weights).to(device, memory_format=torch.channels_last)
    except WeightsUnavailable as e:
        from torchvision.models import VGG19_Weights

        url = VGG19_Weights.verify(weights).url
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        cached = folder / Path(url).name
        fix = f"download {url} and put it in {folder}/"
        if cached.exists():
            fix = f"delete {cached}, it looks damaged, then connect once or {fix}"
        print(
            f"Could not load the pretrained VGG19 weights ({e}); {fix}. Training with the MSE "
            f"loss only; set perceptual_weight = 0 to skip VGG19 and this message.",
            file=sys.stderr,
        )
        return None
