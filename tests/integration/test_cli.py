"""The `berth` CLI against the real engines: JSON output equals the engine's own truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from datetime import datetime

import docker
import pytest

pytestmark = pytest.mark.engine

IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
ENGINES = {
    "docker": "unix:///var/run/docker.sock",
    "podman": "unix:///run/podman/podman.sock",
}


def _berth(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vm_backend.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest):
    url = ENGINES[request.param]
    try:
        api = docker.APIClient(base_url=url, timeout=10)
        api.ping()
    except Exception as err:  # noqa: BLE001 - any failure: skip with the reason
        pytest.skip(f"{request.param} engine at {url} does not answer: {err}")
    created: list[str] = []
    yield url, api, created
    for cid in created:
        try:
            api.remove_container(cid, force=True)
        except docker.errors.DockerException:
            pass
    api.close()


def _image(url: str) -> str:
    return IMAGE if "docker" in url else f"localhost/{IMAGE}"


def test_ps_json_lists_exactly_what_the_engine_lists(engine) -> None:
    url, api, created = engine
    tag = uuid.uuid4().hex[:8]
    for i in range(3):
        c = api.create_container(
            _image(url),
            ["sleep", "60"],
            name=f"berth-cli-{tag}-{i}",
            labels={"berth.test": "cli"},
            host_config=api.create_host_config(network_mode="none"),
        )
        created.append(c["Id"])
    api.start(created[0])
    before = {c["Id"] for c in api.containers(all=True)}
    result = _berth("--engine", url, "ps", "-a", "--json")
    after = {c["Id"]: c["State"] for c in api.containers(all=True)}
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1
    ours = {c["id"]: c["state"] for c in doc["containers"]}
    # Other processes may create or remove containers meanwhile: what existed both before
    # and after must be listed, and nothing that existed at neither moment.
    assert before & set(after) <= set(ours) <= before | set(after)
    for cid in created:
        assert ours[cid] == after[cid]
    assert ours[created[0]] == "running"
    assert ours[created[1]] == "created"


def test_ps_json_matches_docker_cli(engine) -> None:
    url, api, created = engine
    if "podman" in url:
        pytest.skip("the docker CLI comparison is for the Docker engine")
    c = api.create_container(_image(url), ["true"], labels={"berth.test": "cli"})
    created.append(c["Id"])

    def docker_ps() -> set[str]:
        cli = subprocess.run(
            ["docker", "-H", url, "ps", "-a", "--no-trunc", "--format", "{{.ID}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return set(cli.stdout.split())

    before = docker_ps()
    ours = {
        x["id"]
        for x in json.loads(_berth("--engine", url, "ps", "-a", "--json").stdout)["containers"]
    }
    after = docker_ps()
    assert c["Id"] in ours
    # Exactly docker's list, allowing only for containers others changed during the call.
    assert before & after <= ours <= before | after


def test_lifecycle_verbs_and_logs(engine) -> None:
    url, api, created = engine
    name = f"berth-cli-{uuid.uuid4().hex[:8]}"
    c = api.create_container(
        _image(url),
        ["sh", "-c", "echo hello-out; echo hello-err >&2; sleep 60"],
        name=name,
        labels={"berth.test": "cli"},
        host_config=api.create_host_config(network_mode="none"),
    )
    created.append(c["Id"])
    assert _berth("--engine", url, "start", name).returncode == 0
    assert api.inspect_container(name)["State"]["Running"]
    logs = _berth("--engine", url, "logs", "--tail", "10", name)
    assert logs.returncode == 0
    assert "hello-out" in logs.stdout
    assert "hello-err" in logs.stderr
    assert _berth("--engine", url, "stop", "-t", "1", name).returncode == 0
    assert not api.inspect_container(name)["State"]["Running"]
    assert _berth("--engine", url, "restart", "-t", "1", name).returncode == 0
    assert api.inspect_container(name)["State"]["Running"]
    assert _berth("--engine", url, "rm", "-f", name).returncode == 0
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container(name)


def test_errors_are_plain_messages(engine) -> None:
    url, _api, _created = engine
    result = _berth("--engine", url, "logs", "no-such-container-berth")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("berth: ")


def test_unusable_engine_is_explained() -> None:
    result = _berth("--engine", "unix:///nonexistent/berth.sock", "ps")
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_engines_json_names_the_active_engine() -> None:
    result = _berth("engines", "--json")
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1
    urls = [e["url"] for e in doc["endpoints"]]
    assert urls.index("unix:///var/run/docker.sock") < urls.index("unix:///run/podman/podman.sock")
    if result.returncode == 0:
        assert doc["active"] in urls
    for e in doc["endpoints"]:
        assert e["status"] in ("ok", "missing", "permission denied", "not answering", "unsupported")
        if e["status"] != "ok":
            assert e["reason"]


def test_images_json(engine) -> None:
    url, _api, _created = engine
    doc = json.loads(_berth("--engine", url, "images", "--json").stdout)
    assert any(IMAGE in t for i in doc["images"] for t in i["tags"])


def test_events_stream_prints_container_start(engine) -> None:
    url, api, created = engine
    since = datetime.now().isoformat()
    c = api.create_container(_image(url), ["true"], labels={"berth.test": "cli"})
    created.append(c["Id"])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vm_backend.cli",
            "--engine",
            url,
            "events",
            "--json",
            "--type",
            "container",
            "--since",
            since,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # A watchdog ends the command if the event never comes, so readline() can't hang.
        watchdog = threading.Timer(20, proc.terminate)
        watchdog.start()
        seen = None
        try:
            for line in proc.stdout:
                event = json.loads(line)
                if event["id"] == c["Id"]:
                    seen = event
                    break
        finally:
            watchdog.cancel()
        assert seen is not None, "the create event never arrived"
        assert seen["type"] == "container"
        assert seen["action"] == "create"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
