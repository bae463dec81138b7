"""MachineSpec validation and its JSON form."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from vm_backend.errors import InputError
from vm_backend.machine.hostinfo import Arch, HostInfo, HostOS
from vm_backend.machine.spec import (
    Accelerator,
    MachineSpec,
    Share,
    default_shares,
    load_spec,
    save_spec,
    spec_from_json,
    spec_to_json,
    validate,
)

HOST = HostInfo(HostOS.LINUX, Arch.AMD64, cpus=4, memory_mib=8192)
SPEC = MachineSpec(name="dev", cpus=2, memory_mib=2048, disk_gib=32)


def test_valid_spec_passes() -> None:
    validate(SPEC, HOST)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"cpus": 0}, "0 CPUs requested, but this computer has 4"),
        ({"cpus": 5}, "Choose between 1 and 4 CPUs"),
        ({"memory_mib": 256}, "needs at least 512 MiB"),
        ({"memory_mib": 9000}, "this computer has 8192 MiB"),
        ({"disk_gib": 1}, "outside the supported range"),
        ({"name": "Bad Name"}, "is not allowed"),
        ({"ssh_port": 22}, "SSH port 22 is not usable"),
        ({"accelerator": Accelerator.HVF}, "does not exist on linux"),
    ],
)
def test_invalid_fields_say_what_and_what_to_do(change: dict[str, object], words: str) -> None:
    with pytest.raises(InputError) as info:
        validate(replace(SPEC, **change), HOST)  # type: ignore[arg-type]
    assert words in str(info.value)
    assert info.value.hint


def test_disk_only_grows() -> None:
    validate(replace(SPEC, disk_gib=64), HOST, previous=SPEC)
    with pytest.raises(InputError, match="cannot shrink"):
        validate(replace(SPEC, disk_gib=16), HOST, previous=SPEC)


def test_arch_cannot_change_and_foreign_arch_needs_emulation() -> None:
    with pytest.raises(InputError, match="architecture"):
        validate(replace(SPEC, arch=Arch.ARM64), HOST, previous=SPEC)
    with pytest.raises(InputError, match="only be emulated"):
        validate(replace(SPEC, arch=Arch.ARM64, accelerator=Accelerator.KVM), HOST)
    validate(replace(SPEC, arch=Arch.ARM64, accelerator=Accelerator.TCG), HOST)


def test_shares_are_checked(tmp_path: Path) -> None:
    validate(replace(SPEC, shares=(Share(str(tmp_path), "home"),)), HOST)
    with pytest.raises(InputError, match="does not exist"):
        validate(replace(SPEC, shares=(Share(str(tmp_path / "nope"), "home"),)), HOST)
    with pytest.raises(InputError, match="absolute"):
        validate(replace(SPEC, shares=(Share("rel", "home"),)), HOST)
    with pytest.raises(InputError, match="used twice"):
        validate(replace(SPEC, shares=(Share(str(tmp_path), "a"), Share(str(tmp_path), "a"))),
                 HOST)
    with pytest.raises(InputError, match="tag"):
        validate(replace(SPEC, shares=(Share(str(tmp_path), "a,b"),)), HOST)


def test_json_round_trip(tmp_path: Path) -> None:
    spec = replace(SPEC, arch=Arch.ARM64, accelerator=Accelerator.TCG, ssh_port=2222,
                   shares=(Share("/x", "x", True),), expose_ports_on_lan=True)
    path = tmp_path / "machine.json"
    save_spec(spec, path)
    assert load_spec(path) == spec
    assert path.stat().st_mode & 0o777 == 0o600
    assert spec_from_json(spec_to_json(spec)) == spec
    assert json.loads(path.read_text())["version"] == 1


def test_damaged_files_give_input_errors(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    with pytest.raises(InputError, match="Create the machine first"):
        load_spec(path)
    path.write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        load_spec(path)
    path.write_text('{"name": "x", "arch": "sparc"}')
    with pytest.raises(InputError, match="damaged"):
        load_spec(path)


def test_a_share_over_a_guest_system_folder_is_refused() -> None:
    spec = replace(SPEC, shares=(Share(host_path="/etc", tag="etc", read_only=True),))
    with pytest.raises(InputError, match="the VM needs /etc"):
        validate(spec, HOST)


def test_default_share_is_the_home_folder(tmp_path: Path) -> None:
    assert default_shares(tmp_path, HostOS.LINUX) == (
        Share(host_path=str(tmp_path), tag="home"),
    )
    assert default_shares(Path("/root"), HostOS.LINUX) == ()
    assert default_shares(tmp_path / "missing") == ()
