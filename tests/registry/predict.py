"""Training-time tricks of danlu.predict (snapshot ensembles)."""

from danlu.predict import SnapshotEnsemble

FACTORIES = {
    "SnapshotEnsemble": lambda model, opt: SnapshotEnsemble(model, opt, cycle_steps=2),
}
