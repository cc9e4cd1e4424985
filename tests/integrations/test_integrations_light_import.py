"""``import danlu.integrations`` must not import transformers, accelerate or lightning."""

from __future__ import annotations

import subprocess
import sys


def test_package_import_pulls_no_framework():
    code = (
        "import sys, danlu.integrations\n"
        "heavy = [m for m in ('transformers', 'accelerate', 'lightning', 'pytorch_lightning')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_averaging_helper_is_light():
    code = (
        "import sys\n"
        "from danlu.integrations._average import averaged_weights\n"
        "print('transformers' in sys.modules or 'lightning' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
