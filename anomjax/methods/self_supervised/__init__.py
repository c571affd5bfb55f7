"""Self-supervised methods: they learn from anomalies they make themselves (RIAD, CutPaste,
DRAEM with optional SSPCAB)."""

from anomjax.methods.self_supervised.cutpaste import CutPaste
from anomjax.methods.self_supervised.draem import DRAEM
from anomjax.methods.self_supervised.riad import RIAD

__all__ = ["DRAEM", "RIAD", "CutPaste"]
