"""The Session: step, inspect, CROSS, edit and record one model on one image (what the views call)."""
from engine.session.edits import EditError
from engine.session.session import ContinueResult, CrossResult, Mode, Session, StepResult

__all__ = ["Session", "Mode", "StepResult", "CrossResult", "ContinueResult", "EditError"]
