"""The trainable network: a patch-feature backbone (SNN or ResNet-18) and a small per-patch head.

`HeadedBackbone(x)` maps a (B,1,H,W) rail crop to class probabilities per stride-8 cell, (B,K,H/8,W/8),
channel 0 "normal". It exports to ONNX/TorchScript as one graph; `HeadScorer` reads its output."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class PatchHead(nn.Module):
    """BatchNorm of the backbone features (spike rates and membrane means differ in scale by orders
    of magnitude), the row context (features averaged across the rail width: a joint spans the whole
    head, a squat does not), then 3x3 conv, 3x3 conv (dilated by `dilation`: wider context, e.g. how
    far a dark patch spreads) and 1x1 class logits."""

    def __init__(self, in_channels: int, classes: int, width: int = 64, row_context: bool = True, dilation: int = 1) -> None:
        super().__init__()
        self.row_context = row_context
        self.dilation = int(dilation)
        self.norm = nn.BatchNorm2d(in_channels)
        c = in_channels * (2 if row_context else 1)
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=self.dilation, dilation=self.dilation), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        self.logits = nn.Conv2d(width, classes, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = self.norm(f)
        if self.row_context:
            f = torch.cat([f, f.mean(dim=3, keepdim=True).expand_as(f)], 1)
        return self.logits(self.body(f))


class HeadedBackbone(nn.Module):
    """Backbone + head. `forward` gives softmax probabilities (what the exported graph outputs);
    `logits` gives the raw logits for training."""

    def __init__(self, backbone: nn.Module, classes: int, width: int = 64, row_context: bool = True, dilation: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = PatchHead(int(backbone.out_channels), classes, width, row_context, dilation)
        self.stride = int(backbone.stride)
        self.out_channels = classes

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.logits(x), dim=1)

    def head_meta(self) -> dict[str, Any]:
        return {"width": self.head.logits.in_channels, "row_context": self.head.row_context, "dilation": self.head.dilation}

    @classmethod
    def from_meta(cls, backbone: nn.Module, scoring: dict[str, Any]) -> "HeadedBackbone":
        """Rebuild the network described by a model's `scoring` entry (weights loaded separately)."""
        head = scoring.get("head", {})
        return cls(backbone, len(scoring["classes"]), int(head.get("width", 64)), bool(head.get("row_context", True)),
                   int(head.get("dilation", 1)))
