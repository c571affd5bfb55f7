"""AnoGAN (Schlegl et al., IPMI 2017).

One category with the method's declared defaults: image size, epochs and batch size as its
class sets them (its docstring gives the paper's settings and every deviation). Override any
field with `--config.FIELD=VALUE`."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("anogan", arg)
