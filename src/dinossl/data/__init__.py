"""Images -> crops: image sources, the multi-crop augmentation, the training loader."""

from dinossl.data.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation, evaluation_transform
from dinossl.data.images import ArrayImages, ImageFolder, UnreadableImage, open_images
from dinossl.data.loader import MultiCropDataset, ShardedEpochSampler, build_train_loader, collate_crops

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayImages",
    "ImageFolder",
    "MultiCropAugmentation",
    "MultiCropDataset",
    "ShardedEpochSampler",
    "UnreadableImage",
    "build_train_loader",
    "collate_crops",
    "evaluation_transform",
    "open_images",
]
