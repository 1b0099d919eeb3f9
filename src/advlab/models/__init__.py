"""Architectures. Every model maps pixel-space inputs to logits; see `Classifier`."""
from advlab.models.base import Classifier, predict
from advlab.models.cnn import CNN
from advlab.models.densenet import DenseNet
from advlab.models.googlenet import GoogLeNet
from advlab.models.lenet import LeNet
from advlab.models.mlp import MLP, WideMLP
from advlab.models.mobilenet import MobileNetV2
from advlab.models.resnet import ResNet
from advlab.models.resnet9 import ResNet9
from advlab.models.vgg import VGG

__all__ = ["Classifier", "CNN", "MLP", "WideMLP", "ResNet", "ResNet9", "VGG", "DenseNet", "GoogLeNet", "LeNet", "MobileNetV2",
           "build_model", "build_from_record", "predict"]


def build_model(arch_cfg, datamodule) -> Classifier:
    """Instantiate an `arch` config (a `_partial_` target) for a set-up datamodule's shape and classes."""
    from hydra.utils import instantiate

    from advlab.errors import ConfigError

    factory = instantiate(arch_cfg)
    try:
        return factory(input_shape=datamodule.input_shape, num_classes=datamodule.num_classes, mean=datamodule.mean, std=datamodule.std)
    except ConfigError as err:  # knobs the pre-flight could not check (a shape known only once the data is read)
        raise err.under("arch", "arch") from None


def build_from_record(record: dict) -> Classifier:
    """Rebuild a model from the record a method stores in its checkpoint (`record_configs`)."""
    from types import SimpleNamespace

    import torch

    shape = SimpleNamespace(input_shape=tuple(record["input_shape"]), num_classes=int(record["num_classes"]),
                            mean=torch.tensor(record["mean"]), std=torch.tensor(record["std"]))
    return build_model(record["arch"], shape)
