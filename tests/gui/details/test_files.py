"""Files tab: browse, download, upload against the real engines; hostile archives refused."""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QFileDialog

from app.pages.details.files import (
    TransferCancelled,
    UnsafeArchive,
    build_upload,
    extract_archive,
)
from tests.gui.details.conftest import session_for
from vm_backend.engine.client import EngineClient


def names(tab: Any) -> set[str]:
    return {e.name for e in tab.entries}


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """An empty download folder (tmp_path itself also holds the suite's BERTH_HOME)."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


def open_files(qtbot: Any, details: Any, client: EngineClient, cid: str) -> Any:
    details.show_container(session_for(client), cid)
    tab = details.show_tab("Files")
    qtbot.waitUntil(lambda: tab.path == "/" and "bin" in names(tab), timeout=20_000)
    return tab


@pytest.mark.engine
def test_browse_bin(
    qtbot: Any, details: Any, engine_client: EngineClient, new_container: Any
) -> None:
    cid = new_container(["sleep", "600"])
    tab = open_files(qtbot, details, engine_client, cid)
    assert {"etc", "tmp", "root"} <= names(tab)
    bin_row = next(e for e in tab.entries if e.name == "bin")
    assert bin_row.is_dir and bin_row.mode.startswith("d")

    # Double-click a folder to open it.
    row = next(r for r in range(tab.model.rowCount()) if tab.model.item(r, 0).text() == "bin/")
    tab.view.doubleClicked.emit(tab.model.index(row, 0))
    qtbot.waitUntil(lambda: tab.path == "/bin" and "sh" in names(tab), timeout=20_000)
    tab.go_up()
    qtbot.waitUntil(lambda: tab.path == "/", timeout=20_000)
    tab.navigate("bin")  # relative to the folder shown
    qtbot.waitUntil(lambda: tab.path == "/bin" and "sh" in names(tab), timeout=20_000)
    assert tab.path_edit.text() == "/bin"
    busybox = next(e for e in tab.entries if e.name == "busybox")
    assert busybox.size > 100_000 and busybox.mode.startswith("-")
    sh = next(e for e in tab.entries if e.name == "sh")
    assert sh.link_target  # symlink or hard link to busybox, shown as such

    tab.go_up()
    qtbot.waitUntil(lambda: tab.path == "/", timeout=20_000)
    tab.navigate("/no/such/folder")
    qtbot.waitUntil(lambda: "Cannot list /no/such/folder" in tab.status.text(), timeout=20_000)
    assert tab.path == "/"


@pytest.mark.engine
def test_browse_a_stopped_container(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["true"], start=False)
    tab = open_files(qtbot, details, docker_client, cid)
    assert "etc" in names(tab)


@pytest.mark.engine
def test_download_file_matches_the_container(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any,
    dest: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cid = new_docker_container(["sleep", "600"])
    tab = open_files(qtbot, details, docker_client, cid)
    tab.navigate("/bin")
    qtbot.waitUntil(lambda: tab.path == "/bin" and "busybox" in names(tab), timeout=20_000)
    assert tab.select_name("busybox")
    assert tab.download_button.isEnabled()
    # The button asks for a folder, then downloads with the size known from the listing.
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *_a, **_k: str(dest))
    tab.download_button.click()
    assert tab.busy and tab.progress.maximum() > 1000
    qtbot.waitUntil(lambda: not tab.busy, timeout=30_000)
    assert tab.last_error is None, tab.status.text()

    local = dest / "busybox"
    code, out = docker_client.exec_run(cid, ["md5sum", "/bin/busybox"])
    assert code == 0
    assert hashlib.md5(local.read_bytes()).hexdigest() == out.split()[0].decode()
    # Only the file itself: the staging folder is gone.
    assert [p.name for p in dest.iterdir()] == ["busybox"]

    # A second download never overwrites the first.
    tab.download(["/bin/busybox"], dest)
    qtbot.waitUntil(lambda: not tab.busy, timeout=30_000)
    assert sorted(p.name for p in dest.iterdir()) == ["busybox", "busybox (2)"]


@pytest.mark.engine
def test_upload_then_read_back(
    qtbot: Any, details: Any, engine_client: EngineClient, new_container: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cid = new_container(["sleep", "600"])
    tab = open_files(qtbot, details, engine_client, cid)
    tab.navigate("/tmp")
    qtbot.waitUntil(lambda: tab.path == "/tmp", timeout=20_000)
    payload = os.urandom(200_000) + "é<b>not html</b>".encode()
    source = tmp_path / "upload-me.bin"
    source.write_bytes(payload)

    monkeypatch.setattr(
        QFileDialog, "getOpenFileNames", lambda *_a, **_k: ([str(source)], "")
    )
    tab.upload_button.click()
    assert tab.busy and not tab.cancel_button.isVisibleTo(tab)  # uploads can't be cancelled
    qtbot.waitUntil(lambda: "upload-me.bin" in names(tab), timeout=30_000)
    assert tab.last_error is None
    assert "Uploaded upload-me.bin" in tab.status.text()

    chunks, _stat = engine_client.get_archive(cid, "/tmp/upload-me.bin")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = tar.getmember("upload-me.bin")
        assert member.uid == 0
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == payload


def _tar(*members: tuple[str, bytes | None, str]) -> bytes:
    """A tar of (name, data, symlink target) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type = tarfile.SYMTYPE
                info.linkname = link
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def _chunks(data: bytes, size: int = 1000) -> Any:
    return iter([data[i : i + size] for i in range(0, len(data), size)])


