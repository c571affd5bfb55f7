"""Knowledge-distillation methods: a student imitates a frozen pretrained teacher on normal
images; where it fails to, the image is anomalous."""

from anomjax.methods.distillation.mkd import MKD
from anomjax.methods.distillation.reverse_distillation import ReverseDistillation
from anomjax.methods.distillation.stpm import STPM
from anomjax.methods.distillation.uninformed_students import UninformedStudents

__all__ = ["MKD", "STPM", "ReverseDistillation", "UninformedStudents"]
