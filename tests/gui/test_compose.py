"""Compose projects: grouping, validation, and up/logs/stop/down against the real dockerd."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from app.context import AppContext
from app.pages.compose import ComposePage
from app.session import EngineSession
from tests.gui.conftest import endpoint_for
from vm_backend.engine import compose
from vm_backend.engine.models import Container, ContainerState, Health
from vm_backend.settings import Settings

IMAGE = "berth-test/busybox:latest"


def _c(name: str, project: str, service: str, state: ContainerState) -> Container:
    return Container(
        id=uuid.uuid4().hex * 2,
        name=name,
        image=IMAGE,
        image_id="",
        command="",
        state=state,
        status="",
        health=Health.NONE,
        created=0.0,
        labels={
            "com.docker.compose.project": project,
            "com.docker.compose.service": service,
            "com.docker.compose.project.working_dir": f"/src/{project}",
        },
    )


def test_projects_group_by_label() -> None:
    found = compose.projects(
        [
            _c("shop-web-1", "shop", "web", ContainerState.RUNNING),
            _c("shop-db-1", "shop", "db", ContainerState.EXITED),
            _c("blog-app-1", "blog", "app", ContainerState.RUNNING),
            Container(
                id="x" * 64,
                name="loose",
                image=IMAGE,
                image_id="",
                command="",
                state=ContainerState.RUNNING,
                status="",
                health=Health.NONE,
                created=0.0,
            ),
        ]
    )
    assert [p.name for p in found] == ["blog", "shop"]
    shop = found[1]
    assert shop.services == ("db", "web")
    assert shop.state == "partly running (1/2)"
    assert shop.working_dir == "/src/shop"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("services: [", "Not valid YAML at line"),
        ("- a\n- b\n", "must be a mapping"),
        ("version: '3'\n", "no 'services'"),
        ("services:\n  web: {}\n", "needs an 'image' or a 'build'"),
        ("services:\n  web: 3\n", "must be a mapping"),
    ],
)
def test_validate_text_explains(text: str, problem: str) -> None:
    problems = compose.validate_text(text)
    assert problems and problem in problems[0]


def test_validate_text_accepts_a_good_file() -> None:
    assert compose.validate_text("services:\n  web:\n    image: nginx\n") == []


def test_project_name_for(tmp_path: Path) -> None:
    d = tmp_path / "My_App.v2"
    d.mkdir()
    assert compose.project_name_for(d / "compose.yaml") == "my_appv2"


def test_missing_compose_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(compose, "find_compose_cli", lambda: None)
    f = tmp_path / "compose.yaml"
    f.write_text("services:\n  a:\n    image: x\n")
    with pytest.raises(compose.ComposeError, match="not installed") as info:
        compose.up(f, "unix:///var/run/docker.sock")
    assert "docker-compose" in info.value.hint


@pytest.fixture
def compose_cli() -> list[str]:
    cli = compose.find_compose_cli()
    if cli is None:
        pytest.skip(
            "Docker Compose is not installed here (neither the plugin nor "
            "docker-compose): up/down cannot be exercised"
        )
    return cli


def test_up_logs_stop_down_from_the_page(
    qtbot: Any, docker_url: str, docker_api: Any, compose_cli: list[str], tmp_path: Path
) -> None:
    project_dir = tmp_path / f"berthc{uuid.uuid4().hex[:6]}"
    project_dir.mkdir()
    project = compose.project_name_for(project_dir / "compose.yaml")
    path = project_dir / "compose.yaml"
    path.write_text(
        "services:\n"
        "  greeter:\n"
        f"    image: {IMAGE}\n"
        '    command: ["sh", "-c", "echo hello-from-compose; sleep 300"]\n'
        "    network_mode: none\n"
        "    labels:\n"
        "      berth.test.gui: compose\n"
    )
    session = EngineSession(endpoint_for(docker_url))
    ctx = AppContext(Settings(confirm_destructive=False))
    page = ComposePage(ctx)
    qtbot.addWidget(page)
    page.show()
    ctx.use_session(session)
    try:
        page.editor.open(path)
        qtbot.waitUntil(lambda: page.editor.path == path, timeout=5000)
        page.editor.run("up")
        qtbot.waitUntil(lambda: project in page._projects, timeout=120_000)
        qtbot.waitUntil(lambda: page.editor._run is None, timeout=60_000)
        assert "exited with code 0" in page.editor.output.toPlainText()
        top = page.tree.findItems(project, Qt.MatchFlag.MatchExactly)[0]
        page.tree.setCurrentItem(top)
        qtbot.waitUntil(
            lambda: any(
                "greeter | hello-from-compose" in ln.text for ln in page.logs.model.all_lines()
            ),
            timeout=30_000,
        )
        page.act("stop")
        qtbot.waitUntil(lambda: page._projects[project].state == "stopped", timeout=60_000)
        page.act("start")
        qtbot.waitUntil(lambda: page._projects[project].state == "running", timeout=60_000)
        page.editor.run("down")
        qtbot.waitUntil(lambda: project not in page._projects, timeout=120_000)
    finally:
        for c in docker_api.containers(all=True, filters={"label": "berth.test.gui=compose"}):
            docker_api.remove_container(c["Id"], force=True)
        ctx.shutdown()
