"""Architectures. Every model maps pixel-space inputs to logits; see `Classifier`."""
from advlab.models.base import Classifier, predict
from advlab.models.cnn import CNN
from advlab.models.densenet import DenseNet
from advlab.models.googlenet import GoogLeNet
from advlab.models.mlp import MLP, WideMLP
from advlab.models.mobilenet import MobileNetV2
from advlab.models.resnet import ResNet
from advlab.models.resnet9 import ResNet9
from advlab.models.vgg import VGG

__all__ = ["Classifier", "CNN", "MLP", "WideMLP", "ResNet", "ResNet9", "VGG", "DenseNet", "GoogLeNet", "MobileNetV2",
           "build_model", "build_from_record", "predict"]


def build_model(arch_cfg, datamodule) -> Classifier:
    """Instantiate an `arch` config (a `_partial_` target) for a set-up datamodule's shape and classes."""
    from hydra.utils import instantiate

    factory = instantiate(arch_cfg)
    return factory(input_shape=datamodule.input_shape, num_classes=datamodule.num_classes, mean=datamodule.mean, std=datamodule.std)


def build_from_record(record: dict) -> Classifier:
    """Rebuild a model from the record a method stores in its checkpoint (`record_configs`)."""
    from types import SimpleNamespace

    import torch

    shape = SimpleNamespace(input_shape=tuple(record["input_shape"]), num_classes=int(record["num_classes"]),
                            mean=torch.tensor(record["mean"]), std=torch.tensor(record["std"]))
    return build_model(record["arch"], shape)
