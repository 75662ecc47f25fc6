"""What a forward pass records: block outputs, attention, sublayers, under temporary hooks."""

from lit_massive.probes.hooks import Needs, Probed, hooks, probes

__all__ = ["Needs", "Probed", "hooks", "probes"]
