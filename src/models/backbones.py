"""Legacy import path of the backbones; they live in src/models/zoo/ now."""

from src.models.zoo import get_backbone
from src.models.zoo.torchvision_models import BACKBONES, BackboneSpec, ViTFeatures

__all__ = ["BACKBONES", "BackboneSpec", "ViTFeatures", "get_backbone"]
