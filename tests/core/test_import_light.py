"""`import danlu` (and every core subpackage) loads no optional dependency."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["transformers", "jieba", "nlpaug", "matplotlib", "cleanlab", "nltk", "lightning",
         "sklearn", "scipy", "pandas"]  # (torch itself imports tqdm)

SCRIPT = """
import importlib, pkgutil, sys, danlu
assert not [m for m in {heavy} if m in sys.modules], "import danlu loaded heavy modules"
for info in pkgutil.walk_packages(danlu.__path__, "danlu."):
    if info.name.startswith("danlu.integrations."):
        continue  # integrations exist to import their framework
    importlib.import_module(info.name)
print(",".join(sorted(m for m in {heavy} if m in sys.modules)))
"""


def test_import_danlu_and_subpackages_load_no_optional_dependency():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", f"optional modules imported eagerly: {out.stdout.strip()}"
