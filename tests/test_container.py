"""The Dockerfile, checked without a container engine (none runs here, and Docker Hub is out of reach).

Its instructions are read, then its steps are replayed on this machine: the files it copies, and only those, are
installed with ``pip install .`` into a fresh virtualenv (without a build warning), and the gateway runs as the
image runs it (its environment, its entry point and command, the data volume as working folder). The image holds no
config: without one mounted it refuses to start, in a sentence that says how to mount one. With the example config
mounted it must answer the image's HEALTHCHECK command, take a simulated SMS into the jsonl CRM, stop cleanly on
SIGTERM and leave every file outside the data volume as it found it, so the image's non-root user, who may write
only there, can run it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, wait_for

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""

    instructions: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        parsed = cls()
        pending = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            keyword, _, rest = (pending + line).partition(" ")
            parsed.instructions.append((keyword.upper(), rest.strip()))
            pending = ""
        return parsed

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"Dockerfile has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.all("ENV"):
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    def copies(self) -> list[tuple[list[str], str, str]]:
        """(sources, destination, the WORKDIR it is relative to) for every COPY, in order."""
        workdir = "/"
        result = []
        for keyword, rest in self.instructions:
            if keyword == "WORKDIR":
                workdir = rest
            elif keyword == "COPY":
                *sources, destination = shlex.split(rest)
                result.append((sources, destination, workdir))
        return result


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.read(DOCKERFILE)


def test_image_is_slim_runs_unprivileged_and_checks_health(dockerfile: Dockerfile) -> None:
    assert dockerfile.all("FROM") == ["python:3.11-slim"]
    user = dockerfile.last("USER")
    assert user not in ("root", "0")
    assert any(re.search(rf"useradd --system [^&]*\b{user}(\s|$)", run) for run in dockerfile.all("RUN"))
    assert "/healthz" in dockerfile.last("HEALTHCHECK")
    assert dockerfile.last("ENTRYPOINT") == '["gateway"]'
    assert dockerfile.last("CMD") == '["run"]'


def test_config_and_data_live_outside_the_image(dockerfile: Dockerfile) -> None:
    env = dockerfile.env()
    assert env["GATEWAY_CONFIG"] == "/etc/gateway/config.yaml"
    data_dir = env["GATEWAY_DATA_DIR"]
    assert data_dir in dockerfile.last("VOLUME")
    assert env["GATEWAY_STORAGE_URL"] == f"sqlite:///{data_dir}/gateway.db"
    assert env["GATEWAY_JSONL_PATH"].startswith(data_dir + "/")
    config_dir = str(Path(env["GATEWAY_CONFIG"]).parent)
    for sources, destination, _ in dockerfile.copies():
        assert not destination.startswith(config_dir), "the image must not carry a config: it is mounted at run time"
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"


def test_image_carries_no_sample_credentials(dockerfile: Dockerfile) -> None:
    sample_secrets = re.findall(r"(?:auth_token|reply_secret): \"\$\{\w+:-([^}]+)\}\"",
                                (ROOT / "config.example.yaml").read_text(encoding="utf-8"))
    assert len(sample_secrets) == 2
    for sources, _, _ in dockerfile.copies():
        for source in sources:
            path = ROOT / source
            for file in (path.rglob("*") if path.is_dir() else [path]):
                if file.is_file() and "__pycache__" not in file.parts:
                    text = file.read_text(encoding="utf-8", errors="replace")
                    assert not any(secret in text for secret in sample_secrets), f"{file} carries a sample secret"


@dataclass
class ReplayedImage:
    """The image's file system under ``root``: /opt/gateway, /etc/gateway, the data volume and a virtualenv."""

    root: Path
    venv: Path
    env: dict[str, str]
    data_dir: Path


def _in_root(root: Path, image_path: str) -> Path:
    return root / image_path.lstrip("/")


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``root`` but ``skip`` (the data volume) and bytecode."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in root.rglob("*")
            if path.is_file() and not path.is_relative_to(skip) and "__pycache__" not in path.parts}


