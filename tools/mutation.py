"""Mutation score per core module (``make mutation``): mutmut 3, each module against its own tests.

mutmut reads one ``[tool.mutmut]`` table from ``./pyproject.toml`` and keeps its state in
``./mutants``. To score each module against *its* tests only, this script gives every module a
scratch directory under ``.cache/mutation/<name>/`` (``src`` and ``tests`` are symlinks, the
pyproject carries that module's ``only_mutate`` and test selection), runs ``mutmut run`` there and
prints killed/total. A second run only re-tests mutants whose function changed (mutmut's cache).

Usage: ``python tools/mutation.py [name ...] [--max-children N] [--survivors]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {  # name -> (module to mutate, the tests that score it)
    "core": ("src/danlu/core.py", ["tests/core"]),
    "fgm": (
        "src/danlu/adversarial/fgm.py",
        ["tests/adversarial/test_fgm.py", "tests/adversarial/test_fgm_pgd_mutation.py"],
    ),
    "pgd": (
        "src/danlu/adversarial/pgd.py",
        ["tests/adversarial/test_pgd.py", "tests/adversarial/test_fgm_pgd_mutation.py"],
    ),
    "ema": ("src/danlu/optim/ema.py", ["tests/optim/test_ema.py", "tests/optim/test_ema_mutation.py"]),
    "stats": ("src/danlu/lab/stats.py", ["tests/lab/test_lab_stats.py"]),
}
# Left out: multi-process (gloo) tests (a mutant that breaks them hangs until mutmut's CPU
# limit, 20-50 s each) and the slow tiny-BERT / torch.compile variants (10-20 s each on a
# loaded machine, and the same code paths as the small-model variants): with them a run
# takes hours on 2 cores.
PYTEST_ARGS = ["-p", "no:cacheprovider", "-q", "-x", "-k", "not ddp and not bert and not compile"]
KILLED = {1, 3, 36, 24, -24, 152, 255}  # a failing test or a timeout (mutmut's own classes)


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _prepare(name: str) -> Path:
    module, tests = MODULES[name]
    work = ROOT / ".cache" / "mutation" / name
    work.mkdir(parents=True, exist_ok=True)
    for link in ("src", "tests"):
        if not (work / link).exists():
            (work / link).symlink_to(ROOT / link)
    tests = [t for t in tests if (ROOT / t).exists()]
    # the project's pyproject (pytest settings) without its own [tool.mutmut] table
    base = re.sub(
        r"^\[tool\.mutmut\][^\n]*\n(?:(?!\[).*\n|\n)*", "",
        (ROOT / "pyproject.toml").read_text("utf-8"), flags=re.M,
    )
    (work / "pyproject.toml").write_text(
        base
        + "[tool.mutmut]\n"
        + 'source_paths = ["src/danlu"]\n'
        + f"only_mutate = {_toml_list([module])}\n"
        + f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        + f"pytest_add_cli_args = {_toml_list(PYTEST_ARGS)}\n",
        "utf-8",
    )
    return work


def _score(work: Path, module: str) -> tuple[int, int, list[str]]:
    meta = json.loads((work / "mutants" / f"{module}.meta").read_text("utf-8"))
    codes = meta["exit_code_by_key"]
    survivors = sorted(k for k, v in codes.items() if v not in KILLED)
    return len(codes) - len(survivors), len(codes), survivors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(MODULES), choices=[*MODULES, []])
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    args = parser.parse_args(argv)
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    rows = []
    for name in args.names:
        work = _prepare(name)
        # one thread: mutmut forks workers from a process that has run torch, and a forked
        # child that enters an OpenMP parallel region the parent used can hang (0% CPU, so
        # mutmut's CPU-time limit never ends it); it also shares 2 cores fairly
        env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run(
            [mutmut, "run", "--max-children", str(args.max_children)],
            cwd=work, env=env, check=False, stdout=subprocess.DEVNULL,
        )
        killed, total, survivors = _score(work, MODULES[name][0])
        rows.append((name, killed, total))
        print(f"{MODULES[name][0]}: {killed}/{total} killed ({100 * killed / max(total, 1):.1f}%)")
        if args.survivors:
            for s in survivors:
                print(f"    survived: {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
