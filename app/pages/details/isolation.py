"""The Isolation tab: what actually separates this container from the host.

Other managers show the engine's configuration. When Berth runs on the same kernel as
the engine, this tab also reads the kernel's own view of the container's main process:

* its namespaces (``/proc/<pid>/ns/*``) compared with the host's (``/proc/1/ns/*``, or
  Berth's own process when PID 1 is not readable): "isolated" or "shared with host";
* its cgroup, with the limits and current use the kernel enforces (cgroup v2 files, or the
  v1 equivalents on older hosts);
* whether root inside is root outside (``uid_map``), its effective capabilities, seccomp.

Same kernel means a local unix socket and a ``/proc/<pid>`` whose cgroup names the
container; behind a VM or a remote engine the PID belongs to another kernel, and the tab
says so and shows only what inspect reports. The probe below is Qt-free and every file
read happens in a worker thread.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QSplitter,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.pages.details._base import DetailsTab, human_bytes, plain_label
from vm_backend.engine.client import EngineClient

NAMESPACES = ("pid", "net", "mnt", "uts", "ipc", "user", "cgroup", "time")
ISOLATED = "isolated"
SHARED = "shared with host"
UNKNOWN = "unknown"

#: Linux capability numbers 0..40, in order (linux/capability.h).
CAPABILITIES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)
#: cgroup v1 reports "no memory limit" as a huge page-aligned number.
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class NamespaceRow:
    kind: str
    container: str
    host: str
    status: str


@dataclass(frozen=True)
class CgroupFacts:
    version: int
    path: str
    directory: str
    rows: tuple[tuple[str, str], ...]  # (what, value) for limits and current use


@dataclass(frozen=True)
class IsolationReport:
    """Everything the tab shows; built off the GUI thread."""

    local: bool
    reason: str
    pid: int
    reference: str = ""
    namespaces: tuple[NamespaceRow, ...] = ()
    cgroup: CgroupFacts | None = None
    process: tuple[tuple[str, str], ...] = ()
    config: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def is_local_url(url: str) -> bool:
    """A unix socket on this machine (a TCP or SSH engine is on another kernel)."""
    return url.startswith(("unix://", "http+unix://", "/"))


def config_rows(info: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The isolation-related settings the engine reports, as (name, value) text."""
    host = info.get("HostConfig") or {}
    state = info.get("State") or {}

    def text(value: Any) -> str:
        if value in (None, "", [], {}):
            return "—"
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return str(value)

    memory = int(host.get("Memory") or 0)
    nano = int(host.get("NanoCpus") or 0)
    quota, period = int(host.get("CpuQuota") or 0), int(host.get("CpuPeriod") or 0)
    cpus = f"{nano / 1e9:g}" if nano else (f"{quota / (period or 100000):g}" if quota > 0 else "")
    return (
        ("Main process PID", text(state.get("Pid") or "")),
        ("Privileged", "yes" if host.get("Privileged") else "no"),
        ("Capabilities added", text(host.get("CapAdd"))),
        ("Capabilities dropped", text(host.get("CapDrop"))),
        ("Security options", text(host.get("SecurityOpt"))),
        ("Read-only root filesystem", "yes" if host.get("ReadonlyRootfs") else "no"),
        ("User namespace mode", text(host.get("UsernsMode"))),
        ("Network mode", text(host.get("NetworkMode"))),
        ("PID mode", text(host.get("PidMode"))),
        ("IPC mode", text(host.get("IpcMode"))),
        ("Cgroup namespace mode", text(host.get("CgroupnsMode"))),
        ("AppArmor profile", text(info.get("AppArmorProfile"))),
        ("Memory limit (configured)", human_bytes(memory) if memory else "—"),
        ("CPU limit (configured)", f"{cpus} CPUs" if cpus else "—"),
        ("PIDs limit (configured)", text(host.get("PidsLimit") or "")),
    )


