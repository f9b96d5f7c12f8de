"""Semi-supervised methods: one file per method, each owning only its loss (docs/architecture.md §2)."""

from __future__ import annotations

from .adversarial import AdversarialMethod
from .base import SSLMethod
from .bpl import BPLMethod
from .cps import CrossPseudoSupervisionMethod
from .entropy_min import EntropyMinimisationMethod
from .ict import ICTMethod
from .layer_ensembles import LayerEnsemblesMeanTeacherMethod, LayerEnsemblesMethod
from .mean_teacher import MeanTeacherMethod, teacher_noise
from .supervised import SupervisedMethod
from .uamt import UAMTMethod, UncertainTeacherOutput
from .ugpcl import UGPCLMethod
from .urpc import URPCMethod

__all__ = ["SSLMethod", "SupervisedMethod", "MeanTeacherMethod", "teacher_noise", "UAMTMethod",
           "UncertainTeacherOutput", "EntropyMinimisationMethod", "ICTMethod", "URPCMethod",
           "AdversarialMethod", "CrossPseudoSupervisionMethod", "BPLMethod"]
__all__ += ["LayerEnsemblesMethod", "LayerEnsemblesMeanTeacherMethod"]
__all__ += ["UGPCLMethod"]
