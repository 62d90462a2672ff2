"""The accuracy criterion: how much top-1 accuracy an int8 model may lose against its fp32 baseline.

One rule for tuning (INC's loop and the independent re-evaluation), the benchmark's CI gate and
validate's accuracy check: a ``relative`` tolerance ``t`` allows a drop of ``baseline * t``, an
``absolute`` one a drop of ``t``; a model passes when ``baseline - accuracy <= budget`` (an
improvement always passes). Accuracies are top-1 fractions (:func:`quant.runtime.evaluation.accuracy`).
"""

from __future__ import annotations

from dataclasses import dataclass

EPS = 1e-12  # float slack: a drop exactly at the budget passes


@dataclass(frozen=True)
class Criterion:
    kind: str  # "relative" | "absolute"
    tolerance: float

    @classmethod
    def of(cls, criterion: tuple[str, float]) -> "Criterion":
        """From the config's ``(kind, tolerance)`` pair (``Config.criterion``)."""
        kind, tol = criterion
        return cls(kind, float(tol))

    def budget(self, baseline: float) -> float:
        """The largest allowed drop (a fraction) below ``baseline``."""
        return baseline * self.tolerance if self.kind == "relative" else self.tolerance

    def min_accuracy(self, baseline: float) -> float:
        return baseline - self.budget(baseline)

    def meets(self, baseline: float, accuracy: float) -> bool:
        return baseline - accuracy <= self.budget(baseline) + EPS

    def text(self) -> str:
        return f"{self.kind} {self.tolerance:g}"


def budget(criterion: tuple[str, float], baseline: float, max_drop: float | None = None) -> float:
    """The allowed drop: ``max_drop`` (``--max_accuracy_drop``) when given, else the criterion's."""
    return max_drop if max_drop is not None else Criterion.of(criterion).budget(baseline)


def gate(baseline_acc: float, model_acc: float, budget: float) -> dict:
    """The gate's verdict for one model: ``{max_accuracy_drop, accuracy_drop, passed, verdict}``."""
    drop = baseline_acc - model_acc
    passed = drop <= budget + EPS
    verdict = (f"GATE {'PASSED' if passed else 'FAILED'}: accuracy drop {100 * drop:.2f} pp "
               + (f"<= budget {100 * budget:.2f} pp (margin {max(0.0, 100 * (budget - drop)):.2f} pp)" if passed
                  else f"exceeds budget {100 * budget:.2f} pp by {100 * (drop - budget):.2f} pp")
               + f" (model {100 * model_acc:.2f} % vs baseline {100 * baseline_acc:.2f} %)")
    return {"max_accuracy_drop": budget, "accuracy_drop": drop, "passed": bool(passed), "verdict": verdict}
