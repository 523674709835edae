"""uv.lock: the one source of versions for every install (scripts, CI, the image)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple"


def lock() -> dict[str, object]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def test_every_locked_package_comes_from_the_public_index() -> None:
    """A machine's own index, find-links or a file:// mirror must never leak into the lock."""
    packages = lock()["package"]
    assert isinstance(packages, list)
    assert len(packages) > 20
    for package in packages:
        source = package["source"]
        if source == {"editable": "."}:
            assert package["name"] == "gptalk-bot"
            continue
        assert source == {"registry": PYPI}, (package["name"], source)
    urls = re.findall(r'url = "([^"]+)"', (ROOT / "uv.lock").read_text())
    hosts = {re.sub(r"^(https://[^/]+)/.*$", r"\1", url) for url in urls}
    assert hosts <= {"https://files.pythonhosted.org"}, hosts


def test_every_locked_file_has_a_hash() -> None:
    for package in lock()["package"]:  # type: ignore[attr-defined]
        for artifact in [package.get("sdist"), *package.get("wheels", [])]:
            if artifact is not None:
                assert re.fullmatch(r"sha256:[0-9a-f]{64}", artifact["hash"]), package["name"]


def test_the_lock_covers_the_runtime_and_dev_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = {p["name"] for p in lock()["package"]}  # type: ignore[attr-defined]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for requirement in wanted:
        name = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in locked, requirement


def test_scripts_install_from_the_lock_only() -> None:
    lib = (ROOT / "scripts" / "lib.sh").read_text()
    assert "pip install" not in lib.replace(
        'pip install --quiet --disable-pip-version-check "uv==', ""
    )
    assert lib.count("sync --quiet --locked") == 2
    for script in ("run", "test", "upgrade"):
        assert "ensure_venv" in (ROOT / "scripts" / script).read_text(), script
    assert "uv lock" in (ROOT / "scripts" / "upgrade").read_text().replace('"$UV" lock', "uv lock")
