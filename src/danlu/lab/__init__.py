"""danlu.lab: measure whether a trick, or a stack of tricks, really helps on a task.

A grid of combos × seeds (× training-set sizes) is run cell by cell (resumable, in worker
processes or on Ray), each cell a full fine-tune with model selection on a dev split and one
final test evaluation whose predictions are kept. The report gives four verdicts per
comparison (helps, hurts, equivalent within ±m, undecided) from a group-sequential design
with Holm's correction, so ``seeds="auto"`` can add seeds only where they decide something;
beside them the exact sign-flip test, power, a multi-bootstrap over seeds × test examples,
P(beats base on a fresh seed), flipped examples, diverged runs, a convergence control,
step- and time-matched bases, interactions and cost ratios. Command line:
``danlu lab tasks | tricks | run | report``.

Example (your own task; see docs/lab.md)::

    from danlu.lab import Task, run_lab, write_report
    task = Task("mine", data=(train, test), build=build, lang="en")
    run_lab(task, ["base", "fgm", "ema", "fgm+ema"], seeds="auto", out="runs/mine")
    print(write_report("runs/mine"))
"""

from danlu.lab.atoms import ATOMS, Atom, RunContext
from danlu.lab.cell import Cell, run_cell
from danlu.lab.models import TextCNN, TokenEncoder
from danlu.lab.report import build_report, write_report
from danlu.lab.runner import plan_cells, run_lab
from danlu.lab.task import Task, classification_loss
from danlu.lab.tasks import TASKS, get_task

__all__ = [
    "ATOMS", "Atom", "RunContext", "Cell", "run_cell", "TextCNN", "TokenEncoder",
    "build_report", "write_report", "plan_cells", "run_lab", "Task", "classification_loss",
    "TASKS", "get_task",
]  # fmt: skip
