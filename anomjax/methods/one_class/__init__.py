"""One-class methods: a tight description of normality (Deep SVDD, Patch SVDD, FCDD)."""

from anomjax.methods.one_class.deep_svdd import DeepSVDD
from anomjax.methods.one_class.fcdd import FCDD
from anomjax.methods.one_class.patch_svdd import PatchSVDD

__all__ = ["FCDD", "DeepSVDD", "PatchSVDD"]
