"""The Session: step, inspect, CROSS, edit and record one model on one image (what the views call)."""
from engine.session.edits import EditError
from engine.quant.modes import Mode
from engine.session.results import ContinueResult, CrossResult, RerunResult, StepResult
from engine.session.session import Session

__all__ = ["Session", "Mode", "StepResult", "CrossResult", "ContinueResult", "RerunResult", "EditError"]
