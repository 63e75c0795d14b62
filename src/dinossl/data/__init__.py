"""Images -> crops: image sources, the multi-crop augmentation, the training loader."""

from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation, evaluation_transform
from dinossl.data.images import ArrayImages, ImageFolder, UnreadableImage
from dinossl.data.sample import open_images
from dinossl.data.geometric_crops import GeometricMultiCrop
from dinossl.data.loader import (
    MultiCropDataset,
    ShardedEpochSampler,
    build_multicrop_transform,
    build_train_loader,
    collate_crops,
)
from dinossl.data.photometric import apply_photometric, to_model_input
from dinossl.data.photometric_params import RawCrops

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayImages",
    "GeometricMultiCrop",
    "ImageFolder",
    "MultiCropAugmentation",
    "MultiCropDataset",
    "RawCrops",
    "ShardedEpochSampler",
    "UnreadableImage",
    "apply_photometric",
    "build_multicrop_transform",
    "build_train_loader",
    "collate_crops",
    "evaluation_transform",
    "open_images",
    "to_model_input",
]
