"""The Stats tab: live CPU, memory, network and block I/O charts, and the process list.

The engine's stats stream (about one sample a second) is read by a worker thread; each
sample reaches the GUI through ``call_in_gui``. Network and disk counters are totals since
the container started, so the charts show their rate: the difference between two samples
over the time between them. The process list (``top``) is polled every few seconds, only
while the tab is on screen, and never with two requests in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, call_in_gui, user_message
from app.pages.details._base import DetailsTab, human_bytes, plain_label
from app.pages.details.chart import LineChart
from vm_backend.engine.client import EngineClient
from vm_backend.engine.models import StatsSample, TopResult
from vm_backend.engine.streams import Stream

#: Samples kept per chart: three minutes at the engine's one sample per second.
HISTORY = 180
TOP_INTERVAL_MS = 3000


class StatsReader:
    """Follows the stats stream in a worker thread; samples arrive on the GUI thread."""

    def __init__(
        self,
        client: EngineClient,
        container_id: str,
        on_sample: Callable[[StatsSample, float], None],
        on_end: Callable[[BaseException | None], None],
    ) -> None:
        self._client = client
        self._container_id = container_id
        self._on_sample = on_sample
        self._on_end = on_end
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._stream: Stream[StatsSample] | None = None
        self._thread = threading.Thread(target=self._run, name="berth-stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            stream = self._client.stats(self._container_id)
            with self._lock:
                self._stream = stream
            if self._stopped.is_set():
                stream.close()
            for sample in stream:
                if self._stopped.is_set():
                    break
                self._post(sample, time.monotonic())
        except Exception as err:  # noqa: BLE001 - reported on the GUI thread
            error = err
        if not self._stopped.is_set():
            call_in_gui(lambda: self._finish(error))

    def _post(self, sample: StatsSample, arrived: float) -> None:
        call_in_gui(lambda: self._deliver(sample, arrived))

    def _deliver(self, sample: StatsSample, arrived: float) -> None:
        if not self._stopped.is_set():
            self._on_sample(sample, arrived)

    def _finish(self, error: BaseException | None) -> None:
        if not self._stopped.is_set():
            self._on_end(error)


class StatsTab(DetailsTab):
    """Four charts over the last three minutes and the container's processes."""

    title = "Stats"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._reader: StatsReader | None = None
        self._previous: tuple[StatsSample, float] | None = None
        self._top_busy = False
        self.sample_count = 0

        self.cpu_chart = LineChart(
            self.tr("CPU"), [self.tr("used")], lambda v: f"{v:.0f} %" if v >= 10 else f"{v:.1f} %",
            capacity=HISTORY, minimum_max=10.0, parent=self,
        )
        self.mem_chart = LineChart(
            self.tr("Memory"), [self.tr("used")], human_bytes,
            capacity=HISTORY, binary=True, minimum_max=1 << 20, parent=self,
        )
        self.net_chart = LineChart(
            self.tr("Network"), [self.tr("rx"), self.tr("tx")], lambda v: human_bytes(v, "/s"),
            capacity=HISTORY, binary=True, minimum_max=1024, parent=self,
        )
        self.blk_chart = LineChart(
            self.tr("Block I/O"), [self.tr("read"), self.tr("write")],
            lambda v: human_bytes(v, "/s"),
            capacity=HISTORY, binary=True, minimum_max=1024, parent=self,
        )
        charts = QWidget(self)
        grid = QGridLayout(charts)
        grid.setContentsMargins(4, 4, 4, 4)
        grid.addWidget(self.cpu_chart, 0, 0)
        grid.addWidget(self.mem_chart, 0, 1)
        grid.addWidget(self.net_chart, 1, 0)
        grid.addWidget(self.blk_chart, 1, 1)

        self.summary = plain_label("", self)
        self.top_status = plain_label("", self)
        self.processes = QStandardItemModel(0, 0, self)
        self.process_view = QTableView(self)
        self.process_view.setModel(self.processes)
        self.process_view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.process_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.process_view.verticalHeader().setVisible(False)
        self.process_view.setWordWrap(False)  # one process per line, long commands elided
        self.process_view.verticalHeader().setDefaultSectionSize(
            self.fontMetrics().height() + 6
        )
        self.process_view.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.process_view.horizontalHeader().setStretchLastSection(True)
        procs = QWidget(self)
        procs_layout = QVBoxLayout(procs)
        procs_layout.setContentsMargins(4, 0, 4, 4)
        head = QHBoxLayout()
        head.addWidget(plain_label(self.tr("Processes"), procs))
        head.addWidget(self.top_status, 1)
        procs_layout.addLayout(head)
        procs_layout.addWidget(self.process_view)

        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(charts)
        splitter.addWidget(procs)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(splitter, 1)
        self.summary.setContentsMargins(6, 4, 6, 0)

        self._top_timer = QTimer(self)
        self._top_timer.setInterval(TOP_INTERVAL_MS)
        self._top_timer.timeout.connect(self.refresh_processes)

    # ---- lifecycle -------------------------------------------------------------------
    def reset(self) -> None:
        for chart in (self.cpu_chart, self.mem_chart, self.net_chart, self.blk_chart):
            chart.clear()
        self._previous = None
        self.sample_count = 0
        self.processes.clear()
        self.summary.setText("")
        self.top_status.setText("")

    def activate(self) -> None:
        if self.client is None or not self.container_id:
            return
        if self._reader is None:
            self._reader = StatsReader(
                self.client, self.container_id, self._sample, self._stream_ended
            )
            self._reader.start()
            self.summary.setText(self.tr("Waiting for the first sample…"))
        if not self._top_timer.isActive():
            self._top_timer.start()
            self.refresh_processes()

    def deactivate(self) -> None:
        # Charts and process list are only worth their engine traffic while seen.
        self.stop()

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self._top_timer.stop()
        self._previous = None

    def release(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    @property
    def running(self) -> bool:
        return self._reader is not None

    def container_started(self) -> None:
        """The container (re)started: resume a stream that ended, if the tab is shown."""
        if self._reader is None and self._top_timer.isActive():
            self.activate()

    def refresh_processes(self) -> None:
        if self.client is None or not self.container_id or self._top_busy:
            return
        self._top_busy = True
        generation = self.generation

        def done() -> None:
            self._top_busy = False

        Op(self.client.top, self.container_id).success(
            lambda result: self._show_processes(generation, result)
        ).failure(lambda err: self._top_failed(generation, err)).finally_(done).run(self)

    # ---- GUI thread ------------------------------------------------------------------
    def _sample(self, sample: StatsSample, arrived: float) -> None:
        self.sample_count += 1
        previous = self._previous
        self._previous = (sample, arrived)
        self.cpu_chart.add_sample([sample.cpu_percent])
        self.mem_chart.add_sample([sample.mem_usage])
        if previous is not None:
            before, then = previous
            elapsed = max(arrived - then, 1e-3)

            def rate(now: int, old: int) -> float:
                # Counters restart from zero when the container restarts.
                return max(0, now - old) / elapsed

            self.net_chart.add_sample(
                [rate(sample.net_rx, before.net_rx), rate(sample.net_tx, before.net_tx)]
            )
            self.blk_chart.add_sample(
                [rate(sample.blk_read, before.blk_read), rate(sample.blk_write, before.blk_write)]
            )
        limit = human_bytes(sample.mem_limit) if sample.mem_limit else self.tr("no limit")
        self.summary.setText(
            self.tr(
                "CPU {0:.1f} % · memory {1} of {2} ({3:.1f} %) · {4} processes · "
                "network in {5} out {6} · disk read {7} written {8}"
            ).format(
                sample.cpu_percent, human_bytes(sample.mem_usage), limit, sample.mem_percent,
                sample.pids, human_bytes(sample.net_rx), human_bytes(sample.net_tx),
                human_bytes(sample.blk_read), human_bytes(sample.blk_write),
            )
        )

    def _stream_ended(self, error: BaseException | None) -> None:
        self._reader = None
        if error is not None:
            self.summary.setText(user_message(error))
        else:
            self.summary.setText(self.tr("The stats stream ended (the container stopped)."))

    def _show_processes(self, generation: int, result: TopResult) -> None:
        if not self.current(generation):
            return
        model = self.processes
        # Update cells in place rather than resetting, so selection and scroll survive.
        titles = [
            model.headerData(i, Qt.Orientation.Horizontal) for i in range(model.columnCount())
        ]
        if titles != list(result.titles):
            model.setColumnCount(len(result.titles))
            model.setHorizontalHeaderLabels(list(result.titles))
        if model.rowCount() > len(result.processes):
            model.removeRows(len(result.processes), model.rowCount() - len(result.processes))
        for row, process in enumerate(result.processes):
            if row >= model.rowCount():
                model.appendRow([QStandardItem(cell) for cell in process])
                continue
            for col, cell in enumerate(process[: model.columnCount()]):
                item = model.item(row, col)
                if item is None:
                    model.setItem(row, col, QStandardItem(cell))
                elif item.text() != cell:
                    item.setText(cell)
        self.top_status.setText(self.tr("{0} running").format(len(result.processes)))

    def _top_failed(self, generation: int, err: BaseException) -> None:
        if not self.current(generation):
            return
        self.top_status.setText(user_message(err))
        if self.processes.rowCount():
            self.processes.removeRows(0, self.processes.rowCount())
