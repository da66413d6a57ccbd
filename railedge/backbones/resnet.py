"""ResNet-18 patch-feature extractor (torchvision), cut after layer2/layer3, PatchCore-style."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from railedge.config import ResnetConfig
from railedge.errors import ModelError

_CHANNELS = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def load_resnet18(weights: str) -> torchvision.models.ResNet:
    """weights: 'none' (random init), 'imagenet' (torchvision's weight enum; downloads when
    online) or a path to a state dict saved with torch.save."""
    if weights == "none":
        return torchvision.models.resnet18(weights=None)
    if weights == "imagenet":
        try:
            return torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
        except Exception as e:  # URLError, OSError, RuntimeError from the hub
            raise ModelError(
                "ResNet-18 ImageNet weights could not be loaded (offline?): "
                f"{e.__class__.__name__}. Download resnet18-f37072fd.pth elsewhere, copy it here and set "
                "model.resnet.weights=/path/to/resnet18-f37072fd.pth"
            ) from None
    p = Path(weights)
    if not p.is_file():
        raise ModelError(
            f"model.resnet.weights: {weights!r} is neither 'none', 'imagenet' nor an existing weight file; fix the path"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"weight file {str(p)!r} cannot be read as a torch state dict ({e.__class__.__name__}); is it a .pth file?") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = torchvision.models.resnet18(weights=None)
    try:
        model.load_state_dict(state, strict=False)
        missing = [k for k in model.state_dict() if k not in state and not k.startswith("fc.")]
    except RuntimeError as e:
        raise ModelError(f"weight file {str(p)!r} does not fit ResNet-18: {str(e).splitlines()[0]}") from None
    if missing:
        raise ModelError(f"weight file {str(p)!r} lacks {len(missing)} ResNet-18 tensors (e.g. {missing[0]}); is it a ResNet-18 state dict?")
    return model


class ResnetBackbone(nn.Module):
    """(B,1,H,W) normalised grayscale → (B, F, H/8, W/8) patch features: the chosen layers,
    resized to the stride-8 grid, concatenated, then 3×3 average-pooled (local neighbourhood
    aggregation, as PatchCore does)."""

    def __init__(self, cfg: ResnetConfig) -> None:
        super().__init__()
        net = load_resnet18(cfg.weights)
        self.imagenet_norm = cfg.weights != "none"
        self.layers = tuple(sorted(cfg.layers, key=lambda n: _STRIDES[n]))
        last = self.layers[-1]
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.blocks = nn.ModuleDict({n: getattr(net, n) for n in ("layer1", "layer2", "layer3", "layer4")[: int(last[-1])]})
        self.stride = 8
        self.out_channels = sum(_CHANNELS[n] for n in self.layers)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1)
        if self.imagenet_norm:
            # our inputs sit near 0.5 for normal rail; ImageNet statistics expect [0,1] images
            x = (x - self.mean) / self.std
        h, w = x.shape[-2] // self.stride, x.shape[-1] // self.stride
        x = self.stem(x)
        feats = []
        for name, block in self.blocks.items():
            x = block(x)
            if name in self.layers:
                f = x if _STRIDES[name] == self.stride else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
                feats.append(f)
        out = torch.cat(feats, dim=1)
        return F.avg_pool2d(out, 3, stride=1, padding=1)
