"""Datamodules: every split held in memory as tensors (see ``advlab.data.base``)."""
from advlab.data.base import (
    ArrayDataModule,
    BatchTensorDataset,
    crop_flip,
    make_loader,
    random_crop_flip,
    stratified_split,
)
from advlab.data.cifar_jpeg import CIFAR10JPEGDataModule
from advlab.data.digits import DigitsDataModule
from advlab.data.mnist_t10k import install_shared_mnist
from advlab.data.synthetic import SyntheticDataModule
from advlab.data.torchvision_data import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "ArrayDataModule",
    "BatchTensorDataset",
    "CIFAR10DataModule",
    "CIFAR10JPEGDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "crop_flip",
    "install_shared_mnist",
    "make_loader",
    "random_crop_flip",
    "stratified_split",
]
