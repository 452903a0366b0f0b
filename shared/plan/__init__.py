"""`pgolf plan`: steps, time, memory, bytes and evaluation seconds of a config on some hardware.

    hardware.py   the hardware table, every figure with its source
    doclen.py     FineWeb validation document lengths (attention under the document mask, TTT)
    counts.py     exact counts: parameters, FLOPs, bytes, kernels, artifact bytes per scheme
    constants.py  implementation profiles (pgolf, record) and the fitted calibration table
    predict.py    the roofline time model, memory by component, evaluation, warnings, the Plan

Framework-free (numpy only). A training run never imports it by a static import: `pgolf train`
loads it by name for its one-line summary, so it is not part of the counted code.
"""

from shared.plan.hardware import HARDWARE, Hardware, get_hardware, names
from shared.plan.predict import Plan, make_plan, summary_line

__all__ = ["HARDWARE", "Hardware", "Plan", "get_hardware", "make_plan", "names", "summary_line"]
