"""The studies stand on the package's public API and on the shared harness (`benchmarks/harness/`): no study imports
another study or a private name of the package (`_name`, or any name from a `_module`); the harness imports no
study. Every import statement counts, inside functions too."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT


BENCHMARKS = ROOT / "benchmarks"
STUDIES = sorted(BENCHMARKS.glob("*.py"))
HARNESS = sorted((BENCHMARKS / "harness").glob("*.py"))


def _imports(path) -> list[tuple[int, str, list[str]]]:
    """`(line, module, names)` for every import statement of `path` (`names` empty for `import module`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))  # __version__ is public


@pytest.mark.parametrize("path", STUDIES + HARNESS, ids=lambda path: path.relative_to(BENCHMARKS).as_posix())
def test_a_study_imports_no_other_study_and_no_private_name(path):
    studies = {study.stem for study in STUDIES}
    where = path.relative_to(ROOT)
    for line, module, names in _imports(path):
        top = module.split(".")[0]
        assert top not in studies, f"{where}:{line} imports the study {module}: move what is shared into harness/"
        if top != "optimum_gatenorm":
            continue
        private = [part for part in module.split(".") if _private(part)] + [name for name in names if _private(name)]
        assert not private, f"{where}:{line} imports {private} from {module}: use the public API or make it public"


def test_the_harness_is_what_the_studies_share():
    users = {path.stem for path in STUDIES if any(module.startswith("harness") for _, module, _ in _imports(path))}
    assert {"gpu_study", "gpu_serving_study", "quality_study", "criterion_study", "replacement_study"} <= users
    for path in HARNESS:
        for line, module, _ in _imports(path):
            assert module.split(".")[0] not in {study.stem for study in STUDIES}, f"{path}:{line} imports a study"
