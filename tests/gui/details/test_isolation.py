"""Isolation tab: namespaces read from /proc against the real dockerd; probe edge cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.pages.details.isolation import ISOLATED, SHARED, cgroup_facts, probe, process_rows
from tests.gui.details.conftest import session_for
from vm_backend.engine.client import EngineClient


def open_isolation(qtbot: Any, details: Any, client: EngineClient, cid: str) -> Any:
    details.show_container(session_for(client), cid)
    tab = details.show_tab("Isolation")
    qtbot.waitUntil(lambda: tab.report is not None, timeout=10_000)
    return tab


@pytest.mark.engine
def test_normal_container_has_its_own_pid_and_net(
    qtbot: Any, details: Any, engine_client: EngineClient, new_container: Any
) -> None:
    cid = new_container(["sleep", "600"], mem_limit="64m", pids_limit=50)
    tab = open_isolation(qtbot, details, engine_client, cid)
    assert tab.report.local, tab.report.reason
    status = tab.namespace_status()
    assert set(status) == {"pid", "net", "mnt", "uts", "ipc", "user", "cgroup", "time"}
    assert status["pid"] == ISOLATED
    assert status["net"] == ISOLATED
    assert status["mnt"] == ISOLATED
    facts = dict(tab.report.cgroup.rows)
    assert "64.0 MiB" in [v for k, v in facts.items() if k.startswith("Memory limit")]
    assert "50" in [v for k, v in facts.items() if k.startswith("PIDs limit")]
    process = dict(tab.report.process)
    assert process["Is root inside root outside?"].startswith("yes")
    config = dict(tab.report.config)
    assert config["Privileged"] == "no"
    # The facts tree shows all three sections.
    assert tab.facts.topLevelItemCount() == 3


@pytest.mark.engine
def test_host_network_is_shared(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["sleep", "600"], network_mode="host")
    tab = open_isolation(qtbot, details, docker_client, cid)
    status = tab.namespace_status()
    assert status["net"] == SHARED
    assert status["pid"] == ISOLATED
    assert dict(tab.report.config)["Network mode"] == "host"


@pytest.mark.engine
def test_added_capability_is_seen_by_the_kernel(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    # (--privileged itself is refused by this test host's sandbox.)
    cid = new_docker_container(["sleep", "600"], cap_add=["NET_ADMIN"], cap_drop=["CHOWN"])
    tab = open_isolation(qtbot, details, docker_client, cid)
    config = dict(tab.report.config)
    assert config["Capabilities added"] == "NET_ADMIN"
    assert config["Capabilities dropped"] == "CHOWN"
    caps = dict(tab.report.process)["Effective capabilities"]
    assert "net_admin" in caps
    assert "chown" not in caps.replace("lchown", "")


@pytest.mark.engine
def test_stopped_container_shows_only_inspect(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["true"], start=False)
    tab = open_isolation(qtbot, details, docker_client, cid)
    assert not tab.report.local
    assert "not running" in tab.summary.text()
    assert not tab.namespaces.isVisibleTo(tab)
    assert tab.facts.topLevelItemCount() == 1


def test_remote_engine_says_so_plainly() -> None:
    info = {"Id": "a" * 64, "State": {"Pid": 1234}, "HostConfig": {"Privileged": True}}
    report = probe(info, "ssh://user@far-away")
    assert not report.local
    assert "not on this computer's kernel" in report.reason
    assert not report.namespaces
    assert dict(report.config)["Privileged"] == "yes"


def test_pid_of_another_kernel_is_not_trusted(tmp_path: Path) -> None:
    """A local socket whose PID belongs to a VM: /proc/<pid> here is someone else."""
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cgroup").write_text("0::/user.slice/some-other-process\n")
    info = {"Id": "b" * 64, "State": {"Pid": 4242}, "HostConfig": {}}
    report = probe(info, "unix:///run/berth/docker.sock", proc=proc)
    assert not report.local
    assert "not this container's process" in report.reason


def test_cgroup_v2_limits(tmp_path: Path) -> None:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "cgroup").write_text("0::/system.slice/docker-abc.scope\n")
    d = root / "system.slice" / "docker-abc.scope"
    d.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    for name, value in {
        "memory.max": "134217728", "memory.current": "1048576", "cpu.max": "150000 100000",
        "pids.max": "max", "pids.current": "3",
    }.items():
        (d / name).write_text(value + "\n")
    facts = cgroup_facts(7, proc, root)
    assert facts is not None and facts.version == 2
    rows = dict(facts.rows)
    assert rows["Memory limit (memory.max)"] == "128.0 MiB"
    assert rows["Memory in use (memory.current)"] == "1.0 MiB"
    assert rows["CPU limit (cpu.max)"].startswith("1.5 CPUs")
    assert rows["PIDs limit (pids.max)"] == "no limit"
    assert rows["PIDs in use (pids.current)"] == "3"


def test_user_namespace_mapping(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "9").mkdir(parents=True)
    (proc / "9" / "uid_map").write_text("         0     100000      65536\n")
    (proc / "9" / "status").write_text("Uid:\t100000\t100000\t100000\t100000\nCapEff:\t0\n")
    rows = dict(process_rows(9, proc))
    assert rows["Is root inside root outside?"] == (
        "no: root in the container is uid 100000 on the host"
    )
    assert rows["Effective capabilities"] == "0: none"


def test_engine_text_in_tooltips_is_escaped(qtbot: Any) -> None:
    from app.pages.details.isolation import IsolationReport, IsolationTab

    tab = IsolationTab()
    qtbot.addWidget(tab)
    report = IsolationReport(False, "remote", 0, config=(("Security options", "<b>x</b>"),))
    tab.show_report(report)
    section = tab.facts.topLevelItem(0)
    child = section.child(0)
    assert child.text(1) == "<b>x</b>"
    assert child.toolTip(1) == "<p>&lt;b&gt;x&lt;/b&gt;</p>"
