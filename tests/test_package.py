"""The project as a Python package: a wheel (and ``pip install -e .``) installed into a fresh venv works
from outside the repository, with the bundled model, the app's assets, the C kernels' source and the
console scripts.

The fresh venvs get no pip and no downloads: a .pth file lets them see this venv's site-packages (torch,
gradio, pip, setuptools), listed after their own, so what they import from gpt2core and explorer is the
installed copy. The wheel is built from a copy of the source, so the repo gets no build/ or *.egg-info.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["gpt2-explorer", "gpt2-train", "gpt2-finetune", "gpt2-trace", "gpt2-classify"]
# What the build reads; a clean clone has nothing else these need.
SOURCES = ["pyproject.toml", "README.md", "requirements.txt", "gpt2core", "explorer", "checkpoints", "assets"]
BUNDLED = ["gpt2core/_bundled/checkpoints/shakespeare/model.safetensors",
           "gpt2core/_bundled/checkpoints/shakespeare/config.json",
           "gpt2core/_bundled/checkpoints/shakespeare/log.json",      # the Train tab's curve of the bundled run
           "explorer/_bundled/assets/train_demo.txt",                 # read when the Train tab is imported
           "gpt2core/kernels/csrc/kernels.c"]
MAX_WHEEL_MB = 25   # the model is 15 MB: more means something like runs/ or data/ slipped in

pytestmark = pytest.mark.slow

# Run by the fresh venv's python from a temporary cwd: imports, a forward, the tokenizer, the C kernels
# built from the installed source, the bundled model and the app's assets found, gpt2core.analysis.trace's default.
CHECK = r"""
import contextlib, io, json, sys
import torch
import gpt2core, explorer
from gpt2core import GPT2, encode, get_config
from gpt2core.kernels import native
from gpt2core.analysis import trace
from explorer import session
from explorer.tabs import train_tab

model = GPT2(get_config("tiny")).eval()
ids = encode("Hello, world!")
with torch.no_grad():
    logits = model(torch.tensor([ids]))
lib = native.library()
registry = session.build_registry()
with contextlib.redirect_stdout(io.StringIO()) as log:
    trace_rc = trace.main(["ROMEO:", "--block", "0"])    # no --weights: the bundled model
print(json.dumps(dict(
    gpt2core=gpt2core.__file__, explorer=explorer.__file__, ids=ids, logits=list(logits.shape),
    native_source=str(native.SOURCE), native_build=str(native.library_path()), native_error=native.error(),
    root=str(session.ROOT), bundled=str(session.BUNDLED_DIR), trace_default=str(trace.DEFAULT_WEIGHTS),
    default_model=registry.default, random_name=session.RANDOM_NAME, demo_text=len(train_tab.DEMO_TEXT),
    trace_rc=trace_rc, trace_lines=len(log.getvalue().splitlines()))))
"""


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    shown = " ".join(str(c) if len(str(c)) < 200 else "<script>" for c in cmd)
    assert out.returncode == 0, f"{shown} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def pinned_requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def copy_sources(dest: Path) -> Path:
    dest.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            # Not what a checkout's use leaves behind: bytecode, gradio's generated stubs, kernel builds.
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyi", "*.so"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def fresh_venv(path: Path) -> tuple[Path, Path]:
    """A venv without pip that sees this venv's site-packages after its own: (its python, its purelib)."""
    run([sys.executable, "-m", "venv", "--without-pip", path])
    python = path / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    ours = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (purelib / "project_venv.pth").write_text("".join(p + "\n" for p in ours))
    return python, purelib


def clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(GPT2_EXPLORER_CACHE=str(tmp / "cache"), PIP_NO_CACHE_DIR="1", PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def files_under(*dirs: Path) -> set[Path]:
    # __pycache__: pip compiles at install; .pyi: gradio writes its stub beside explorer/components.py
    # wherever that is (and lets it go where it can't write). Anything else is the package writing itself.
    return {p for d in dirs for p in d.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyi"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("package")
    src = copy_sources(tmp / "src")
    env = clean_env(tmp)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", tmp / "dist", src], env=env, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("gpt2_explorer-*.whl")
    return dict(tmp=tmp, src=src, env=env, wheel=wheel)


@pytest.fixture(scope="module")
def installed(built):
    tmp, env = built["tmp"], built["env"]
    python, purelib = fresh_venv(tmp / "venv")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", built["wheel"]], env=env, cwd=tmp)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return dict(built, python=python, purelib=purelib, bin=python.parent, cwd=elsewhere)


def test_wheel_holds_the_packages_data_and_scripts(built):
    with zipfile.ZipFile(built["wheel"]) as z:
        names = set(z.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        metadata, entry_points = z.read(meta).decode(), z.read(entry).decode()
    size_mb = built["wheel"].stat().st_size / 1e6
    print(f"\n[package] {built['wheel'].name}: {size_mb:.1f} MB, {len(names)} files")
    assert size_mb < MAX_WHEEL_MB
    assert [n for n in BUNDLED if n not in names] == []
    assert {n.split("/")[0] for n in names} == {"gpt2core", "explorer", built["wheel"].name.split("-py3")[0] + ".dist-info"}
    for module in ("gpt2core/training/train.py", "gpt2core/analysis/trace.py", "gpt2core/reference/model.py", "explorer/cli.py", "explorer/tabs/train_tab.py",
                   "explorer/compute/__init__.py", "explorer/figures/__init__.py"):
        assert module in names
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")]
    assert requires == pinned_requirements() and "torch==2.13.0" in requires
    scripts = {line.split("=")[0].strip() for line in entry_points.splitlines() if "=" in line}
    assert scripts == set(SCRIPTS)


def test_installed_copy_runs_from_outside_the_repo(installed):
    purelib = installed["purelib"]
    before = files_under(purelib / "gpt2core", purelib / "explorer")
    out = run([installed["python"], "-c", CHECK], env=installed["env"], cwd=installed["cwd"])
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("gpt2core", "explorer", "native_source", "root", "bundled", "trace_default"):
        assert Path(got[key]).is_relative_to(purelib), (key, got[key])
        assert not Path(got[key]).is_relative_to(ROOT), (key, got[key])
    assert got["ids"] == [15496, 11, 995, 0] and got["logits"] == [1, 4, 50257]
    # The C kernels built from the installed source into the cache, not into site-packages.
    assert got["native_error"] is None, got["native_error"]
    assert Path(got["native_build"]).parent == installed["tmp"] / "cache"
    assert (Path(got["bundled"]) / "model.safetensors").is_file() and got["bundled"] == got["trace_default"]
    assert got["default_model"] != got["random_name"]      # the bundled model serves, not the random fallback
    assert got["demo_text"] > 1000
    assert got["trace_rc"] == 0 and got["trace_lines"] > 20
    assert files_under(purelib / "gpt2core", purelib / "explorer") == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_help(installed, script):
    out = run([installed["bin"] / script, "--help"], env=installed["env"], cwd=installed["cwd"])
    assert out.stdout.startswith("usage: ") and "--help" in out.stdout
    if script == "gpt2-explorer":
        assert out.stdout.startswith("usage: gpt2-explorer") and "--weights" in out.stdout


def test_editable_install_reads_the_source_tree(built):
    tmp, src, env = built["tmp"], built["src"], built["env"]
    python, _ = fresh_venv(tmp / "venv-editable")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", "-e", src],
        env=env, cwd=tmp)
    (src / "gpt2core" / "_probe_editable.py").write_text("SEEN = True\n")   # a new module is seen at once
    check = ("import json, gpt2core, gpt2core._probe_editable as p; from explorer import session; "
             "print(json.dumps([gpt2core.__file__, str(session.ROOT), str(session.BUNDLED_DIR), p.SEEN]))")
    cwd = tmp / "elsewhere-editable"
    cwd.mkdir()
    core, root, bundled, seen = json.loads(run([python, "-c", check], env=env, cwd=cwd).stdout.strip().splitlines()[-1])
    assert Path(core) == src / "gpt2core" / "__init__.py" and seen
    assert Path(root) == src and Path(bundled) == src / "checkpoints" / "shakespeare"
    out = run([python.parent / "gpt2-explorer", "--help"], env=env, cwd=cwd)
    assert out.stdout.startswith("usage: gpt2-explorer")
