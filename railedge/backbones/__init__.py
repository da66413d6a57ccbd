"""torch backbones (fitting, training, export). The edge runtime never imports this package."""

from __future__ import annotations

from torch import nn

from railedge.config import ModelConfig


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """A module mapping (B,1,H,W) normalised crops to (B,F,H/s,W/s) patch features; it has
    `.stride` and `.out_channels`."""
    if cfg.backbone == "snn":
        from railedge.backbones.snn import SnnBackbone

        return SnnBackbone(cfg.snn)
    from railedge.backbones.resnet import ResnetBackbone

    return ResnetBackbone(cfg.resnet)
