"""The guest's own figures (memory, data disk, CPU as the guest sees them) on the Overview.

They come from the Berth agent in the guest, through berthd's status (``agent``). The
agent's section is read defensively: any of its figures may be missing (an older guest
image, an agent still starting, a berthd without the agent), and then the panel says
plainly what it needs instead of showing an empty chart.

berthd sends the agent's snapshot (docs/agent.md: ``connected``, ``memory_used_bytes``,
``memory_total_bytes``, ``memory_available_bytes``, ``disk_used_bytes``,
``disk_total_bytes``, ``cpu_percent``, ``error`` …), or ``null`` when the VM has no agent.
Nested shapes are read too, so the page does not break if the section changes: ``memory``
/ ``disk`` as ``{"used_bytes", "total_bytes", "available_bytes"}`` (or ``used``/``total``),
CPU as ``cpu: {"percent"}`` or a bare number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtWidgets import QVBoxLayout, QWidget

from app.pages.details._base import human_bytes, plain_label
from app.pages.details.chart import LineChart


@dataclass(frozen=True)
class GuestFigures:
    cpu_percent: float | None = None
    memory_used: float | None = None
    memory_total: float | None = None
    disk_used: float | None = None
    disk_total: float | None = None

    @property
    def empty(self) -> bool:
        return self.cpu_percent is None and self.memory_used is None and self.disk_used is None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _pair(agent: dict[str, Any], name: str) -> tuple[float | None, float | None]:
    """(used, total) of ``memory`` or ``disk``, from whichever shape the agent sent."""
    nested = agent.get(name)
    used = total = available = None
    if isinstance(nested, dict):
        used = _num(nested.get("used_bytes", nested.get("used")))
        total = _num(nested.get("total_bytes", nested.get("total")))
        available = _num(nested.get("available_bytes", nested.get("available")))
    used = used if used is not None else _num(agent.get(f"{name}_used_bytes"))
    total = total if total is not None else _num(agent.get(f"{name}_total_bytes"))
    if available is None:
        available = _num(agent.get(f"{name}_available_bytes"))
    if used is None and total is not None and available is not None:
        used = max(0.0, total - available)
    return used, total


def guest_figures(doc: dict[str, Any] | None) -> GuestFigures | None:
    """The agent's figures from a status document; None when there is no agent to ask."""
    agent = (doc or {}).get("agent")
    if not isinstance(agent, dict) or agent.get("connected") is False:
        return None
    cpu = agent.get("cpu")
    cpu_percent = _num(agent.get("cpu_percent"))
    if cpu_percent is None:
        cpu_percent = _num(cpu.get("percent")) if isinstance(cpu, dict) else _num(cpu)
    mem_used, mem_total = _pair(agent, "memory")
    disk_used, disk_total = _pair(agent, "disk")
    return GuestFigures(cpu_percent, mem_used, mem_total, disk_used, disk_total)


class GuestPanel(QWidget):
    """Guest CPU and memory charts plus the data disk's use, or why there are none."""

    def __init__(self, interval_s: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.note = plain_label("", self)
        self.note.setWordWrap(True)
        self.disk = plain_label("", self)
        self.cpu_chart = LineChart(
            self.tr("Guest CPU"), [self.tr("CPU")], lambda v: f"{v:.0f} %",
            capacity=150, interval=interval_s, minimum_max=10.0, parent=self,
        )
        self.mem_chart = LineChart(
            self.tr("Guest memory used"), [self.tr("Used")], human_bytes,
            capacity=150, interval=interval_s, binary=True, parent=self,
        )
        for chart in (self.cpu_chart, self.mem_chart):
            chart.setMinimumHeight(150)
            chart.setMaximumHeight(240)
            chart.hide()
        # The charts are laid out by the Overview, next to QEMU's own; this panel holds
        # the words (what the agent says, or why there are no figures).
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.note)
        layout.addWidget(self.disk)
        self.figures: GuestFigures | None = None
        self.disk.hide()

    def _show_charts(self, cpu: bool, mem: bool) -> None:
        self.cpu_chart.setVisible(cpu)
        self.mem_chart.setVisible(mem)

    def update_from(self, doc: dict[str, Any] | None, up: bool, sample: bool) -> None:
        """Render the status document's agent figures (``sample``: add a chart point)."""
        figures = guest_figures(doc) if up else None
        self.figures = figures
        if not up:
            self.note.setText(self.tr("Guest figures appear while the VM runs."))
            self._show_charts(False, False)
            self.disk.hide()
            return
        if figures is None or figures.empty:
            agent = (doc or {}).get("agent")
            if isinstance(agent, dict):
                text = self.tr(
                    "Guest figures (memory, disk and CPU as the VM sees them) need the Berth "
                    "agent, which is not connected yet."
                )
                if agent.get("error"):
                    text += " " + self.tr("Its last error: {0}").format(agent["error"])
                self.note.setText(text)
            else:
                self.note.setText(self.tr(
                    "Guest figures (memory, disk and CPU as the VM sees them) need the Berth "
                    "agent's reports, which this VM's image does not send; only QEMU's own "
                    "figures are shown."
                ))
            self._show_charts(False, False)
            self.disk.hide()
            return
        mem = ""
        if figures.memory_used is not None and figures.memory_total:
            mem = self.tr("; memory {0} of {1}").format(
                human_bytes(figures.memory_used), human_bytes(figures.memory_total)
            )
        self.note.setText(self.tr("Inside the VM, from the Berth agent") + mem + ".")
        if figures.disk_used is not None:
            total = (self.tr(" of {0}").format(human_bytes(figures.disk_total))
                     if figures.disk_total else "")
            self.disk.setText(
                self.tr("Data disk in the VM: {0} used{1}").format(
                    human_bytes(figures.disk_used), total
                )
            )
            self.disk.show()
        else:
            self.disk.hide()
        if sample:
            if figures.cpu_percent is not None:
                self.cpu_chart.add_sample([figures.cpu_percent])
            if figures.memory_used is not None:
                self.mem_chart.add_sample([figures.memory_used])
        self._show_charts(figures.cpu_percent is not None, figures.memory_used is not None)
