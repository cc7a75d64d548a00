"""The package as a user gets it: a wheel installed outside the checkout, and template folders.

The wheel is built from a copy of the working tree (`pip wheel --no-deps`, so setuptools' build/
folder never lands in the checkout) and installed into a fresh venv in a temporary folder. That
venv sees the dependencies of this test run's venv through a .pth file, never the checkout: every
command runs from a temporary folder, and the test checks that `provision` is imported from the
new venv's site-packages.

The other tests pin the template search path in-process: PROVISION_TEMPLATES (folders separated by
os.pathsep), its XDG default, `templates import` and its --dest, and `templates list`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from provision.cli import cli
from provision.labels import templates as tpl
from provision.labels.glabels import GLABELS_DIRS, find_glabels_dir
from tests.helpers import decode_pdf, serials_csv
from tests.test_templates import BUILTINS

REPO = Path(__file__).resolve().parents[1]
UNITS_XML = Path(__file__).parent / "data" / "glabels_units.xml"
UNITS_MM = "glabels-test-units-mm"  # one of the templates glabels_units.xml imports as
BASE_URL = "https://id.example.com"
TEMPLATES_ENV = "PROVISION_TEMPLATES"
# What a copy of the working tree for the build leaves out: VCS, venvs, caches, build output.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".*_cache",
    "output",
    "var",
    "*.db",
    "node_modules",
)
STEP_TIMEOUT_S = 300


# -- the wheel in a venv of its own ------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """A venv outside the checkout with the wheel installed (dependencies via a .pth file)."""

    venv: Path
    wheel: Path
    site: Path  # the venv's site-packages

    def run(
        self, *args: str, cwd: Path, env: dict[str, str], input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`provision ARGS` (or `python ARGS` when args[0] is "python") from the venv's bin/."""
        exe = self.venv / "bin" / ("python" if args[0] == "python" else "provision")
        argv = [str(exe), *(args[1:] if args[0] == "python" else args)]
        return subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )

    def ok(self, *args: str, cwd: Path, env: dict[str, str]) -> str:
        result = self.run(*args, cwd=cwd, env=env)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout


def _check(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, (argv, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel-install")
    src, dist, venv = root / "src", root / "dist", root / "venv"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _check([*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist), str(src)], root)
    (wheel,) = dist.glob("provision-*.whl")
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    python = venv / "bin" / "python"
    install = ["install", "--no-deps", "--no-index", "--quiet", str(wheel)]
    _check([*pip, "--python", str(python), *install], root)
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies: this run's site-packages, after the venv's own (so the wheel wins).
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "zz-test-dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    yield Installed(venv, wheel, site)


def user_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a user of the installed package: a home of their own, no setting of
    this run's and no PYTHONPATH."""
    drop = ("PROVISION_", "PYTHON", "XDG_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    home.mkdir(parents=True, exist_ok=True)
    return env | {"HOME": str(home), "PROVISION_BASE_URL": BASE_URL} | settings


def batch_env(tmp_path: Path) -> dict[str, str]:
    return user_env(
        tmp_path / "home",
        PROVISION_KEYRING=str(tmp_path / "keys" / "keyring.json"),
        PROVISION_DB_URL=f"sqlite:///{tmp_path / 'registry.db'}",
        PROVISION_OUTPUT=str(tmp_path / "output"),
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (bytecode caches aside) and a hash of its content."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_a_wheel_installed_outside_the_checkout_renders_a_batch(
    installed: Installed, tmp_path: Path
) -> None:
    env = batch_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    where = installed.ok(
        "python",
        "-c",
        "import provision, provision.labels.templates as t; print(provision.__file__, t.__file__)",
        cwd=work,
        env=env,
    ).split()
    assert all(Path(p).is_relative_to(installed.site) for p in where), where
    assert not any(Path(p).is_relative_to(REPO) for p in where), where

    listed = json.loads(installed.ok("templates", "list", "--json", cwd=work, env=env))
    assert sorted(t["name"] for t in listed["templates"]) == sorted(BUILTINS)
    assert all(t["builtin"] for t in listed["templates"])
    assert all(Path(t["path"]).is_relative_to(installed.site) for t in listed["templates"])

    installed.ok("keys", "init", cwd=work, env=env)
    csv = serials_csv(work / "serials.csv", 3)
    registered = json.loads(
        installed.ok("register", str(csv), "--batch", "b1", "--json", cwd=work, env=env)
    )
    assert registered["registered"] == 3
    out = json.loads(
        installed.ok("labels", "b1", "--template", "avery-l7160", "--json", cwd=work, env=env)
    )
    pdf = Path(out["pdf"])
    assert pdf.is_file() and pdf.is_relative_to(tmp_path / "output")
    (codes,) = decode_pdf(pdf)
    assert len(codes) == 3 and all(c.startswith(BASE_URL.upper()) for c in codes)
    checked = installed.run("verify", "-", "--json", cwd=work, env=env, input="\n".join(codes))
    assert checked.returncode == 0, checked.stderr
    assert [json.loads(line)["valid"] for line in checked.stdout.splitlines()] == [True] * 3

    one = json.loads(installed.ok("generate", "SN-ONE-1", "sensor", "--json", cwd=work, env=env))
    verified = json.loads(installed.ok("verify", one["url"], "--json", cwd=work, env=env))
    assert verified["valid"] and verified["device_id"] == one["device_id"]


@pytest.fixture(scope="module")
def glabels_dir() -> Path:
    """The installed gLabels template database; the test fails (never installs) without it."""
    found = find_glabels_dir()
    if found is None:
        where = ", ".join(str(d) for d in GLABELS_DIRS)
        pytest.fail(
            f"the gLabels template database is not installed (looked in {where}): "
            "run `apt-get install glabels-data` (make test does it)"
        )
    return found


def test_a_wheel_install_imports_glabels_templates_into_the_user_folder_not_site_packages(
    installed: Installed, tmp_path: Path, glabels_dir: Path
) -> None:
    env = batch_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(installed.venv)
    checkout = snapshot(REPO / "templates")
    xml = glabels_dir / "avery-iso-templates.xml"

    out = json.loads(
        installed.ok(
            "templates", "import", str(xml), "--part", "L7163", "--json", cwd=work, env=env
        )
    )
    user_dir = tmp_path / "home" / ".config" / "provision" / "templates"
    assert out["dest"] == str(user_dir) and out["by_name"] is True
    (result,) = out["results"]
    assert result["imported"] and Path(result["path"]) == user_dir / "glabels-avery-l7163.toml"
    assert snapshot(installed.venv) == before  # nothing written into the installed package
    assert snapshot(REPO / "templates") == checkout

    listed = json.loads(installed.ok("templates", "list", "--json", cwd=work, env=env))
    found = {t["name"]: t for t in listed["templates"]}
    assert set(found) == {*BUILTINS, "glabels-avery-l7163"}
    assert found["glabels-avery-l7163"]["builtin"] is False
    installed.ok("keys", "init", cwd=work, env=env)
    one = json.loads(
        installed.ok(
            "generate",
            "SN-L7163",
            "sensor",
            "-t",
            "glabels-avery-l7163",
            "--json",
            cwd=work,
            env=env,
        )
    )
    (codes,) = decode_pdf(Path(one["pdf"]))
    assert codes == [one["url"]]

    # PROVISION_TEMPLATES moves the user folder; the first of its folders takes imports.
    first, second = tmp_path / "first", tmp_path / "second"
    env[TEMPLATES_ENV] = f"{first}{os.pathsep}{second}"
    out = json.loads(installed.ok("templates", "import", str(xml), "--json", cwd=work, env=env))
    assert out["dest"] == str(first) and out["by_name"] is True
    assert len(list(first.glob("*.toml"))) == sum(r["imported"] for r in out["results"]) > 50
    assert snapshot(installed.venv) == before


def test_the_wheel_holds_every_file_of_the_package_and_the_builtin_templates(
    installed: Installed,
) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    source = {
        str(p.relative_to(REPO))
        for p in (REPO / "provision").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert source - names == set(), "list the package (or data glob) in pyproject.toml"
    builtins = {
        f"provision/templates_builtin/{p.name}" for p in (REPO / "templates").glob("*.toml")
    }
    assert {f"provision/templates_builtin/{n}.toml" for n in BUILTINS} <= builtins <= names
    assert not any(n.startswith("templates/") for n in names)  # no top-level "templates" package


# -- the template search path, in-process ------------------------------------------------------


def invoke(*args: str, env: dict[str, str | None]) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def folders_env(tmp_path: Path, *folders: Path) -> dict[str, str | None]:
    """PROVISION_TEMPLATES set to `folders` (none: unset), in a home of the test's own."""
    value = os.pathsep.join(str(f) for f in folders) if folders else None
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": None, TEMPLATES_ENV: value}


def test_templates_list_shows_the_qr_module_in_mm_and_dots(tmp_path: Path) -> None:
    result = invoke("templates", "list", env=folders_env(tmp_path, tmp_path / "none"))
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "QR 0.500 mm (4 dots)" in lines["thermal-2x1in"]
    for name in BUILTINS:
        qr = tpl.template_summary(tpl.load_template(name))["qr"]
        assert f"QR {qr['module_mm']:.3f} mm ({qr['module_dots']} dots)" in lines[name], name


def test_templates_import_writes_into_provision_templates_and_the_names_resolve(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mine"
    env = folders_env(tmp_path, folder)
    result = invoke("templates", "import", str(UNITS_XML), "--part", "UNITS-MM", env=env)
    assert result.exit_code == 0, result.output
    assert (folder / f"{UNITS_MM}.toml").is_file()
    assert f"imported into {folder}" in result.stdout
    assert f"--template {UNITS_MM}" in result.stdout
    shown = invoke("templates", "show", UNITS_MM, "--json", env=env)
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert summary["path"] == str(folder / f"{UNITS_MM}.toml") and summary["builtin"] is False
    listed = json.loads(invoke("templates", "list", "--json", env=env).stdout)
    assert UNITS_MM in {t["name"] for t in listed["templates"]}


def test_the_default_user_folder_is_under_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = {"HOME": str(tmp_path / "home"), TEMPLATES_ENV: None}
    for xdg, folder in (
        (None, tmp_path / "home" / ".config" / "provision" / "templates"),
        (str(tmp_path / "xdg"), tmp_path / "xdg" / "provision" / "templates"),
    ):
        args = ("templates", "import", str(UNITS_XML), "--part", "UNITS-MM")
        result = invoke(*args, env=home | {"XDG_CONFIG_HOME": xdg})
        assert result.exit_code == 0, result.output
        assert (folder / f"{UNITS_MM}.toml").is_file()

    monkeypatch.delenv(TEMPLATES_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    default = tmp_path / "home" / ".config" / "provision" / "templates"
    assert tpl.user_template_dirs() == [default]
    assert tpl.import_dir() == default
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert tpl.user_template_dirs() == [tmp_path / "xdg" / "provision" / "templates"]
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")  # the XDG spec: absolute only
    assert tpl.user_template_dirs() == [default]
    monkeypatch.setenv(TEMPLATES_ENV, f"~/a{os.pathsep}{os.pathsep}{tmp_path / 'b'}")
    assert tpl.user_template_dirs() == [tmp_path / "home" / "a", tmp_path / "b"]


def test_a_dest_folder_listed_in_provision_templates_is_searched_by_name(tmp_path: Path) -> None:
    first, dest = tmp_path / "first", tmp_path / "shared"
    env = folders_env(tmp_path, first, dest)
    result = invoke("templates", "import", str(UNITS_XML), "--dest", str(dest), "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["by_name"] is True
    assert not first.exists() and (dest / f"{UNITS_MM}.toml").is_file()
    shown = json.loads(invoke("templates", "show", UNITS_MM, "--json", env=env).stdout)
    assert shown["path"] == str(dest / f"{UNITS_MM}.toml")


def test_a_dest_folder_not_listed_prints_the_template_path_to_use(tmp_path: Path) -> None:
    env = folders_env(tmp_path, tmp_path / "mine")
    elsewhere = tmp_path / "elsewhere"
    result = invoke(
        "templates",
        "import",
        str(UNITS_XML),
        "--part",
        "UNITS-MM",
        "--dest",
        str(elsewhere),
        env=env,
    )
    assert result.exit_code == 0, result.output
    path = elsewhere / f"{UNITS_MM}.toml"
    assert f"--template {path}" in result.stdout and TEMPLATES_ENV in result.stdout
    assert invoke("templates", "show", str(path), env=env).exit_code == 0
    unknown = invoke("templates", "show", UNITS_MM, env=env)
    assert unknown.exit_code == 1 and f"none in {tmp_path / 'mine'}" in unknown.stderr
    as_json = invoke(
        "templates", "import", str(UNITS_XML), "--dest", str(elsewhere), "--json", env=env
    )
    assert json.loads(as_json.stdout)["by_name"] is False


def test_a_user_template_named_like_a_builtin_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    builtin = tpl.load_template("avery-l7160")
    text = builtin.path.read_text(encoding="utf-8").replace("edge_mm = 1.0", "edge_mm = 1.5")
    (folder / "avery-l7160.toml").write_text(text, encoding="utf-8")
    monkeypatch.setenv(TEMPLATES_ENV, str(folder))
    mine = tpl.load_template("avery-l7160")
    assert mine.path == folder / "avery-l7160.toml" and mine.edge == 1.5
    assert not tpl.is_builtin(mine) and tpl.is_builtin(tpl.load_template("avery-5160"))
    listed = {t.name: t for t in tpl.list_templates()}
    assert listed["avery-l7160"].path == mine.path and len(listed) == len(BUILTINS)


def test_templates_import_refuses_the_builtin_folder(tmp_path: Path) -> None:
    builtin = tpl.load_template("avery-l7160").path.parent
    before = snapshot(builtin)
    env = folders_env(tmp_path, builtin)
    for args in (["--dest", str(builtin)], []):
        result = CliRunner().invoke(cli, ["templates", "import", str(UNITS_XML), *args], env=env)
        assert result.exit_code == 1 and "built-in templates" in result.stderr, result.output
    assert snapshot(builtin) == before


def test_an_unknown_name_lists_the_user_folders_templates_too(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    env = folders_env(tmp_path, folder)
    invoke("templates", "import", str(UNITS_XML), "--part", "UNITS-MM", env=env)
    result = invoke("templates", "show", "no-such-sheet", env=env)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert "no-such-sheet" in line and f"in {folder}: {UNITS_MM}" in line
    assert all(name in line for name in BUILTINS)
