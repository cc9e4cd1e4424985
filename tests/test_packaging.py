"""The wheel ships what a user of a typed MIT library expects (read from pyproject and the tree;
building a wheel is too slow for ``make test`` — checked by hand, see CHANGELOG.md)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))


def test_py_typed_marker_is_package_data():
    assert (ROOT / "src" / "danlu" / "py.typed").is_file()
    assert "py.typed" in PROJECT["tool"]["setuptools"]["package-data"]["danlu"]


def test_license_file_matches_the_declared_license():
    meta = PROJECT["project"]
    assert meta["license"] == "MIT"
    assert meta["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text("utf-8")
    assert text.startswith("MIT License") and "Copyright (c) 2026 the danlu developers" in text


def test_classifiers_cover_typing_and_the_supported_pythons():
    classifiers = PROJECT["project"]["classifiers"]
    assert "Typing :: Typed" in classifiers
    low = PROJECT["project"]["requires-python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {low}" in classifiers
    # PEP 639: the license expression only; setuptools >= 77 refuses to build with both
    # ("License classifiers have been superseded by license expressions").
    assert not any(c.startswith("License ::") for c in classifiers)


def test_one_version_in_pyproject_package_and_changelog():
    import danlu

    version = PROJECT["project"]["version"]
    assert danlu.__version__ == version == "0.2.0"
    assert f"## {version} (unreleased)" in (ROOT / "CHANGELOG.md").read_text("utf-8")
