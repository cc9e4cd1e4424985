"""Orchestrator-level tricks from the foundation."""

from danlu.optim import ClipGradNorm, ClipGradValue, GradNormMonitor, Schedule, linear_warmup

FACTORIES = {
    "ClipGradNorm": lambda model, opt: ClipGradNorm(0.5),
    "ClipGradValue": lambda model, opt: ClipGradValue(0.01),
    "GradNormMonitor": lambda model, opt: GradNormMonitor(),
    "Schedule": lambda model, opt: Schedule(linear_warmup(opt, 2, 10)),
}
