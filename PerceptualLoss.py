"""VGG19 perceptual loss: how far apart two images are in the eyes of an ImageNet classifier.

Both images go through VGG19's convolutional layers up to conv4_4 and its ReLU; the loss is the
sum over every ReLU output in that range (relu1_1 ... relu4_4, 12 feature maps) of the mean
squared difference. Inputs are used as they are, in [0, 1], without ImageNet normalisation, as
in the original project. The VGG is frozen: only the image being compared receives gradients.
"""

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import VGG19_Weights, vgg19

# features[:27] ends with the ReLU after conv4_4 (relu4_4).
NUM_LAYERS = 27


class VGG19Loss(nn.Module):
    """Sum of the MSEs between the 12 ReLU feature maps of two images, relu1_1 to relu4_4.

    `weights` is a torchvision `VGG19_Weights` entry (downloaded once into TORCH_HOME's cache,
    then read from there) or None for random weights, which tests use to stay offline.
    """

    def __init__(self, weights=VGG19_Weights.IMAGENET1K_V1):
        super().__init__()
        # Built on the meta device: the full VGG19 has 143M parameters, most of them in the
        # classifier we drop, and initialising them on the CPU costs seconds for nothing.
        with torch.device("meta"):
            layers = vgg19().features[:NUM_LAYERS]
        if weights is None:
            layers.to_empty(device="cpu")
            for layer in layers:
                if isinstance(layer, nn.Conv2d):  # torchvision's own VGG initialisation
                    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
        else:
            state = weights.get_state_dict(progress=True)
            kept = {name.removeprefix("features."): tensor for name, tensor in state.items()
                    if name.startswith("features.") and int(name.split(".")[1]) < NUM_LAYERS}
            layers.load_state_dict(kept, assign=True)
        self.features = layers
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        # Frozen for good: Deblur's net.train() must never switch the VGG out of eval mode.
        return super().train(False)

    def feature_maps(self, image):
        """The 12 ReLU outputs of `image`, shallowest first."""
        maps = []
        for layer in self.features:
            image = layer(image)
            if isinstance(layer, nn.ReLU):
                maps.append(image)
        return maps

    def forward(self, prediction, target):
        return perceptual_distance(self.feature_maps(prediction), self.feature_maps(target))


def perceptual_distance(maps, target_maps):
    """Sum of the MSEs between matching feature maps: the perceptual loss itself.

    Separate from VGG19Loss.forward so that training can compute the fixed target's maps once.
    """
    return sum(F.mse_loss(m, t) for m, t in zip(maps, target_maps, strict=True))
