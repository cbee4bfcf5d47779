"""Calibrated 4-bit quantisation: activation-aware scales (AWQ) and error-compensating
rounding (GPTQ) into the group-wise ``q4_gG`` formats, from a calibration text."""

from linly_engine.calibrate.pipeline import METHODS, Calibrator, calibration_sequences

__all__ = ["METHODS", "Calibrator", "calibration_sequences"]
