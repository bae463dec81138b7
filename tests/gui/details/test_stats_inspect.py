"""Stats and Inspect tabs against the real dockerd, and the chart widget on its own."""

from __future__ import annotations

import json
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.pages.details.chart import LineChart, nice_binary_ceiling, nice_ceiling
from tests.gui.details.conftest import session_for
from vm_backend.engine.client import EngineClient


@pytest.mark.engine
def test_stats_receive_samples_and_processes(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["sh", "-c", "while true; do :; done"])
    details.show_container(session_for(docker_client), cid)
    tab = details.show_tab("Stats")
    qtbot.waitUntil(lambda: tab.sample_count >= 3, timeout=20_000)
    assert tab.running
    assert tab.mem_chart.latest() is not None and tab.mem_chart.latest()[0] > 0
    assert len(tab.net_chart.samples()) == tab.sample_count - 1  # rates need two samples
    qtbot.waitUntil(lambda: tab.cpu_chart.latest()[0] > 10, timeout=20_000)  # a busy loop
    qtbot.waitUntil(lambda: tab.processes.rowCount() >= 1, timeout=10_000)
    model = tab.processes
    titles = [model.headerData(i, Qt.Orientation.Horizontal) for i in range(model.columnCount())]
    assert "PID" in titles
    assert "CPU" in tab.summary.text()

    # Off screen, the stream and the polling stop; back on screen they resume.
    details.show_tab("Inspect")
    assert not tab.running
    details.show_tab("Stats")
    assert tab.running


@pytest.mark.engine
def test_inspect_tree_search_finds_keys_and_values(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["sleep", "600"])
    details.show_container(session_for(docker_client), cid)
    tab = details.show_tab("Inspect")
    qtbot.waitUntil(lambda: tab.data.get("Id") == cid, timeout=10_000)
    assert tab.model.rowCount() == len(tab.data)
    assert '"Id": "' + cid + '"' in tab.raw.toPlainText()
    assert tab.raw.isReadOnly()

    tab.search.setText("PidsLimit")  # a key, nested under HostConfig
    assert tab.match_count() == 1
    host_config = tab.proxy.index(0, 0)
    assert tab.proxy.rowCount() == 1 and host_config.data() == "HostConfig"
    assert tab.tree.isExpanded(host_config)

    tab.search.setText("berth.test")  # a key whose value is our label
    assert tab.match_count() >= 1

    # Copy value: the selected row's value (JSON for an object), and the raw document.
    tab.search.setText("PidsLimit")
    tab.tree.setCurrentIndex(tab.proxy.index(0, 0))  # HostConfig
    tab.copy_button.click()
    copied = json.loads(QGuiApplication.clipboard().text())
    assert copied["PidsLimit"] == tab.data["HostConfig"]["PidsLimit"]
    tab.copy_raw.click()
    assert json.loads(QGuiApplication.clipboard().text())["Id"] == cid

    tab.search.setText("no-such-thing-anywhere")
    assert tab.proxy.rowCount() == 0
    tab.search.clear()
    assert tab.proxy.rowCount() == len(tab.data)


def test_chart_ring_is_bounded_and_axes_are_readable(qtbot: Any) -> None:
    chart = LineChart("Net", ["rx", "tx"], lambda v: f"{v:.0f}", capacity=10)
    qtbot.addWidget(chart)
    for i in range(25):
        chart.add_sample([i, 2 * i])
    assert len(chart.samples()) == 10
    assert chart.samples()[0] == (15.0, 30.0)
    assert chart.axis_max() == 50
    chart.resize(400, 200)
    assert not chart.grab().isNull()
    with pytest.raises(ValueError):
        chart.add_sample([1.0])
    assert nice_ceiling(0.7) == 1.0
    assert nice_ceiling(3.1) == 5.0
    assert nice_ceiling(120) == 200
    assert nice_binary_ceiling(3 * 1024 * 1024) == 5 * 1024 * 1024
