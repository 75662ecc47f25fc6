"""The analyses a run can measure, one file each. Importing them here registers them, in
the order their keys appear in a variant's results.json entry.

A new analysis is one file holding a subclass of `Analysis` decorated with
`@register_analysis`, plus its import line below (or any import before the run starts).
"""

# the built-in analyses, in results.json order
from lit_massive.analyses import (
    components,  # noqa: E402, F401
    head_scores,  # noqa: E402, F401
    layer_profile,  # noqa: E402, F401, I001
    locator,  # noqa: E402, F401
    perplexity,  # noqa: E402, F401
)
from lit_massive.analyses.base import Analysis, Column, Forward, Setup, SumStatesMetric
from lit_massive.analyses.feature_view import FeatureView  # noqa: E402
from lit_massive.analyses.registry import (
    ANALYSES,
    analysis_class,
    columns_of,
    enabled_analyses,
    register_analysis,
    summary_columns_of,
    variant_entry,
)

__all__ = [
    "ANALYSES",
    "Analysis",
    "Column",
    "FeatureView",
    "Forward",
    "Setup",
    "SumStatesMetric",
    "analysis_class",
    "columns_of",
    "enabled_analyses",
    "register_analysis",
    "summary_columns_of",
    "variant_entry",
]
