"""What a run writes: the results.json schema, TensorBoard, PNG figures, markdown tables."""