def namespace_rows(pid: int, proc: Path = Path("/proc")) -> tuple[str, tuple[NamespaceRow, ...]]:
    """Compare the container's namespaces with PID 1's (or, if hidden, our own)."""
    reference = "PID 1"
    ref_dir = proc / "1" / "ns"
    if _link(ref_dir / "net") is None:
        # PID 1 is unreadable without CAP_SYS_PTRACE (or in a sandbox): Berth's own
        # process normally shares the host's namespaces, so compare with it instead.
        reference = "Berth's own process"
        ref_dir = proc / "self" / "ns"
    rows = []
    for kind in NAMESPACES:
        mine = _link(proc / str(pid) / "ns" / kind)
        host = _link(ref_dir / kind)
        status = UNKNOWN
        if mine is not None and host is not None:
            status = SHARED if mine == host else ISOLATED
        rows.append(NamespaceRow(kind, mine or "not readable", host or "not readable", status))
    return reference, tuple(rows)


def _limit(text: str | None, unit: str = "bytes") -> str:
    if text is None:
        return "not readable"
    if text in ("max", "-1"):
        return "no limit"
    try:
        value = int(text)
    except ValueError:
        return text
    if unit == "bytes":
        return "no limit" if value >= _V1_UNLIMITED else human_bytes(value)
    return str(value)


def _cpu_limit(quota: str | None, period: str | None) -> str:
    if quota is None:
        return "not readable"
    try:
        q, p = int(quota), int(period or 100000)
    except ValueError:
        return "no limit" if quota == "max" else quota
    if q < 0:
        return "no limit"
    return f"{q / p:g} CPUs ({q} µs per {p} µs)"


def cgroup_facts(
    pid: int, proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")
) -> CgroupFacts | None:
    """The container's cgroup and the limits/usage the kernel enforces on it."""
    text = _read(proc / str(pid) / "cgroup")
    if text is None:
        return None
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _hier, _sep, rest = line.partition(":")
        controllers, _sep, path = rest.partition(":")
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    if "" in paths and (root / "cgroup.controllers").exists():
        path = paths[""]
        d = root / path.lstrip("/")
        cpu = (_read(d / "cpu.max") or "").split()
        rows = (
            ("Memory limit (memory.max)", _limit(_read(d / "memory.max"))),
            ("Memory in use (memory.current)", _limit(_read(d / "memory.current"))),
            (
                "CPU limit (cpu.max)",
                _cpu_limit(cpu[0] if cpu else None, cpu[1] if len(cpu) > 1 else None),
            ),
            ("PIDs limit (pids.max)", _limit(_read(d / "pids.max"), "count")),
            ("PIDs in use (pids.current)", _limit(_read(d / "pids.current"), "count")),
        )
        return CgroupFacts(2, path, str(d), rows)
    mem = root / "memory" / paths.get("memory", "/").lstrip("/")
    cpu_dir = root / "cpu" / paths.get("cpu", paths.get("cpuacct", "/")).lstrip("/")
    pids = root / "pids" / paths.get("pids", "/").lstrip("/")
    rows = (
        ("Memory limit (memory.limit_in_bytes)", _limit(_read(mem / "memory.limit_in_bytes"))),
        ("Memory in use (memory.usage_in_bytes)", _limit(_read(mem / "memory.usage_in_bytes"))),
        (
            "CPU limit (cpu.cfs_quota_us)",
            _cpu_limit(_read(cpu_dir / "cpu.cfs_quota_us"), _read(cpu_dir / "cpu.cfs_period_us")),
        ),
        ("PIDs limit (pids.max)", _limit(_read(pids / "pids.max"), "count")),
        ("PIDs in use (pids.current)", _limit(_read(pids / "pids.current"), "count")),
    )
    return CgroupFacts(1, paths.get("memory", paths.get("", "")), str(mem), rows)


def decode_capabilities(hex_mask: str) -> list[str]:
    mask = int(hex_mask, 16)
    return [name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1]


