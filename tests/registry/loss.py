"""Loss tricks (the tiny model's batch is a dict with "labels")."""

from danlu.loss import Focal, LabelSmoothing, RDrop, TemperatureCE

FACTORIES = {
    "Focal": lambda model, opt: Focal(gamma=2.0, alpha=[1.0, 2.0, 0.5]),
    "RDrop": lambda model, opt: RDrop(alpha=4.0),
    "RDropDuplicate": lambda model, opt: RDrop(alpha=4.0, mode="duplicate"),
    "LabelSmoothing": lambda model, opt: LabelSmoothing(0.1),
    "TemperatureCE": lambda model, opt: TemperatureCE(2.0),
}
