"""railedge: rail-surface defect detection on the edge with spiking and ResNet-18 backbones."""

__version__ = "0.1.0"