def process_rows(pid: int, proc: Path = Path("/proc")) -> tuple[tuple[str, str], ...]:
    """User mapping, host uid, capabilities and seccomp of the main process."""
    rows: list[tuple[str, str]] = []
    uid_map = _read(proc / str(pid) / "uid_map")
    if uid_map is None:
        rows.append(("uid_map", "not readable"))
    else:
        rows.append(("uid_map (inside → outside, count)", " ; ".join(
            " ".join(line.split()) for line in uid_map.splitlines()
        )))
        root_outside = None
        for line in uid_map.splitlines():
            parts = line.split()
            if len(parts) == 3 and int(parts[0]) <= 0 < int(parts[0]) + int(parts[2]):
                root_outside = int(parts[1]) - int(parts[0])
        if root_outside == 0:
            verdict = "yes: root in the container is root on the host (no user namespace)"
        elif root_outside is None:
            verdict = "no: root in the container has no uid on the host"
        else:
            verdict = f"no: root in the container is uid {root_outside} on the host"
        rows.append(("Is root inside root outside?", verdict))
    status = _read(proc / str(pid) / "status") or ""
    fields = dict(
        (k.strip(), v.strip()) for k, _s, v in (line.partition(":") for line in status.splitlines())
    )
    if "Uid" in fields:
        real, effective, *_rest = [*fields["Uid"].split(), "", ""]
        rows.append(("Main process uid on the host", f"{effective} (real {real})"))
    if "CapEff" in fields:
        caps = decode_capabilities(fields["CapEff"])
        all_caps = len(caps) >= len(CAPABILITIES) - 3
        summary = f"{len(caps)}: " + (
            "all (privileged)" if all_caps else ", ".join(caps) or "none"
        )
        rows.append(("Effective capabilities", summary))
    if "CapBnd" in fields and fields["CapBnd"] != fields.get("CapEff"):
        bounding = decode_capabilities(fields["CapBnd"])
        rows.append(("Bounding capabilities (can be regained)", f"{len(bounding)}"))
    if "Seccomp" in fields:
        mode = {"0": "off", "1": "strict", "2": "filter"}.get(fields["Seccomp"], fields["Seccomp"])
        filters = fields.get("Seccomp_filters")
        rows.append(("Seccomp", f"{mode} ({filters} filter(s))" if filters else mode))
    label = _read(proc / str(pid) / "attr" / "current")
    # The kernel answers EINVAL when no LSM (AppArmor, SELinux, Smack) is active.
    rows.append(("Security label (AppArmor/SELinux)", label.strip("\x00") if label else "none"))
    if "NoNewPrivs" in fields:
        rows.append(("No new privileges", "yes" if fields["NoNewPrivs"] == "1" else "no"))
    return tuple(rows)