@pytest.mark.parametrize(
    "evil", ["../escaped.txt", "ok/../../escaped.txt", "/etc/escaped.txt", "..\\escaped.txt"]
)
def test_path_traversal_entries_are_refused(tmp_path: Path, evil: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = _tar(("fine.txt", b"fine", ""), (evil, b"pwned", ""))
    with pytest.raises(UnsafeArchive):
        extract_archive(_chunks(data), dest)
    assert list(dest.iterdir()) == []  # not even fine.txt, and no staging folder
    assert not (tmp_path / "escaped.txt").exists()


def test_links_escaping_the_download_are_skipped(dest: Path) -> None:
    data = _tar(
        ("dir/file", b"x", ""),
        ("dir/inside", None, "file"),
        ("dir/abs", None, "/etc/passwd"),
        ("dir/up", None, "../../../etc/passwd"),
    )
    result = extract_archive(_chunks(data), dest)
    assert sorted(result.skipped_links) == ["dir/abs", "dir/up"]
    assert os.readlink(dest / "dir" / "inside") == "file"
    assert not (dest / "dir" / "abs").exists()
    assert not (dest / "dir" / "up").is_symlink()


def test_cancelled_download_leaves_nothing(dest: Path) -> None:
    cancel = threading.Event()
    data = _tar(("big.bin", os.urandom(100_000), ""))

    def progress(done: int) -> None:
        if done > 20_000:
            cancel.set()

    with pytest.raises(TransferCancelled):
        extract_archive(_chunks(data), dest, cancel, progress)
    assert list(dest.iterdir()) == []


def test_failed_stream_leaves_nothing(dest: Path) -> None:
    data = _tar(("big.bin", os.urandom(100_000), ""))

    def broken() -> Any:
        yield data[:30_000]
        raise ConnectionResetError("engine went away")

    with pytest.raises(ConnectionResetError):
        extract_archive(broken(), dest)
    assert list(dest.iterdir()) == []


def test_files_tab_reports_a_hostile_archive(qtbot: Any, details: Any, tmp_path: Path) -> None:
    """The GUI path: an engine (or container) handing out a traversal entry."""
    evil = _tar(("../escaped.txt", b"pwned", ""))

    class HostileClient:
        url = "unix:///hostile.sock"

        def get_archive(self, _cid: str, _path: str) -> tuple[Any, dict[str, Any]]:
            return _chunks(evil), {}

        def inspect_container(self, _cid: str) -> dict[str, Any]:
            return {"Name": "/hostile", "State": {"Status": "running"}, "Config": {}}

    tab = details.files
    tab.bind(HostileClient(), "f" * 64)  # type: ignore[arg-type]
    dest = tmp_path / "dest"
    dest.mkdir()
    tab.download(["/x"], dest)
    qtbot.waitUntil(lambda: not tab.busy, timeout=10_000)
    assert isinstance(tab.last_error, UnsafeArchive)
    assert "Refused the download" in tab.status.text()
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_upload_archive_is_owned_by_root(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    archive = build_upload([folder])
    with tarfile.open(fileobj=archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"folder", "folder/sub", "folder/sub/a.txt"}
    assert all(m.uid == 0 and m.uname == "root" for m in members.values())




@pytest.mark.parametrize(
    ("names_in_tar", "expected"),
    [
        # docker, archive of "/": an empty root entry and slash-prefixed members
        (["", "/bin", "/bin/sh", "/etc", "/etc/hosts", "/.env"], {"bin", "etc", ".env"}),
        # docker, archive of "/etc": members under the base name
        (["etc", "etc/hosts", "etc/ssl", "etc/ssl/cert.pem"], {"hosts", "ssl"}),
        # "./"-relative members, as some engines send for "DIR/."
        ([".", "./hosts", "./ssl", "./ssl/cert.pem", "./a", "./a/b"], {"hosts", "ssl", "a"}),
    ],
)
def test_listing_handles_each_engines_member_names(
    names_in_tar: list[str], expected: set[str]
) -> None:
    from app.pages.details.files import list_directory

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names_in_tar:
            info = tarfile.TarInfo(name)
            info.type = tarfile.REGTYPE if "." in name.rsplit("/", 1)[-1][1:] else tarfile.DIRTYPE
            tar.addfile(info, io.BytesIO(b"") if info.isfile() else None)

    class Client:
        def get_archive(self, _cid: str, _path: str) -> tuple[Any, dict[str, Any]]:
            return _chunks(buf.getvalue()), {}

    members = list_directory(Client(), "c", "/")  # type: ignore[arg-type]
    assert {posixpath.basename(m.name.rstrip("/")) for m in members} == expected
