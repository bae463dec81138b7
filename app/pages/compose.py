"""Compose: projects found from labels, whole-project actions, merged logs, up/down a file.

The project list is rebuilt from the session's container table when it changes (projects
are few); the selected project and expanded rows are kept. Project actions use the engine
API; up/down/validate of a file run the user's Compose CLI on a worker thread with the
output streamed into the page.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, call_in_gui, user_message
from app.pages.registry import register_page
from app.session import EngineSession
from app.widgets.logview import LogPanel
from vm_backend.engine import compose
from vm_backend.engine.compose import ComposeProject, MergedLogs
from vm_backend.engine.errors import EngineError
from vm_backend.engine.models import Container

if TYPE_CHECKING:
    from app.context import AppContext

ACTIONS = ("start", "stop", "restart", "remove")


def project_action(session: EngineSession, project: ComposeProject, action: str) -> list[str]:
    """Apply ``action`` to every container of the project; returns per-container failures."""
    client = session.client
    failures = []
    for c in project.containers:
        try:
            if action == "start" and not c.running:
                client.start(c.id)
            elif action == "stop" and c.running:
                client.stop(c.id)
            elif action == "restart":
                client.restart(c.id)
            elif action == "remove":
                client.remove(c.id, force=True)
        except EngineError as err:
            failures.append(f"{c.name}: {err.message}")
    return failures


class ComposeEditor(QWidget):
    """Open, edit (validated as you type), save, and bring a compose file up or down."""

    def __init__(self, page: ComposePage) -> None:
        super().__init__(page)
        self.page = page
        self.path: Path | None = None
        self._run: compose.ComposeRun | None = None
        layout = QVBoxLayout(self)
        bar = QHBoxLayout()
        self.open_button = QPushButton("Open…")
        self.save_button = QPushButton("Save")
        self.validate_button = QPushButton("Validate")
        self.up_button = QPushButton("Up")
        self.down_button = QPushButton("Down")
        self.cancel_button = QPushButton("Cancel")
        for b in (
            self.open_button,
            self.save_button,
            self.validate_button,
            self.up_button,
            self.down_button,
            self.cancel_button,
        ):
            bar.addWidget(b)
        bar.addStretch(1)
        layout.addLayout(bar)
        self.file_label = QLabel("No file open. Open a compose.yaml to edit it and run it.")
        self.file_label.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(self.file_label)
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.text = QPlainTextEdit()
        self.text.setFont(mono)
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.problems = QLabel("")
        self.problems.setObjectName("fieldError")
        self.problems.setTextFormat(Qt.TextFormat.PlainText)
        self.problems.setWordWrap(True)
        self.output = QPlainTextEdit()
        self.output.setReadOnly(True)
        self.output.setFont(mono)
        self.output.setPlaceholderText("Output of compose up / down / validate appears here.")
        self.output.setMaximumBlockCount(20_000)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.text)
        split.addWidget(self.output)
        split.setSizes([400, 160])
        layout.addWidget(split, 1)
        layout.addWidget(self.problems)
        self._check_timer = QTimer(self)
        self._check_timer.setSingleShot(True)
        self._check_timer.setInterval(300)
        self._check_timer.timeout.connect(self._check_text)
        self.text.textChanged.connect(self._check_timer.start)
        self.open_button.clicked.connect(self._ask_open)
        self.save_button.clicked.connect(self.save)
        self.validate_button.clicked.connect(self.validate)
        self.up_button.clicked.connect(lambda: self.run("up"))
        self.down_button.clicked.connect(lambda: self.run("down"))
        self.cancel_button.clicked.connect(self.cancel)
        self._update_buttons()

    def _update_buttons(self) -> None:
        has_file = self.path is not None
        running = self._run is not None
        for b in (self.save_button, self.validate_button, self.up_button, self.down_button):
            b.setEnabled(has_file and not running)
        self.cancel_button.setEnabled(running)

    def _ask_open(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a compose file", str(Path.home()), "Compose files (*.yaml *.yml)"
        )
        if path:
            self.open(Path(path))

    def open(self, path: Path) -> None:
        def loaded(text: str) -> None:
            self.path = path
            self.text.setPlainText(text)
            self.file_label.setText(str(path))
            self._update_buttons()

        Op(path.read_text, encoding="utf-8", errors="replace").success(loaded).failure(
            lambda err: self.problems.setText(f"Could not open {path}: {user_message(err)}")
        ).run(self)

    def _check_text(self) -> None:
        problems = compose.validate_text(self.text.toPlainText()) if self.path else []
        self.problems.setText("\n".join(problems))

    def save(self) -> None:
        path = self.path
        if path is None:
            return
        text = self.text.toPlainText()

        def write() -> None:
            tmp = path.with_name(f".{path.name}.berth-tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)

        Op(write).success(lambda _: self.output.appendPlainText(f"Saved {path}.")).failure(
            lambda err: self.problems.setText(f"Could not save: {user_message(err)}")
        ).run(self)

    def _engine_url(self) -> str | None:
        session = self.page.ctx.session
        if session is None:
            self.problems.setText("No engine is connected.")
            return None
        return session.endpoint.url

    def validate(self) -> None:
        url, path = self._engine_url(), self.path
        if url is None or path is None:
            return
        self.save()
        self.output.appendPlainText(f"$ compose config -q  ({path.name})")

        def shown(problems: list[str]) -> None:
            self.problems.setText("\n".join(problems))
            self.output.appendPlainText("\n".join(problems) if problems else "The file is valid.")

        Op(compose.validate_file, path, url).success(shown).failure(
            lambda err: self.problems.setText(user_message(err))
        ).run(self)

    def run(self, verb: str) -> None:
        url, path = self._engine_url(), self.path
        if url is None or path is None:
            return
        text = self.text.toPlainText()
        problems = compose.validate_text(text)
        if problems:
            self.problems.setText("\n".join(problems))
            return
        try:
            path.write_text(text, encoding="utf-8")
            runner = compose.up(path, url) if verb == "up" else compose.down(path, url)
        except (compose.ComposeError, OSError) as err:
            self.problems.setText(user_message(err))
            return
        self._run = runner
        self._update_buttons()
        self.output.appendPlainText("$ " + " ".join(runner.argv))
        buffer: list[str] = []
        lock = threading.Lock()

        def flush() -> None:
            with lock:
                lines, buffer[:] = list(buffer), []
            if lines:
                self.output.appendPlainText("\n".join(lines))

        def pump() -> int:
            for line in runner:
                with lock:
                    buffer.append(line)
                    first = len(buffer) == 1
                if first:
                    call_in_gui(lambda: QTimer.singleShot(100, flush))
            return runner.returncode or 0

        def finished(code: int) -> None:
            flush()
            self.output.appendPlainText(f"[compose {verb} exited with code {code}]")
            if code:
                self.problems.setText(f"compose {verb} failed; the output above says why.")

        def done() -> None:
            self._run = None
            self._update_buttons()

        Op(pump).success(finished).failure(
            lambda err: self.problems.setText(user_message(err))
        ).finally_(done).run(self)

    def cancel(self) -> None:
        if self._run is not None:
            Op(self._run.cancel).run(self)


class ComposePage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self._session: EngineSession | None = None
        self._projects: dict[str, ComposeProject] = {}
        self._logs: MergedLogs | None = None
        layout = QVBoxLayout(self)
        bar = QHBoxLayout()
        self.buttons: dict[str, QPushButton] = {}
        for action in ACTIONS:
            b = QPushButton(action.capitalize() + (" project…" if action == "remove" else ""))
            b.clicked.connect(lambda _c=False, a=action: self.act(a))
            bar.addWidget(b)
            self.buttons[action] = b
        self.state = QLabel("")
        self.state.setTextFormat(Qt.TextFormat.PlainText)
        bar.addWidget(self.state, 1)
        self.cli_note = QLabel("")
        self.cli_note.setTextFormat(Qt.TextFormat.PlainText)
        self.cli_note.setObjectName("muted")
        layout.addLayout(bar)
        layout.addWidget(self.cli_note)
        split = QSplitter(Qt.Orientation.Horizontal)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Project / service", "State", "Container"])
        self.tree.setColumnWidth(0, 200)
        split.addWidget(self.tree)
        self.tabs = QTabWidget()
        self.logs = LogPanel(capacity=ctx.settings.log_buffer_lines)
        self.editor = ComposeEditor(self)
        self.tabs.addTab(self.logs, "Logs (all services)")
        self.tabs.addTab(self.editor, "Compose file")
        split.addWidget(self.tabs)
        split.setSizes([380, 700])
        layout.addWidget(split, 1)
        self._log_timer = QTimer(self)
        self._log_timer.setInterval(150)
        self._log_timer.timeout.connect(self._drain_logs)
        self.tree.itemSelectionChanged.connect(self._selected)
        ctx.session_changed.connect(self._attach)
        self._attach(ctx.session)
        Op(compose.find_compose_cli).success(self._cli_found).run(self)
        self._update_buttons()

    def _cli_found(self, cli: list[str] | None) -> None:
        if cli is None:
            self.cli_note.setText(
                "Compose is not installed: projects can be started, stopped "
                "and removed here, but up/down needs it. " + compose.INSTALL_HINT
            )
        else:
            self.cli_note.setText(f"Compose: {' '.join(cli)}")

    def _attach(self, session: EngineSession | None) -> None:
        if self._session is not None:
            try:
                self._session.diffs.disconnect(self._diffs)
            except (RuntimeError, TypeError):
                pass
        self._session = session
        if session is not None:
            session.diffs.connect(self._diffs)
            self._rebuild(session.snapshot("container"))
        else:
            self._rebuild([])

    def _diffs(self, diffs: list[Any]) -> None:
        if self._session is not None and any(d.kind == "container" for d in diffs):
            self._rebuild(self._session.snapshot("container"))

    def selected_project(self) -> ComposeProject | None:
        item = self.tree.currentItem()
        while item is not None and item.parent() is not None:
            item = item.parent()
        if item is None:
            return None
        return self._projects.get(item.text(0))

    def _rebuild(self, containers: list[Container]) -> None:
        chosen = self.selected_project()
        expanded = set()
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item is not None and item.isExpanded():
                expanded.add(item.text(0))
        found = compose.projects(containers)
        self._projects = {p.name: p for p in found}
        self.tree.blockSignals(True)
        self.tree.clear()
        for p in found:
            top = QTreeWidgetItem([p.name, p.state, f"{len(p.containers)} containers"])
            top.setToolTip(0, p.working_dir or p.name)
            for c in p.containers:
                top.addChild(QTreeWidgetItem([c.compose_service or "?", c.state.value, c.name]))
            self.tree.addTopLevelItem(top)
            top.setExpanded(p.name in expanded or not expanded)
            if chosen is not None and p.name == chosen.name:
                self.tree.setCurrentItem(top)
        self.tree.blockSignals(False)
        self.state.setText(
            f"{len(found)} projects"
            if found
            else "No compose projects on this engine. Open a compose file to start one."
        )
        if chosen is not None and chosen.name not in self._projects:
            self._stop_logs()
        self._update_buttons()

    def _update_buttons(self) -> None:
        has = self.selected_project() is not None and self._session is not None
        for b in self.buttons.values():
            b.setEnabled(has)

    def _selected(self) -> None:
        self._update_buttons()
        project = self.selected_project()
        self._stop_logs()
        if project is None or self._session is None:
            return
        self.logs.model.clear()
        self._logs = MergedLogs(self._session.client, project.containers)
        self._logs.start()
        self._log_timer.start()

    def _drain_logs(self) -> None:
        if self._logs is not None:
            lines = self._logs.take()
            if lines:
                self.logs.append_lines(lines)

    def _stop_logs(self) -> None:
        self._log_timer.stop()
        if self._logs is not None:
            logs, self._logs = self._logs, None
            Op(logs.close).run()

    def act(self, action: str) -> None:
        project, session = self.selected_project(), self._session
        if project is None or session is None:
            return
        if action == "remove" and self.ctx.settings.confirm_destructive:
            names = "\n".join(c.name for c in project.containers)
            answer = QMessageBox.question(
                self,
                "Remove project",
                f"Remove every container of project {project.name}?\n\n{names}",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.state.setText(f"{action.capitalize()}ing {project.name}…")
        for b in self.buttons.values():
            b.setEnabled(False)

        def done(failures: list[str]) -> None:
            self.state.setText(
                f"{project.name}: {action} failed for " + "; ".join(failures)
                if failures
                else f"{project.name}: {action} done."
            )

        Op(project_action, session, project, action).success(done).failure(
            lambda err: self.state.setText(user_message(err))
        ).finally_(self._update_buttons).run(self)

    def hideEvent(self, event: Any) -> None:
        self._stop_logs()  # no log streams for a page nobody looks at
        super().hideEvent(event)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self._logs is None and self.selected_project() is not None:
            self._selected()


register_page("compose", "Compose", ComposePage, "folder")