@pytest.fixture(scope="module")
def image(dockerfile: Dockerfile) -> Iterator[ReplayedImage]:
    root = Path(tempfile.mkdtemp(prefix="gateway-image-"))
    try:
        for sources, destination, workdir in dockerfile.copies():
            target = _in_root(root, destination if destination.startswith("/") else f"{workdir}/{destination}")
            for source in sources:  # Docker's rules: a folder's contents go into the destination folder
                path = ROOT / source
                if path.is_dir():
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
                elif destination.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target / path.name)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target)
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # the image's `RUN pip install .`, but its dependencies come from the test environment: the same ranges,
        # installed by the test setup. Only the build backend is fetched (from pip's cache once it holds it).
        install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                                  "--no-deps", "."], cwd=_in_root(root, "/opt/gateway"), capture_output=True,
                                 text=True)
        assert install.returncode == 0, f"pip install . failed as the image's RUN would:\n{install.stderr[-3000:]}"
        assert "Warning" not in install.stderr, f"the build warns (pyproject metadata?):\n{install.stderr[-3000:]}"
        site_packages = next(venv.glob("lib/python*/site-packages"))
        dependencies = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
        # a path line only: the test environment's own .pth files (its editable checkout) are not run
        (site_packages / "zz-test-dependencies.pth").write_text(f"{dependencies}\n", encoding="utf-8")

        image_env = dockerfile.env()
        data_dir = _in_root(root, image_env["GATEWAY_DATA_DIR"])
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "PYTHON"))}
        image_dirs = {*dockerfile.all("WORKDIR"), str(Path(image_env["GATEWAY_CONFIG"]).parent)}
        for key, value in image_env.items():
            for image_dir in image_dirs:
                value = value.replace(image_dir, str(_in_root(root, image_dir)))
            env[key] = value
        port = free_port()
        env |= {"GATEWAY_LISTEN": f"127.0.0.1:{port}", "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "HOME": str(data_dir), "PATH": f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"}
        yield ReplayedImage(root, venv, env, data_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_installed_package_carries_migrations_mappings_and_connectors(image: ReplayedImage) -> None:
    probe = ("import gateway, connectors, mappings, importlib.metadata as m;"
             "from gateway.storage.db import MIGRATIONS; from gateway.mapping import MAPPINGS_DIR;"
             "print(gateway.__file__); print(len(list(MIGRATIONS.glob('versions/*.py'))));"
             "print(sorted(p.name for p in MAPPINGS_DIR.glob('*.yaml')));"
             "print(sorted(e.name for e in m.entry_points(group='gateway.connectors')));"
             "import gateway.console as c, pathlib; d = pathlib.Path(c.__file__).parent;"
             "print(len(list(d.glob('templates/console/*.html'))), len(list(d.glob('static/*.css'))))")
    result = subprocess.run([str(image.venv / "bin" / "python"), "-c", probe], cwd=image.data_dir, env=image.env,
                            capture_output=True, text=True, check=True)
    module_file, migrations, mapping_files, connectors, console_files = result.stdout.splitlines()
    templates = len(list((ROOT / "gateway" / "console" / "templates" / "console").glob("*.html")))
    assert console_files == f"{templates} 1", "the console's templates and stylesheet are installed"
    assert module_file.startswith(str(image.venv)), "the image must run the installed package, not a checkout"
    assert int(migrations) == len(list((ROOT / "gateway" / "migrations" / "versions").glob("*.py")))
    assert mapping_files == repr(sorted(p.name for p in (ROOT / "mappings").glob("*.yaml")))
    for connector in ("twilio", "slack", "meta", "x", "imap", "zendesk", "salesforce", "jsonl", "webhook"):
        assert f"'{connector}'" in connectors


def test_image_without_a_mounted_config_refuses_to_start_and_says_how_to_mount_one(
        image: ReplayedImage, dockerfile: Dockerfile) -> None:
    config = Path(image.env["GATEWAY_CONFIG"])
    assert not config.exists()
    command = [*json.loads(dockerfile.last("ENTRYPOINT")), *json.loads(dockerfile.last("CMD"))]
    result = subprocess.run(command, cwd=image.data_dir, env=image.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: no config file {config} (named by $GATEWAY_CONFIG)",
                     "write your config there (in the container image: docker run "
                     "-v $PWD/config.yaml:/etc/gateway/config.yaml:ro ...), or give -c FILE"]
    assert list(image.data_dir.iterdir()) == [], "nothing may be written before the config is read"


def test_image_runs_answers_its_healthcheck_takes_a_message_and_writes_only_to_its_volume(
        image: ReplayedImage, dockerfile: Dockerfile, tmp_path: Path) -> None:
    command = [*json.loads(dockerfile.last("ENTRYPOINT")), *json.loads(dockerfile.last("CMD"))]
    mounted = Path(image.env["GATEWAY_CONFIG"])  # docker run -v $PWD/config.example.yaml:/etc/gateway/config.yaml:ro
    mounted.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config.example.yaml", mounted)
    read_only = _snapshot(image.root, skip=image.data_dir)
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=image.data_dir, env=image.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        health = dockerfile.last("HEALTHCHECK").split(" CMD ", 1)[1]
        port = image.env["GATEWAY_LISTEN"].rsplit(":", 1)[1]
        health = health.replace("127.0.0.1:8080", f"127.0.0.1:{port}")

        def healthy() -> bool:
            assert proc.poll() is None, f"gateway exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            return subprocess.run(["sh", "-c", health], env=image.env, capture_output=True).returncode == 0

        wait_for(healthy, 60, "the image's HEALTHCHECK to pass")
        simulate = subprocess.run(["gateway", "simulate", "sms-main", "--from", "+15551230001", "--text",
                                   "sent to the image"], cwd=image.data_dir, env=image.env, capture_output=True,
                                  text=True)
        assert simulate.returncode == 0, simulate.stdout + simulate.stderr
        jsonl = Path(image.env["GATEWAY_JSONL_PATH"])
        wait_for(lambda: "sent to the image" in jsonl.read_text(encoding="utf-8"), 60,
                 "the simulated SMS in the jsonl CRM")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "warning" not in output.lower(), output[-3000:]
    assert f"config: {mounted} (named by $GATEWAY_CONFIG)" in output, "the config found is named, once"
    assert output.count("config: ") == 1
    assert jsonl.is_relative_to(image.data_dir)
    assert (image.data_dir / "gateway.db").exists()
    assert _snapshot(image.root, skip=image.data_dir) == read_only, "the gateway wrote outside its data volume"
    mounted.unlink()