def probe(
    info: Mapping[str, Any],
    url: str,
    proc: Path = Path("/proc"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> IsolationReport:
    """Build the report for one inspected container (blocking file reads: use a worker)."""
    config = config_rows(info)
    state = info.get("State") or {}
    pid = int(state.get("Pid") or 0)
    cid = str(info.get("Id") or "")
    if not is_local_url(url):
        return IsolationReport(
            False,
            f"The engine at {url} is not on this computer's kernel (a VM or a remote host), "
            "so its processes cannot be examined from here. Showing what the engine reports.",
            pid, config=config,
        )
    if pid <= 0:
        return IsolationReport(
            False,
            "The container is not running: namespaces and cgroups exist only while it runs. "
            "Showing what the engine reports.",
            pid, config=config,
        )
    cgroup_text = _read(proc / str(pid) / "cgroup")
    if cgroup_text is None or (cid and cid not in cgroup_text):
        return IsolationReport(
            False,
            f"PID {pid} is not this container's process as seen from Berth (the engine runs "
            "in a VM or another PID namespace). Showing what the engine reports.",
            pid, config=config,
        )
    reference, namespaces = namespace_rows(pid, proc)
    return IsolationReport(
        True,
        f"Berth shares the engine's kernel: these facts are read from /proc/{pid} "
        f"and compared with {reference}.",
        pid,
        reference=reference,
        namespaces=namespaces,
        cgroup=cgroup_facts(pid, proc, cgroup_root),
        process=process_rows(pid, proc),
        config=config,
    )


def gather(client: EngineClient, container_id: str) -> IsolationReport:
    return probe(client.inspect_container(container_id), client.url)


class IsolationTab(DetailsTab):
    """Namespaces, cgroup limits and privileges, as the kernel sees them."""

    title = "Isolation"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.report: IsolationReport | None = None
        self._loading = False

        self.summary = plain_label("", self)
        self.summary.setWordWrap(True)
        self.refresh_button = QToolButton(self)
        self.refresh_button.setText(self.tr("Refresh"))
        self.namespaces = QTreeWidget(self)
        self.namespaces.setRootIsDecorated(False)
        self.namespaces.setHeaderLabels(
            [self.tr("Namespace"), self.tr("Container"), self.tr("Host"), self.tr("Status")]
        )
        self.namespaces.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.facts = QTreeWidget(self)
        self.facts.setHeaderLabels([self.tr("Property"), self.tr("Value")])
        self.facts.setColumnWidth(0, 300)
        self.facts.setWordWrap(True)

        head = QHBoxLayout()
        head.addWidget(self.summary, 1)
        head.addWidget(self.refresh_button)
        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(self.namespaces)
        splitter.addWidget(self.facts)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        # Eight namespace rows and a header: no more room than they need.
        rows = self.namespaces.fontMetrics().height() + 4
        splitter.setSizes([rows * (len(NAMESPACES) + 2), 10 * rows * 2])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(head)
        layout.addWidget(splitter, 1)

        self.refresh_button.clicked.connect(self.refresh)

    def reset(self) -> None:
        self.report = None
        self._loading = False
        self.namespaces.clear()
        self.facts.clear()
        self.summary.setText("")

    def activate(self) -> None:
        # Usage figures change: re-read each time the tab is shown.
        self.refresh()

    def refresh(self) -> None:
        if self.client is None or not self.container_id or self._loading:
            return
        self._loading = True
        if self.report is None:
            self.summary.setText(self.tr("Reading…"))
        generation = self.generation
        Op(gather, self.client, self.container_id).success(
            lambda report: self._show(generation, report)
        ).failure(lambda err: self._failed(generation, err)).run(self)

    def namespace_status(self) -> dict[str, str]:
        """Namespace kind -> status as shown (for tests and copy)."""
        out: dict[str, str] = {}
        for i in range(self.namespaces.topLevelItemCount()):
            item = self.namespaces.topLevelItem(i)
            if item is not None:
                out[item.text(0)] = item.text(3)
        return out

    def _show(self, generation: int, report: IsolationReport) -> None:
        if not self.current(generation):
            return
        self._loading = False
        self.show_report(report)

    def show_report(self, report: IsolationReport) -> None:
        """Show a probe's report (also usable without an engine)."""
        self.report = report
        self.summary.setText(report.reason)
        self.namespaces.clear()
        self.namespaces.setVisible(bool(report.namespaces))
        for row in report.namespaces:
            item = QTreeWidgetItem([row.kind, row.container, row.host, row.status])
            color = {ISOLATED: "#0a8a4a", SHARED: "#c0392b"}.get(row.status)
            if color:
                item.setForeground(3, QColor(color))
            self.namespaces.addTopLevelItem(item)
        self.facts.clear()
        sections: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        if report.cgroup is not None:
            cg = report.cgroup
            sections.append((
                self.tr("Cgroup (v{0})").format(cg.version),
                (("Path", cg.path), ("Read from", cg.directory), *cg.rows),
            ))
        if report.process:
            sections.append((self.tr("User and privileges (kernel)"), report.process))
        sections.append((self.tr("Engine configuration (inspect)"), report.config))
        for title, rows in sections:
            top = QTreeWidgetItem([title, ""])
            self.facts.addTopLevelItem(top)
            for name, value in rows:
                child = QTreeWidgetItem([name, value])
                # Tooltips guess at rich text; escape so engine text stays text.
                child.setToolTip(1, f"<p>{html.escape(value)}</p>")
                top.addChild(child)
            top.setExpanded(True)

    def _failed(self, generation: int, err: BaseException) -> None:
        if not self.current(generation):
            return
        self._loading = False
        self.summary.setText(user_message(err))
