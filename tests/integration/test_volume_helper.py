"""The volume helper against the real engines: files in and out, export/import, cleanup.

Every object created here carries ``berth.test=objects`` and is removed in teardown, and
every test checks that no ``berth.helper=1`` container of its volume outlives it — also
when a failure is injected half-way through a transfer. (Only helpers of our own volumes
are looked at: the engines are shared with other runs that may be mid-transfer.)
"""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm_backend.engine.client import EngineClient
from vm_backend.engine.errors import EngineError
from vm_backend.engine.volume_helper import (
    TransferCancelled,
    VolumeHelper,
    VolumeHelperError,
    clean_path,
    download_from_volume,
    export_volume,
    helper_containers,
    import_volume,
    list_volume_dir,
    remove_stale_helpers,
    upload_to_volume,
)

pytestmark = pytest.mark.engine

TEST_LABEL = {"berth.test": "objects"}
ENGINES = {
    "docker": "unix:///var/run/docker.sock",
    "podman": "unix:///run/podman/podman.sock",
}


@pytest.fixture(params=sorted(ENGINES))
def client(request: pytest.FixtureRequest) -> Iterator[EngineClient]:
    url = ENGINES[request.param]
    if not Path(url.removeprefix("unix://")).exists():
        pytest.skip(f"{request.param} is not running here")
    c = EngineClient(url)
    yield c
    c.close()


@pytest.fixture
def volume(client: EngineClient) -> Iterator[str]:
    name = f"berth-test-vh-{uuid.uuid4().hex[:8]}"
    client.create_volume(name, labels=TEST_LABEL)
    yield name
    for helper in helper_containers(client, name):
        client.remove(helper.id, force=True)
    client.remove_volume(name, force=True)


def _no_helpers(client: EngineClient, volume: str) -> bool:
    return helper_containers(client, volume) == []


def test_clean_path_never_leaves_the_volume() -> None:
    assert clean_path("") == ""
    assert clean_path("/") == ""
    assert clean_path("a/./b/") == "a/b"
    assert clean_path("../../etc/passwd") == "etc/passwd"
    assert clean_path("a/../../b") == "b"
    with pytest.raises(VolumeHelperError):
        clean_path("a\x00b")


def test_upload_list_download_roundtrip(client: EngineClient, volume: str, tmp_path: Path) -> None:
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello volume\n")
    folder = tmp_path / "conf"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.cfg").write_text("x=1\n")

    upload_to_volume(client, volume, src)
    upload_to_volume(client, volume, folder)
    # A second helper sees what the first wrote: the data is in the volume, not the helper.
    root = list_volume_dir(client, volume, "")
    assert [(e.name, e.kind) for e in root] == [("conf", "dir"), ("hello.txt", "file")]
    assert root[1].size == len(b"hello volume\n")
    sub = list_volume_dir(client, volume, "conf/sub")
    assert [(e.name, e.path) for e in sub] == [("x.cfg", "conf/sub/x.cfg")]

    out = tmp_path / "out.txt"
    seen: list[int] = []
    download_from_volume(client, volume, "/hello.txt", out, progress=seen.append)
    assert out.read_bytes() == b"hello volume\n"
    assert seen and seen[-1] > 0

    tar_out = tmp_path / "conf.tar"
    download_from_volume(client, volume, "conf", tar_out)
    with tarfile.open(tar_out) as tar:
        names = set(tar.getnames())
    # Docker adds a "." entry for the folder itself, Podman does not.
    assert names - {"."} == {"sub", "sub/x.cfg"}
    assert _no_helpers(client, volume)


def test_export_then_import_into_a_new_volume(
    client: EngineClient, volume: str, tmp_path: Path
) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    upload_to_volume(client, volume, src)
    archive = tmp_path / "vol.tar"
    export_volume(client, volume, archive)
    with tarfile.open(archive) as tar:
        assert "data.bin" in tar.getnames()
        assert all(not n.startswith(("/", "volume")) for n in tar.getnames())

    other = f"{volume}-copy"
    client.create_volume(other, labels=TEST_LABEL)
    try:
        import_volume(client, other, archive)
        entries = list_volume_dir(client, other, "")
        assert [(e.name, e.size) for e in entries] == [("data.bin", 256 * 4096)]
    finally:
        client.remove_volume(other, force=True)
    assert _no_helpers(client, volume)


