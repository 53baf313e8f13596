"""`mubench new`: the package skeletons build, install into a fresh environment and run as written."""
import os
import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mubench.errors import UserError
from mubench.scaffold import write_plugin

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_plugin(folder: Path) -> list[list[str]]:
    """Write the README's hand-made plugin (its files, as the README shows them) under ``folder``; returns the
    ``mubench`` commands the README runs on it."""
    text = README.read_text()
    files = re.findall(r"<!-- plugin-example: (\S+) -->\n```\w+\n(.*?)```", text, re.S)
    assert [path for path, _ in files] == ["mubench-my-iris/pyproject.toml", "mubench-my-iris/my_iris/__init__.py",
                                           "mubench-my-iris/my_iris/cards/my_iris.yaml"]
    for path, body in files:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(body)
    commands = re.search(r"<!-- plugin-example-run -->\n```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert commands[0] == "pip install -e ./mubench-my-iris"
    return [shlex.split(line)[1:] for line in commands[1:]]


def test_names_that_cannot_be_packages_and_existing_folders_are_refused(tmp_path):
    for bad in ("My-Method", "2fast", ""):
        with pytest.raises(UserError, match="lower-case letters"):
            write_plugin("method", bad, tmp_path)
    write_plugin("method", "mine", tmp_path)
    with pytest.raises(UserError, match="exists already"):
        write_plugin("task", "mine", tmp_path)


def test_both_skeletons_and_the_readme_plugin_install_into_a_fresh_environment_and_run(cli, tmp_path):
    for kind, name in (("method", "ngp_demo"), ("task", "toy_table")):
        done = cli("new", kind, name, "--dir", tmp_path)
        assert done.returncode == 0 and f"mubench-{name.replace('_', '-')}" in done.stdout, done.stderr
    # A fresh virtual environment; mubench and its dependencies come from this one's site-packages through a .pth
    # file (installing torch again would take minutes), the two plugin packages are installed into it by pip.
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    (fresh / purelib / "parent.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check", "-q", "install", "--no-deps",
           "--no-build-isolation"]
    commands = readme_plugin(tmp_path)
    subprocess.run([*pip, tmp_path / "mubench-ngp-demo", tmp_path / "mubench-toy-table", tmp_path / "mubench-my-iris"], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": ""}
    for command in commands:  # the README's commands, as written, run from the folder the package lies in
        done = subprocess.run([python, "-m", "mubench", *command], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    assert "my_iris / mlp / my_ngplus" in done.stdout and list(tmp_path.glob("results/my_iris__mlp__my_ngplus__*.json"))
    listed = subprocess.run([python, "-m", "mubench", "list", "methods"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and "ngp_demo" in listed.stdout
    assert "ngp_demo" not in cli("list", "methods").stdout  # installed there only
    tested = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", tmp_path / "mubench-ngp-demo" / "tests",
                             tmp_path / "mubench-toy-table" / "tests"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert tested.returncode == 0 and "4 passed" in tested.stdout, tested.stdout[-3000:]
