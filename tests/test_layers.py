"""The layers show in the folders, and a lower layer never imports a higher one (read from the source, every
import statement, at module top or not)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "foveal"
# floor of each top-level part of the package: a module may import only its own floor and those below
FLOORS = {"config": 0, "jsonio": 0, "log": 0, "data": 1, "model": 2, "objectives": 3, "evaluation": 4, "train": 5}
FLOORS |= {"analysis": 6, "api": 7, "cli": 7, "__init__": 8, "__main__": 8}


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def own_imports(path: Path) -> list[tuple[str, bool]]:
    """(foveal module imported, at module top?) for every import statement of the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("foveal"):
            out.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names if a.name.startswith("foveal")]
    return out


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down_and_sit_at_the_top(path):
    module = "foveal." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    floor = FLOORS[part(module.removesuffix(".__init__"))]
    for imported, at_top in own_imports(path):
        if imported == "foveal":
            continue
        assert FLOORS[part(imported)] <= floor, f"{module} (floor {floor}) imports the higher {imported}"
        assert at_top, f"{module}: function-level import of {imported}"


def test_the_floors_cover_every_part_of_the_package():
    parts = {
        p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert parts == set(FLOORS)