def test_missing_path_is_a_clean_error(client: EngineClient, volume: str, tmp_path: Path) -> None:
    with pytest.raises(EngineError):
        download_from_volume(client, volume, "nope.txt", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert _no_helpers(client, volume)


def test_helper_removed_when_export_fails_half_way(
    client: EngineClient, volume: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x01" * (8 << 20))
    upload_to_volume(client, volume, big)
    dest = tmp_path / "vol.tar"

    def explode(done: int) -> None:
        raise RuntimeError(f"injected failure after {done} bytes")

    with pytest.raises(RuntimeError, match="injected"):
        export_volume(client, volume, dest, progress=explode)
    assert not dest.exists()
    assert list(tmp_path.glob(".*partial")) == []
    assert _no_helpers(client, volume)


def test_helper_removed_when_import_is_cancelled(
    client: EngineClient, volume: str, tmp_path: Path
) -> None:
    archive = tmp_path / "in.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"\x02" * (4 << 20)
        info = tarfile.TarInfo("blob")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    calls = 0

    def cancel_after_first_chunk() -> bool:
        nonlocal calls
        calls += 1
        return calls > 1

    with pytest.raises(TransferCancelled):
        import_volume(client, volume, archive, cancelled=cancel_after_first_chunk)
    assert _no_helpers(client, volume)


def test_helper_removed_when_the_body_of_the_with_block_raises(
    client: EngineClient, volume: str
) -> None:
    with pytest.raises(ZeroDivisionError), VolumeHelper(client, volume, labels=TEST_LABEL) as h:
        assert h.container_id
        assert len(helper_containers(client, volume)) == 1
        _ = 1 / 0
    assert _no_helpers(client, volume)


def test_unsafe_archive_is_refused(client: EngineClient, volume: str, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(VolumeHelperError, match="unsafe"):
        import_volume(client, volume, archive)
    not_tar = tmp_path / "plain.txt"
    not_tar.write_text("not a tar")
    with pytest.raises(VolumeHelperError, match="not a readable tar"):
        import_volume(client, volume, not_tar)
    assert _no_helpers(client, volume)


def test_stale_helpers_are_swept_young_ones_kept(client: EngineClient, volume: str) -> None:
    with VolumeHelper(client, volume, labels=TEST_LABEL) as helper:
        # In use right now (young): a sweep with the normal age limit leaves it alone.
        assert remove_stale_helpers(client, volume=volume) == []
        assert [h.id for h in helper_containers(client, volume)] == [helper.container_id]
        # As if its Berth had crashed long ago: swept; __exit__ then finds it gone.
        assert remove_stale_helpers(client, older_than=-60, volume=volume) == [
            helper.container_id
        ]
    assert _no_helpers(client, volume)


class _NoImages:
    def images(self) -> list[object]:
        return []


def test_no_local_image_says_what_to_do() -> None:
    from vm_backend.engine.volume_helper import pick_helper_image

    with pytest.raises(VolumeHelperError) as info:
        pick_helper_image(_NoImages())  # type: ignore[arg-type]
    assert "no local image" in info.value.message
    assert "busybox" in info.value.hint


def test_export_names_every_file_relative_to_the_root(
    client: EngineClient, volume: str, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    expected = set()
    for d in range(4):
        for f in range(12):
            path = tree / f"d{d}" / f"f{f}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{d}/{f}\n")
            expected.add(f"tree/d{d}/f{f}.txt")
        expected.add(f"tree/d{d}")
    expected.add("tree")
    upload_to_volume(client, volume, tree)
    archive = tmp_path / "vol.tar"
    export_volume(client, volume, archive)
    with tarfile.open(archive) as tar:
        assert set(tar.getnames()) - {"."} == expected
        member = tar.extractfile("tree/d3/f11.txt")
        assert member is not None and member.read() == b"3/11\n"
    assert [e.name for e in list_volume_dir(client, volume, "tree/d0")][:2] == ["f0.txt", "f1.txt"]
