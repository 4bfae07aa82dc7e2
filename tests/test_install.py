"""The library stands alone: `pip install .` into a fresh venv, used from outside the repository.

The fresh venv gets its dependencies (torch, timm, SMP, ...) from this test's own environment through a `.pth` line,
so the test installs only `zoo` itself (a plain, non-editable install) in seconds. Run from a temporary folder, the
installed `zoo` builds a model, trains a step and runs the two-stage pipeline on a batch source it is handed; the
repository's `datasets`, `benchmarks` and `leaderboards` are not importable there, and Hugging Face's name
`datasets` stays free.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import functools, importlib.util, sys
    import torch
    import zoo
    from zoo.pipeline import PipelineConfig, launch
    from zoo.train import TrainConfig, Trainer

    assert "site-packages" in zoo.__file__, zoo.__file__
    for name in ("datasets", "benchmarks", "leaderboards"):
        assert importlib.util.find_spec(name) is None, name
    torch.manual_seed(0)
    model = zoo.create_model("paper_vgg", num_classes=10, width=0.125, img_size=16)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    Trainer(model, TrainConfig(), total_steps=1).train_step(x, y)
    builder = functools.partial(zoo.create_model, "paper_vgg", num_classes=10, width=0.125, img_size=16)
    cfg = PipelineConfig(stages=2, steps=3, warmup_steps=1, partition=[2, 2], verbose=False)
    result = launch(cfg, builder, [(x, y)])
    assert result.partition == [2, 2] and len(result.stages) == 2
    print("installed zoo OK", zoo.__file__)
    """
)


@pytest.mark.dist
def test_pip_install_into_a_fresh_venv_works_outside_the_repository(tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co. from this environment
    pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(ROOT)]
    # the build backend (setuptools) comes from this environment too: the fresh venv's own may predate bdist_wheel
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    subprocess.run(pip, check=True, cwd=tmp_path, timeout=300, env=env)
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run([py, "-c", SCRIPT], cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "installed zoo OK" in out.stdout and str(env_dir) in out.stdout


def test_zoo_never_imports_the_repository_packages():
    for path in (ROOT / "zoo").rglob("*.py"):
        text = path.read_text()
        for pkg in ("datasets", "benchmarks", "leaderboards"):
            assert f"import {pkg}" not in text and f"from {pkg}" not in text, f"{path} imports {pkg}"


def test_zoo_import_graph_has_no_cycle():
    code = "import json, sys, zoo, zoo.pipeline, zoo.publish, zoo.grow; print(json.dumps(sorted(sys.modules)))"
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "zoo.pipeline" in mods
    graph = _import_graph(ROOT / "zoo")
    seen, stack = set(), []

    def visit(m: str) -> None:
        assert m not in stack, f"import cycle: {' -> '.join(stack[stack.index(m) :] + [m])}"
        if m in seen:
            return
        stack.append(m)
        for d in graph.get(m, ()):
            visit(d)
        stack.pop()
        seen.add(m)

    for m in graph:
        visit(m)


def _import_graph(pkg: Path) -> dict[str, set[str]]:
    """Module → the zoo modules it imports (top-level and function-level, relative or absolute)."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in pkg.rglob("*.py"):
        parts = path.relative_to(pkg.parent).with_suffix("").parts
        mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = ".".join(parts[:-1])
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                if base.startswith("zoo"):
                    deps.add(base)
                    deps.update(f"{base}.{a.name}" for a in node.names if _is_module(pkg, f"{base}.{a.name}"))
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("zoo"))
        deps.discard(mod)
        graph[mod] = {d for d in deps if not mod.startswith(d + ".") and d != "zoo"}  # a package's own __init__
    return graph


def _is_module(pkg: Path, name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (pkg / rel).with_suffix(".py").is_file() or (pkg / rel / "__init__.py").is_file()
