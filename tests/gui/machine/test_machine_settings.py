"""Settings validation against host limits, and the Qt-free factory reset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.pages.machine_settings import (
    HostLimits,
    SettingsValues,
    ShareRow,
    tag_for,
    validate_settings,
)
from vm_backend.daemon.reset import ResetError, reset_machine
from vm_backend.machine.paths import MachinePaths

from .conftest import FakeDaemon, status_doc

LIMITS = HostLimits(cpus=4, memory_mib=8192)


def values(**changes: Any) -> SettingsValues:
    base: dict[str, Any] = {"cpus": 2, "memory_mib": 2048, "disk_gib": 32,
                            "accelerator": "auto", "shares": ()}
    base.update(changes)
    return SettingsValues(**base)


def test_valid_settings_have_no_problems() -> None:
    assert validate_settings(values(), LIMITS, 32, running=False) == []
    assert validate_settings(values(disk_gib=64), LIMITS, 32, running=False) == []
    assert validate_settings(values(accelerator="tcg"), LIMITS, 32, running=True) == []


@pytest.mark.parametrize(
    ("changes", "running", "words"),
    [
        ({"cpus": 5}, False, "between 1 and 4"),
        ({"cpus": 0}, False, "between 1 and 4"),
        ({"memory_mib": 256}, False, "between 512 MiB and 8192 MiB"),
        ({"memory_mib": 9000}, False, "between 512 MiB and 8192 MiB"),
        ({"disk_gib": 16}, False, "can only grow: it is 32 GiB"),
        ({"disk_gib": 5000}, False, "between 4 and 4096 GiB"),
        ({"disk_gib": 40}, True, "cannot grow while the VM runs"),
        ({"accelerator": "hvf"}, False, "does not exist on this computer"),
        ({"shares": (ShareRow("relative/dir", "t"),)}, False, "not a full path"),
        ({"shares": (ShareRow("/nonexistent-berth-dir", "t"),)}, False, "does not exist"),
        ({"shares": (ShareRow("/tmp", "bad tag!"),)}, False, "letters, digits"),
        ({"shares": (ShareRow("/tmp", "t"), ShareRow("/", "t"))}, False, "used twice"),
    ],
)
def test_problems_are_named(changes: dict[str, Any], running: bool, words: str) -> None:
    problems = validate_settings(values(**changes), LIMITS, 32, running=running)
    assert any(words in p for p in problems), problems


def test_changes_only_what_differs() -> None:
    spec = {"cpus": 2, "memory_mib": 2048, "disk_gib": 32, "accelerator": "auto",
            "shares": [{"host_path": "/tmp", "tag": "tmp", "read_only": False}]}
    assert SettingsValues.from_spec(spec).changes_from(spec) == {}
    edited = values(cpus=3, shares=(ShareRow("/tmp", "tmp", True),))
    assert edited.changes_from(spec) == {
        "cpus": 3, "shares": [{"host_path": "/tmp", "tag": "tmp", "read_only": True,
                               "transport": "auto"}]}


def test_editing_shares_keeps_each_transport() -> None:
    """An SFTP share stays SFTP when another share is added in the window."""
    spec = {"cpus": 2, "memory_mib": 2048, "disk_gib": 32, "accelerator": "auto",
            "shares": [{"host_path": "/srv", "tag": "srv", "read_only": False,
                        "transport": "sftp"}]}
    before = SettingsValues.from_spec(spec)
    edited = values(shares=(*before.shares, ShareRow("/tmp", "tmp", True)))
    assert edited.changes_from(spec)["shares"] == [
        {"host_path": "/srv", "tag": "srv", "read_only": False, "transport": "sftp"},
        {"host_path": "/tmp", "tag": "tmp", "read_only": True, "transport": "auto"},
    ]


def test_tag_for_is_allowed_and_unique() -> None:
    assert tag_for("/home/me/My Project", set()) == "My-Project"
    assert tag_for("/home/me/src", {"src"}) == "src-2"
    assert tag_for("/", set()) == "share"


def test_reset_keeping_data_leaves_only_the_disk(berth_home: Path) -> None:
    daemon = FakeDaemon()
    daemon.doc = status_doc("running", spec={**status_doc()["spec"], "memory_mib": 3072})
    paths = MachinePaths.for_machine("default", berth_home)
    paths.state_dir.mkdir(parents=True)
    for name in ("machine.json", "data.qcow2", "console.log", "run.json", "id_ed25519",
                 "ssh_host_ed25519_key"):
        (paths.state_dir / name).write_text(name)
    (paths.state_dir / "run").mkdir()
    spec = reset_machine(daemon.client(), "default", keep_data=True, home=berth_home)
    assert spec["memory_mib"] == 3072
    assert sorted(p.name for p in paths.state_dir.iterdir()) == ["data.qcow2", "lock"]
    assert (paths.state_dir / "data.qcow2").read_text() == "data.qcow2"
    assert daemon.methods() == ["machine.spec", "machine.stop", "machine.init"]


def test_reset_keeping_data_without_a_disk_says_so(berth_home: Path) -> None:
    daemon = FakeDaemon()
    MachinePaths.for_machine("default", berth_home).state_dir.mkdir(parents=True)
    with pytest.raises(ResetError, match="no data disk"):
        reset_machine(daemon.client(), "default", keep_data=True, home=berth_home)


def test_the_next_start_note_gives_way_only_to_a_new_run(qtbot: Any) -> None:
    from app.pages.machine_settings import SettingsPanel

    from .conftest import spec_doc

    panel = SettingsPanel(LIMITS)
    qtbot.addWidget(panel)
    panel.set_spec(spec_doc(), running=True, run_id=100)
    panel.cpus.setValue(3)
    panel.saved(spec_doc(cpus=3))
    assert "next start" in panel.message.text() and not panel.restart_button.isHidden()
    panel.set_running(True, 100)  # status polls of the same run keep the note
    assert "next start" in panel.message.text()
    panel.set_running(False)
    panel.set_running(True, 100)  # the pid of the old run: still the old settings
    assert "next start" in panel.message.text()
    panel.set_running(True, 101)
    assert "in effect" in panel.message.text() and panel.restart_button.isHidden()
    # Saved while stopped: the first run after it has the changes.
    panel.set_running(False)
    panel.memory.setValue(4096)
    panel.saved(spec_doc(cpus=3, memory_mib=4096))
    assert panel.message.text() == "Saved. The changes apply at the next start."
    panel.set_running(True, 102)
    assert "in effect" in panel.message.text()
