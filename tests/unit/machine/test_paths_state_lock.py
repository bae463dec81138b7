"""State dir layout and permissions, stale pid/socket handling, and the machine lock."""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vm_backend.machine.lock import LockTimeout, MachineLock
from vm_backend.machine.paths import (
    PIPE_NAME_LIMIT,
    PIPE_PREFIX,
    SOCKET_PATH_LIMIT,
    MachinePaths,
    PathError,
    berth_home,
    daemon_pipe_name,
    ensure_private_dir,
    run_dir_for,
)
from vm_backend.machine.state import (
    RunRecord,
    clear_stale_runtime,
    forget_run_record,
    live_qemu,
    load_run_record,
    read_pid,
    save_run_record,
)


def test_berth_home_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BERTH_HOME", str(tmp_path))
    assert berth_home() == tmp_path
    paths = MachinePaths.for_machine("dev")
    assert paths.state_dir == tmp_path / "machines" / "dev"


def test_private_dir_is_created_0700_and_tightened(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    ensure_private_dir(target)
    assert target.stat().st_mode & 0o777 == 0o700
    target.chmod(0o755)
    ensure_private_dir(target)
    assert target.stat().st_mode & 0o777 == 0o700


def test_private_dir_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(PathError, match="not a plain directory"):
        ensure_private_dir(link)


def test_short_state_dir_keeps_sockets_inside(tmp_path: Path) -> None:
    state = tmp_path / "m"
    assert run_dir_for(state) == state / "run"


def test_long_state_dir_moves_sockets_to_a_short_hashed_dir(tmp_path: Path) -> None:
    state = tmp_path / ("x" * 120) / "machines" / "dev"
    run = run_dir_for(state)
    assert run.parent == Path(f"/tmp/berth-{os.getuid()}")
    assert len(str(run / "console.sock")) <= SOCKET_PATH_LIMIT
    assert run_dir_for(state) == run  # stable
    assert run_dir_for(tmp_path / ("y" * 120)) != run
    paths = MachinePaths("dev", state, run)
    paths.ensure()
    assert run.stat().st_mode & 0o777 == 0o700
    assert run.parent.stat().st_mode & 0o777 == 0o700


def _machine_pipes(name: str, home: Path) -> tuple[str, str, str | None]:
    paths = MachinePaths.for_machine(name, home, windows_pipes=True)
    return paths.qmp_address, paths.console_address, paths.engine_pipe


def test_machine_pipes_are_named_per_user_and_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    home = tmp_path / "a"
    digest = hashlib.sha256(os.fsencode(str(home))).hexdigest()[:12]
    stem = f"{PIPE_PREFIX}berth-alice-{digest}"
    assert _machine_pipes("default", home) == (
        f"{stem}-default-qmp", f"{stem}-default-console", f"{stem}-default-docker")
    assert daemon_pipe_name(home) == f"{stem}-berthd"  # one stem for all of a home's pipes
    # Another home of the same user, and another user with the same home, never collide.
    other_home = _machine_pipes("default", tmp_path / "b")
    monkeypatch.setattr(getpass, "getuser", lambda: "bob")
    other_user = _machine_pipes("default", home)
    names = {*_machine_pipes("default", home), *other_home, *other_user}
    assert len(names) == 6 and len({*other_home, *other_user}) == 6
    assert all(n.startswith(f"{PIPE_PREFIX}berth-bob-{digest}-") for n in other_user)


def test_pipe_names_stay_plain_and_within_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "Ünï cødé\\user," + "x" * 80)
    longest = "a" + "-" * 30  # the longest name spec.py allows (31 characters)
    for name in _machine_pipes(longest, tmp_path / ("h" * 200)):
        assert name is not None and len(name) <= PIPE_NAME_LIMIT
        rest = name.removeprefix(PIPE_PREFIX)
        assert re.fullmatch(
            r"berth-[A-Za-z0-9_.-]{1,32}-[0-9a-f]{12}-a-{30}-(qmp|console|docker)", rest)
        assert "\\" not in rest and "," not in rest and " " not in rest
    with pytest.raises(PathError, match="too long for Windows"):
        _machine_pipes("m" * 300, tmp_path)
    # Elsewhere they are sockets in the run dir, and there is no engine pipe.
    paths = MachinePaths.for_machine("dev", tmp_path, windows_pipes=False)
    assert paths.qmp_address == str(paths.run_dir / "qmp.sock") and paths.engine_pipe is None


