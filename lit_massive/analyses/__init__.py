"""The analyses a run can measure, one file each. Importing them here registers them, in
the order their keys appear in a variant's results.json entry.

A new analysis is one file holding a subclass of `Analysis` decorated with
`@register_analysis`, plus its import line below (or any import before the run starts).
"""

from lit_massive.analyses.base import Analysis, Block, Column, Forward, Setup, SumStatesMetric
from lit_massive.analyses.registry import (
    ANALYSES,
    analysis_class,
    columns_of,
    enabled_analyses,
    register_analysis,
    summary_columns_of,
    variant_entry,
)

# The built-in analyses, in the order of their keys in a variant's results.json entry:
# importing a file registers its analysis. The order matters, so no import sorting here.
# isort: off
from lit_massive.analyses import layer_profile  # noqa: F401
from lit_massive.analyses import outlier_stats  # noqa: F401
from lit_massive.analyses import head_scores  # noqa: F401
from lit_massive.analyses import sink_rate  # noqa: F401
from lit_massive.analyses import learned_sinks  # noqa: F401
from lit_massive.analyses import secondary_sinks  # noqa: F401
from lit_massive.analyses import value_norms  # noqa: F401
from lit_massive.analyses import head_output  # noqa: F401
from lit_massive.analyses import massive_update  # noqa: F401
from lit_massive.analyses import logit_gap  # noqa: F401
from lit_massive.analyses import logit_factors  # noqa: F401
from lit_massive.analyses import qkv_dims  # noqa: F401
from lit_massive.analyses import perplexity  # noqa: F401
from lit_massive.analyses import locator  # noqa: F401
from lit_massive.analyses import components  # noqa: F401
from lit_massive.analyses import super_weights  # noqa: F401
from lit_massive.analyses import linear_inputs  # noqa: F401
from lit_massive.analyses.feature_view import FeatureView
# isort: on

__all__ = [
    "ANALYSES",
    "Analysis",
    "Block",
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
