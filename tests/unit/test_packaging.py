"""What ships with the pack agrees with itself: dependency lists, and the web extension's hygiene."""

from __future__ import annotations

import re

import tomllib

from layerfusion_dev.paths import REPO


def _names(lines: list[str]) -> dict[str, str]:
    specs = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")
            specs[name] = line.replace(" ", "")
    return specs


def test_requirements_and_pyproject_declare_the_same_dependencies():
    requirements = _names((REPO / "requirements.txt").read_text().splitlines())
    declared = _names(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert requirements == declared
    assert "torch" not in requirements and "torchvision" not in requirements  # ComfyUI's own, never ours


def test_the_web_extension_builds_elements_and_never_markup():
    for script in (REPO / "web").rglob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setAttribute(\"on"):
            assert sink not in code, f"{script.name} uses {sink}"
