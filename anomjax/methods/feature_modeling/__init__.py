"""Deep-feature-modeling methods: normal features of a frozen pretrained backbone, modelled.

Importing this package registers its methods.
"""

from anomjax.methods.feature_modeling.padim import PaDiM, SemiOrthogonalPaDiM
from anomjax.methods.feature_modeling.patchcore import PatchCore
from anomjax.methods.feature_modeling.spade import SPADE

__all__ = ["PaDiM", "PatchCore", "SPADE", "SemiOrthogonalPaDiM"]
