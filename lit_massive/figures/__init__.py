"""Every figure of a run, as (fig, axes) pairs with no pyplot state: `figures` (profiles,
changes, head scores, sinks, the feature and attention views), `head_figures` (the attention
internals), `outlier_stats_figures`, `qkv_figures`, `weight_figures`; `style` (resolution, colours,
line styles, the legend rule) for all of them; `publishing` (what the analyses publish
through). Plain matplotlib and numpy, no torch. Importing this package imports nothing."""
