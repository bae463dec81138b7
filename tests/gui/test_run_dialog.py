"""The Run dialog: messages as you type for every field, Run enabled only when valid,
the docker run command, and engine refusals shown without losing what was typed."""

from __future__ import annotations

from typing import Any

import pytest

from app.dialogs.run import RunDialog
from tests.gui.conftest import FakeSession
from vm_backend.engine.errors import EngineError


@pytest.fixture
def dialog(qtbot: Any, ctx: Any) -> RunDialog:
    ctx.use_session(FakeSession())
    dlg = RunDialog(ctx, image="busybox:latest")
    qtbot.addWidget(dlg)
    dlg.show()
    return dlg


def _error(dialog: RunDialog, key: str) -> str:
    label = dialog.error_labels[key]
    return label.text() if label.isVisible() else ""


def test_a_valid_form_enables_run_and_shows_the_command(dialog: RunDialog) -> None:
    assert dialog.run_button.isEnabled()
    dialog.name.setText("web")
    dialog.ports.add_row("8080:80")
    dialog.env.add_row("A=1")
    dialog.volumes.add_row("/srv/data:/data:ro")
    dialog.memory.setText("256m")
    dialog.restart.setEditText("on-failure:3")
    dialog.auto_remove.setChecked(True)
    dialog.command.setText("httpd -f -p 80")
    assert dialog.run_button.isEnabled()
    dialog.show_command.setChecked(True)
    assert dialog.command_view.isVisible()
    assert dialog.command_view.toPlainText() == (
        "docker run -d --name web --rm -p 8080:80 -e A=1 -v /srv/data:/data:ro "
        "--restart on-failure:3 --memory 256m busybox:latest httpd -f -p 80"
    )


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("image", "", "The image is empty"),
        ("image", "Nginx", "capital letters"),
        ("image", "nginx:", "not a valid image reference"),
        ("name", "-bad", "not a valid container name"),
        ("command", "sh -c 'unclosed", "cannot be split"),
        ("restart", "sometimes", "Restart policy 'sometimes' is unknown"),
        ("restart", "always:3", "Only on-failure takes a retry count"),
        ("memory", "lots", "is not a memory size"),
        ("memory", "1m", "below the 6 MiB"),
        ("cpus", "0", "must be more than 0"),
        ("cpus", "two", "is not a number of CPUs"),
    ],
)
def test_single_fields_say_what_is_wrong_as_you_type(
    dialog: RunDialog, field: str, text: str, expected: str
) -> None:
    if field == "image":
        dialog.image.setEditText(text)
    elif field == "restart":
        dialog.restart.setEditText(text)
    else:
        getattr(dialog, field).setText(text)
    key = {"memory": "limits", "cpus": "limits"}.get(field, field)
    assert expected in _error(dialog, key)
    assert not dialog.run_button.isEnabled()
    # Fixing the field clears the message and enables Run again.
    if field == "image":
        dialog.image.setEditText("busybox")
    elif field == "restart":
        dialog.restart.setEditText("no")
    else:
        getattr(dialog, field).setText("")
    assert _error(dialog, key) == ""
    assert dialog.run_button.isEnabled()


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("ports", "99999:80", "out of range"),
        ("ports", "80/icmp", "Protocol 'icmp' is unknown"),
        ("ports", "1:2:3:4", "too many colons"),
        ("env", "NOEQUALS", "has no '='"),
        ("env", "BAD KEY=1", "not a valid variable name"),
        ("volumes", "relative:path", "not absolute"),
        ("volumes", "/a:/b:rx", "unknown"),
    ],
)
def test_list_rows_show_their_own_message(
    dialog: RunDialog, field: str, text: str, expected: str
) -> None:
    lst = getattr(dialog, field)
    edit = lst.add_row(text)
    _box, _edit, error = lst.rows[0]
    assert expected in error.text() and error.isVisible()
    assert not dialog.run_button.isEnabled()
    lst.remove_row(edit)
    assert dialog.run_button.isEnabled()


def test_duplicate_env_keys_and_cpu_over_the_engine_count(dialog: RunDialog) -> None:
    dialog.env.add_row("A=1")
    dialog.env.add_row("A=2")
    assert "A is set more than once" in _error(dialog, "env")
    assert not dialog.run_button.isEnabled()
    dialog.env.remove_row(dialog.env.rows[1][1])
    dialog.host_cpus = 2
    dialog.cpus.setText("4")
    assert "more than this engine has (2)" in _error(dialog, "limits")


def test_engine_refusal_keeps_the_dialog_and_its_fields(
    qtbot: Any, dialog: RunDialog, ctx: Any
) -> None:
    client = ctx.session.client
    client.fail["run"] = EngineError(
        "Creating a container from busybox:latest: <b>No such image</b>", "Pull it first."
    )
    dialog.name.setText("keepme")
    dialog.ports.add_row("8080:80")
    dialog.submit()
    qtbot.waitUntil(lambda: dialog.engine_error.isVisible(), timeout=5000)
    assert "<b>No such image</b>" in dialog.engine_error.text()
    assert dialog.engine_error.textFormat().name == "PlainText"
    assert dialog.isVisible() and dialog.result() == 0
    assert dialog.name.text() == "keepme" and dialog.ports.texts() == ["8080:80"]
    qtbot.waitUntil(lambda: dialog.run_button.isEnabled(), timeout=5000)
    # A second try that works closes the dialog and reports the new container.
    del client.fail["run"]
    with qtbot.waitSignal(dialog.started, timeout=5000) as blocker:
        dialog.submit()
    assert blocker.args[1] == "keepme"
    assert not dialog.isVisible()


def test_prefill_and_local_images_offered(qtbot: Any, ctx: Any) -> None:
    from vm_backend.engine.models import Image, Network

    session = FakeSession()
    session.tables["image"] = [Image("sha256:1", ("a/b:1", "c:latest"), (), 1, 0.0)]
    session.tables["network"] = [Network("n1", "backend", "bridge", "local", False, (), (), "")]
    ctx.use_session(session)
    dlg = RunDialog(ctx, image="c:latest")
    qtbot.addWidget(dlg)
    assert [dlg.image.itemText(i) for i in range(dlg.image.count())] == ["a/b:1", "c:latest"]
    assert dlg.image.currentText() == "c:latest"
    assert [dlg.network.itemText(i) for i in range(dlg.network.count())][1:] == ["backend"]
    dlg.network.setCurrentIndex(1)
    request = dlg.build_request()
    assert request is not None and request.network == "backend"


def test_images_and_networks_listed_after_opening_are_offered(qtbot: Any, ctx: Any) -> None:
    from vm_backend.engine.models import Image, Network
    from vm_backend.engine.monitor import Diff

    session = FakeSession()
    ctx.use_session(session)
    dlg = RunDialog(ctx, image="typed:1")
    qtbot.addWidget(dlg)
    net = Network("n2", "late-net", "bridge", "local", False, (), (), "")
    img = Image("sha256:2", ("late:1",), (), 1, 0.0)
    session.tables["network"] = [net]
    session.tables["image"] = [img]
    session.diffs.emit([Diff("network", added=(net,)), Diff("image", added=(img,))])
    assert dlg.network.findText("late-net") > 0
    assert dlg.image.findText("late:1") >= 0
    assert dlg.image.currentText() == "typed:1"  # what was typed stays
