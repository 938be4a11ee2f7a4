"""A Debian system booted by systemd in a ``systemd-nspawn`` container, with pgwake
installed as "Run it under systemd" in docs/operations.md says, for tests of the real units.

Invariants:
- The root is made by ``mmdebstrap`` once per package list and cached under
  ``$PGWAKE_NSPAWN_CACHE`` (default ``/var/cache/pgwake-nspawn``), keyed by a hash of the
  suite, mirror and packages. It is built in a temporary directory and renamed into
  place, so a half-made root is never used.
- Every boot is ``--volatile=overlay``: the cached root is the read-only lower layer and
  all changes (the virtualenv, units, settings) go to a tmpfs; the cache stays pristine.
- One container at a time (a lock file in the cache directory): without machined, the
  container's cgroup is not of its own.
- The container shares the host's network namespace, so the worker in it reaches the
  tests' PostgreSQL on 127.0.0.1 and the tests reach its metrics port. It is not
  registered with machined (the host need not run systemd); commands run in it with
  ``nsenter`` into the namespaces of its init, with a clean environment.
- pgwake is installed from wheels built on the host (the project's own, and its
  dependencies downloaded for the container's Python), offline, into ``/opt/pgwake``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv")
TOOLS = {"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container"}
CACHE = Path(os.environ.get("PGWAKE_NSPAWN_CACHE", "/var/cache/pgwake-nspawn"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VENV = "/opt/pgwake"
WHEELS = "/run/pgwake-wheels"


def ensure_tools() -> None:
    """Install mmdebstrap and systemd-nspawn from Debian when they are missing."""
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def root_key() -> str:
    """The cache key of the root: what mmdebstrap is asked to make."""
    recipe = json.dumps({"suite": SUITE, "mirror": MIRROR, "packages": sorted(PACKAGES)})
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Hold the cache's lock (building a root, running a container)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_root() -> Path:
    """The cached root for :data:`PACKAGES`, made first if needed (call under the lock)."""
    root = CACHE / f"root-{root_key()}"
    if root.is_dir():
        return root
    building = Path(tempfile.mkdtemp(prefix="building-", dir=CACHE))
    try:
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(building / "root"),
                MIRROR,
            ],
            check=True,
        )
        (building / "root").rename(root)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root


def container_python(root: Path) -> str:
    """The container's Python version, as ``3.11``."""
    return os.readlink(root / "usr/bin/python3").removeprefix("python")  # -> python3.11


def _pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip {args[0]} failed:\n{done.stdout}{done.stderr}")


def build_wheels(project: Path, dest: Path, python: str) -> None:
    """The project's wheel, and binary wheels of its dependencies for ``python``."""
    _pip("wheel", "--no-deps", "--wheel-dir", str(dest), str(project))
    (wheel,) = dest.glob("pgwake-*.whl")
    # pip does not widen a manylinux tag to older glibc versions by itself.
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(40, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    _pip(
        "download",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        *(arg for platform in platforms for arg in ("--platform", platform)),
        f"{wheel}[speed]",
    )


class Container:
    """A booted container; run commands in it as root."""

    def __init__(self, root: Path, binds: dict[Path, str], log: Path) -> None:
        self.log = log
        name = f"pgwake-test-{os.getpid()}"
        args = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={root}",
            f"--machine={name}",
            "--volatile=overlay",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            *(f"--bind-ro={host}:{inside}" for host, inside in binds.items()),
        ]
        with log.open("w") as out:
            self._nspawn = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.leader = self._find_init()

    def _find_init(self, timeout: float = 30.0) -> int:
        """The pid (on the host) of the container's init: the nspawn child that is pid 1
        in its own pid namespace and has become systemd."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited:\n{self.log.read_text()}")
            children = Path(f"/proc/{self._nspawn.pid}/task/{self._nspawn.pid}/children")
            for pid in children.read_text().split():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                except FileNotFoundError:  # a helper that has exited meanwhile
                    continue
                nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
                if nspid.split()[-1] == "1" and argv0.endswith(b"/systemd"):
                    return int(pid)
            time.sleep(0.05)
        raise RuntimeError(f"no init in the container within {timeout}s")

    def command(self, *argv: str) -> list[str]:
        """``argv`` as a host command that runs it in the container."""
        return ["nsenter", f"--target={self.leader}", "--all", "env", "-i", f"PATH={PATH}", *argv]

    def run(
        self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container; with ``check``, fail showing its output."""
        done = subprocess.run(
            self.command(*argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        """Create ``path`` (and its directory) holding ``text``."""
        self.run("install", "-D", "-m", mode, "/dev/stdin", path, input=text)

    def wait_booted(self, timeout: float = 60.0) -> None:
        """Wait for the boot to finish; fail naming the failed units if it is degraded."""
        deadline = time.monotonic() + timeout
        state, done = "offline", None
        # "offline" until init's bus is up; then --wait waits for the boot to end.
        while state == "offline" and time.monotonic() < deadline:
            time.sleep(0.1)
            done = self.run("systemctl", "is-system-running", "--wait", check=False)
            state = done.stdout.strip() or "offline"
        if state != "running":
            assert done is not None
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
            raise AssertionError(
                f"container booted {state!r} ({done.stderr.strip()}); failed units:\n{failed}"
            )

    def install_pgwake(self, project: Path) -> None:
        """The install steps of docs/operations.md: a virtualenv in /opt/pgwake, the units in
        /etc/systemd/system."""
        self.run("python3", "-m", "venv", VENV)
        self.run(f"{VENV}/bin/pip", "install", "--quiet", "--no-index", "--find-links", WHEELS,
                 "pgwake[speed]", timeout=300)  # fmt: skip
        for unit in sorted((project / "systemd").glob("*.service")):
            self.write(f"/etc/systemd/system/{unit.name}", unit.read_text())
        self.run("systemctl", "daemon-reload")

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit``."""
        out = self.run("systemctl", "show", unit, f"--property={','.join(properties)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal_cursor(self) -> str:
        """A cursor to read the journal from this point on."""
        out = self.run("journalctl", "--lines=0", "--show-cursor", "--quiet").stdout
        return out.strip().removeprefix("-- cursor: ")

    def journal(self, unit: str, after: str) -> list[dict[str, str]]:
        """The journal entries of ``unit`` (its output and systemd's messages about it)
        since the cursor ``after``."""
        out = self.run("journalctl", f"--unit={unit}", f"--after-cursor={after}",
                       "--output=json", "--no-pager").stdout  # fmt: skip
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self, timeout: float = 60.0) -> None:
        """Power the container off (SIGTERM to nspawn halts it cleanly); SIGKILL if stuck."""
        if self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)
            try:
                self._nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                self._nspawn.kill()
                self._nspawn.wait()


@contextlib.contextmanager
def booted(project: Path, workdir: Path, extra_binds: dict[Path, str]) -> Iterator[Container]:
    """A container with pgwake installed, stopped on exit."""
    ensure_tools()
    with cache_lock():
        root = ensure_root()
        wheels = workdir / "wheels"
        build_wheels(project, wheels, container_python(root))
        container = Container(root, {wheels: WHEELS, **extra_binds}, workdir / "console.log")
        try:
            container.wait_booted()
            container.install_pgwake(project)
            yield container
        finally:
            container.stop()
