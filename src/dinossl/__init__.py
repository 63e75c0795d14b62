"""dinossl: DINO self-distillation with no labels (Caron et al., 2021).

Pretraining (``dinossl.train``), models (``dinossl.models``), the objective
(``dinossl.objective``), evaluations (``dinossl.eval``) and released weights
(``dinossl.hub``). The ``dino`` command wraps them.
"""

__version__ = "0.1.0"