def test_read_pid(tmp_path: Path) -> None:
    pidfile = tmp_path / "qemu.pid"
    assert read_pid(pidfile) is None
    pidfile.write_text("1234\n")
    assert read_pid(pidfile) == 1234
    pidfile.write_text("garbage")
    assert read_pid(pidfile) is None


@pytest.fixture
def paths(tmp_path: Path) -> MachinePaths:
    p = MachinePaths("dev", tmp_path / "state", tmp_path / "state" / "run")
    p.ensure()
    return p


@pytest.fixture
def fake_qemu(paths: MachinePaths) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line looks like our QEMU (argv[0] and -pidfile)."""
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-c", "import time; time.sleep(60)", "-pidfile",
         str(paths.pidfile)],
        executable=sys.executable,
    )
    paths.pidfile.write_text(f"{proc.pid}\n")
    yield proc
    proc.kill()
    proc.wait()


def test_live_qemu_recognises_our_process(paths: MachinePaths,
                                          fake_qemu: subprocess.Popen[bytes]) -> None:
    found = live_qemu(paths)
    assert found is not None and found.pid == fake_qemu.pid


def test_pid_file_older_than_the_process_is_a_reused_pid(
    paths: MachinePaths, fake_qemu: subprocess.Popen[bytes]
) -> None:
    old = time.time() - 3600
    os.utime(paths.pidfile, (old, old))
    assert live_qemu(paths) is None


def test_reused_pid_of_another_program_is_not_ours(paths: MachinePaths) -> None:
    paths.pidfile.write_text(f"{os.getpid()}\n")
    assert live_qemu(paths) is None


def test_dead_pid_is_not_ours(paths: MachinePaths) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    paths.pidfile.write_text(f"{proc.pid}\n")
    assert live_qemu(paths) is None


def test_live_qemu_found_through_run_record(paths: MachinePaths,
                                            fake_qemu: subprocess.Popen[bytes]) -> None:
    paths.pidfile.unlink()
    record = RunRecord(fake_qemu.pid, psutil.Process(fake_qemu.pid).create_time(), "tcg",
                       "slow", 2222, time.time())
    save_run_record(paths, record)
    assert load_run_record(paths) == record
    found = live_qemu(paths)
    assert found is not None and found.pid == fake_qemu.pid
    forget_run_record(paths)
    assert load_run_record(paths) is None


def test_clear_stale_runtime_removes_sockets_pidfile_and_dangling_links(
    paths: MachinePaths, tmp_path: Path
) -> None:
    paths.pidfile.write_text("99999999\n")
    qmp = Path(paths.qmp_address)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(qmp))
    Path(paths.console_address).symlink_to(tmp_path / "nowhere")
    removed = clear_stale_runtime(paths)
    assert set(removed) == {paths.pidfile, qmp, Path(paths.console_address)}
    assert not os.path.lexists(paths.console_address)


def test_lock_excludes_other_holders_even_in_one_process(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    with MachineLock(lock_path), pytest.raises(LockTimeout, match="busy"):
        MachineLock(lock_path, timeout=0.2).acquire()
    with MachineLock(lock_path, timeout=0.2):
        pass


def test_lock_waits_for_release(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    first = MachineLock(lock_path)
    first.acquire()
    acquired = threading.Event()

    def second() -> None:
        with MachineLock(lock_path, timeout=5):
            acquired.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.2)
    assert not acquired.is_set()
    first.release()
    thread.join(5)
    assert acquired.is_set()


def test_lock_dies_with_its_process(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    code = (
        "import sys, time\n"
        "from vm_backend.machine.lock import MachineLock\n"
        f"MachineLock(__import__('pathlib').Path({str(lock_path)!r})).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            cwd=str(Path(__file__).resolve().parents[3]))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"locked"
    with pytest.raises(LockTimeout):
        MachineLock(lock_path, timeout=0.2).acquire()
    proc.kill()
    proc.wait()
    with MachineLock(lock_path, timeout=2):
        pass
