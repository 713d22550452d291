"""Data: image folders, class maps, pixel transforms, toy cells and MedMNIST import."""

from .classmap import CLASS_MAP_FILE, ClassMap
from .folder import (
    ImageArrayDataset,
    ImageFolderDataset,
    epoch_order,
    image_channels,
    images_to_tensor,
    infinite_batches,
    load_image,
)
from .naming import declared_classes, label_of, list_images, safe_class_name
from .toy import CLASS_NAMES as TOY_CLASS_NAMES
from .toy import generate as generate_toy
from .toy import subtype_of, toy_arrays, toy_class_map
from .transforms import save_png, to_tensor, to_uint8

__all__ = [
    "CLASS_MAP_FILE",
    "ClassMap",
    "ImageArrayDataset",
    "ImageFolderDataset",
    "TOY_CLASS_NAMES",
    "declared_classes",
    "epoch_order",
    "generate_toy",
    "image_channels",
    "images_to_tensor",
    "infinite_batches",
    "label_of",
    "list_images",
    "load_image",
    "safe_class_name",
    "save_png",
    "subtype_of",
    "to_tensor",
    "to_uint8",
    "toy_arrays",
    "toy_class_map",
]
