"""Quality of a converted model: `slmops eval`, `slmops validate`, `slmops sweep`.

from slmops.evaluate import evaluate_quality, validate
report = evaluate_quality("my-model-int4", reference="my-model-fp32")
print(report.figures.delta_ppl_pct, report.figures.kld_mean)
"""

from slmops.evaluate.quality import QualityReport, evaluate_quality
from slmops.evaluate.suite import load_suite, run_suite
from slmops.evaluate.validate import ValidationReport, validate

__all__ = ["evaluate_quality", "QualityReport", "load_suite", "run_suite", "validate", "ValidationReport"]
