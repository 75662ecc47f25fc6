"""What a run writes, on top of everything else: results.json, TensorBoard, the PNG figures,
the end-of-run tables, what an interrupt leaves; and `compare`'s tables and overlays. The
results.json types and readers are `lit_massive.results`, the figures `lit_massive.figures`."""
