"""The stream processor: faust agents that decide, sign and send (see app.py)."""

from gatepass.worker.pipeline import IntentOutcome, Outgoing, Pipeline

__all__ = ["IntentOutcome", "Outgoing", "Pipeline"]
