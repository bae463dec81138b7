"""Parsers for what users type: image references, ports, env, volumes, limits.

Every parser returns a frozen value or raises :class:`~vm_backend.errors.InputError` whose
message says what is wrong and how a valid value looks. None of them raises anything else,
whatever the input (property-tested with hypothesis).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass

from vm_backend.errors import InputError

# distribution/reference grammar (reference/regexp.go), kept in parts to stay readable.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_ENV_KEY = re.compile(r"^[^=\s\x00]+$")
_MEMORY = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[bkmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_MIN_MEMORY = 6 * 1024 * 1024  # dockerd refuses less than 6 MiB
_MAX_PORT = 65535


@dataclass(frozen=True)
class ImageRef:
    domain: str
    path: str
    tag: str
    digest: str

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_image_ref(text: str) -> ImageRef:
    """Parse ``[domain/]path[:tag][@digest]``; the tag defaults to ``latest``."""
    ref = text.strip()
    if not ref:
        raise InputError("The image is empty.", "Type an image such as alpine or nginx:1.27.")
    if len(ref) > 255 + 128 + 80:
        raise InputError("The image reference is too long.", "Check what was pasted.")
    if any(c.isupper() for c in ref.split("@")[0].split(":")[0].split("/")[-1]):
        raise InputError(
            f"Image name {ref!r} has capital letters.", "Repository names must be lowercase."
        )
    match = _REFERENCE.match(ref)
    if match is None:
        raise InputError(
            f"{ref!r} is not a valid image reference.",
            "Use [registry/]name[:tag][@digest], lowercase, e.g. docker.io/library/nginx:1.27.",
        )
    domain = match.group("domain") or ""
    path = match.group("path")
    # "localhost:5000/x" and "host.tld/x" name a registry; "user/x" does not.
    if domain and "." not in domain and ":" not in domain and domain != "localhost":
        path, domain = f"{domain}/{path}", ""
        if path != path.lower():
            # The domain part of the pattern allows capitals; a folded one is a path.
            raise InputError(
                f"Image name {ref!r} has capital letters.", "Repository names must be lowercase."
            )
    if len(path) > 255:
        raise InputError("The repository name is longer than 255 characters.", "Shorten it.")
    tag = match.group("tag") or ""
    digest = match.group("digest") or ""
    if not tag and not digest:
        tag = "latest"
    return ImageRef(domain, path, tag, digest)


@dataclass(frozen=True)
class PortSpec:
    """A published port: container port/protocol and optional host address and port."""

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int | None = None

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"

    def __str__(self) -> str:
        host = ""
        if self.host_ip:
            ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
            host = f"{ip}:{self.host_port or ''}:"
        elif self.host_port is not None:
            host = f"{self.host_port}:"
        proto = "" if self.protocol == "tcp" else f"/{self.protocol}"
        return f"{host}{self.container_port}{proto}"


def _port_range(text: str, what: str) -> list[int]:
    if not text:
        raise InputError(f"The {what} port is empty.", "Use a number from 1 to 65535.")
    lo_text, sep, hi_text = text.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
    except ValueError:
        raise InputError(
            f"{what.capitalize()} port {text!r} is not a number.",
            "Use a number from 1 to 65535, or a range like 8000-8010.",
        ) from None
    if not (1 <= lo <= _MAX_PORT and 1 <= hi <= _MAX_PORT):
        raise InputError(f"{what.capitalize()} port {text} is out of range.", "Use 1 to 65535.")
    if hi < lo:
        raise InputError(f"Port range {text} runs backwards.", "Write the low port first.")
    if hi - lo >= 1024:
        raise InputError(f"Port range {text} is too large.", "Publish at most 1024 ports at once.")
    return list(range(lo, hi + 1))


def parse_port_spec(text: str) -> list[PortSpec]:
    """Parse ``-p`` syntax: ``80``, ``8080:80``, ``127.0.0.1:8080:80/udp``, ``[::1]::80``,
    ``8000-8002:80-82``."""
    spec = text.strip()
    if not spec:
        raise InputError("The port is empty.", "Write HOST:CONTAINER, e.g. 8080:80.")
    body, _, proto = spec.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise InputError(f"Protocol {proto!r} is unknown.", "Use tcp, udp or sctp.")
    host_ip = ""
    if body.startswith("["):
        end = body.find("]")
        if end < 0 or body[end + 1 : end + 2] != ":":
            raise InputError(f"{spec!r}: an IPv6 address needs brackets: [::1]:8080:80.", "")
        host_ip, body = body[1:end], body[end + 2 :]
        parts = ["", *body.split(":")]
    else:
        parts = body.split(":")
    if len(parts) == 1:
        host_text, ctr_text = "", parts[0]
    elif len(parts) == 2:
        host_text, ctr_text = parts
    elif len(parts) == 3:
        host_ip = host_ip or parts[0]
        host_text, ctr_text = parts[1], parts[2]
    else:
        raise InputError(
            f"{spec!r} has too many colons.", "Use [IP:]HOST:CONTAINER[/udp], e.g. 8080:80."
        )
    if host_ip:
        try:
            host_ip = str(ipaddress.ip_address(host_ip))
        except ValueError:
            raise InputError(
                f"{host_ip!r} is not an IP address.", "Use 127.0.0.1, 0.0.0.0 or ::1."
            ) from None
    ctr_ports = _port_range(ctr_text, "container")
    if not host_text:
        return [PortSpec(p, proto, host_ip, None) for p in ctr_ports]
    host_ports = _port_range(host_text, "host")
    if len(host_ports) != len(ctr_ports):
        raise InputError(
            f"{spec!r}: the host range has {len(host_ports)} ports, the container range "
            f"{len(ctr_ports)}.",
            "Give ranges of the same length.",
        )
    return [PortSpec(c, proto, host_ip, h) for h, c in zip(host_ports, ctr_ports, strict=True)]


def ports_for_api(specs: list[PortSpec]) -> dict[str, list[tuple[str, int | None]] | None]:
    """The ``ports=`` argument of docker-py's ``containers.create``."""
    out: dict[str, list[tuple[str, int | None]] | None] = {}
    for spec in specs:
        binding = (spec.host_ip, spec.host_port)
        current = out.get(spec.key)
        out[spec.key] = [*(current or []), binding]
    return out


def parse_env(text: str) -> tuple[str, str]:
    """Parse ``KEY=VALUE`` (value may be empty or contain ``=``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise InputError(f"{text!r} has no '='.", "Write KEY=VALUE, e.g. LOG_LEVEL=debug.")
    if not key or not _ENV_KEY.match(key):
        raise InputError(
            f"{key!r} is not a valid variable name.", "Names have no spaces or '=' in them."
        )
    if "\x00" in value:
        raise InputError(f"The value of {key} contains a NUL byte.", "Remove it.")
    return key, value


@dataclass(frozen=True)
class VolumeSpec:
    """A bind mount (absolute host path), a named volume, or an anonymous volume."""

    source: str  # host path, volume name, or "" for an anonymous volume
    target: str
    read_only: bool = False
    is_bind: bool = False

    def __str__(self) -> str:
        text = f"{self.source}:{self.target}" if self.source else self.target
        return text + (":ro" if self.read_only else "")


_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_WINDOWS_DRIVE = re.compile(r"^[a-zA-Z]:[\\/]")
_MODES = {"ro", "rw", "z", "Z", "shared", "slave", "private", "rshared", "rslave", "rprivate"}


def parse_volume_spec(text: str) -> VolumeSpec:
    """Parse ``-v`` syntax: ``/host:/ctr[:ro]``, ``name:/ctr``, ``/ctr``."""
    spec = text.strip()
    if not spec:
        raise InputError("The volume is empty.", "Write /host/path:/container/path or name:/path.")
    drive = ""
    rest = spec[2:].split(":")
    if _WINDOWS_DRIVE.match(spec) and len(rest) >= 2 and rest[1].startswith("/"):
        # C:\src:/src is a Windows path; v:/data[:ro] is the one-letter volume "v".
        drive, spec = spec[:2], spec[2:]
    parts = spec.split(":")
    if drive:
        parts[0] = drive + parts[0]
    mode = ""
    if len(parts) == 3 or (len(parts) == 2 and parts[1] and set(parts[1].split(",")) <= _MODES):
        mode = parts.pop()
    if len(parts) > 2:
        raise InputError(f"{text!r} has too many colons.", "Write SOURCE:TARGET[:ro].")
    modes = set(mode.split(",")) if mode else set()
    if not modes <= _MODES:
        raise InputError(f"Mount option {mode!r} is unknown.", "Use ro or rw.")
    if {"ro", "rw"} <= modes:
        raise InputError("A mount cannot be both ro and rw.", "Pick one.")
    source, target = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
    if not target.startswith("/"):
        raise InputError(
            f"The container path {target!r} is not absolute.", "It must start with /, e.g. /data."
        )
    if "\x00" in spec:
        raise InputError("The volume contains a NUL byte.", "Remove it.")
    is_bind = source.startswith(("/", "~")) or bool(drive)
    if source and not is_bind and not _VOLUME_NAME.match(source):
        raise InputError(
            f"{source!r} is neither an absolute host path nor a valid volume name.",
            "Host paths start with /; volume names use letters, digits, _ . and -.",
        )
    return VolumeSpec(source, target, "ro" in modes, is_bind)


def parse_memory(text: str) -> int:
    """Parse a memory size (``512m``, ``1g``, ``1.5GiB``, plain bytes) into bytes."""
    match = _MEMORY.match(text or "")
    if match is None:
        raise InputError(f"{text!r} is not a memory size.", "Write e.g. 512m, 2g or 1.5GiB.")
    value = float(match.group("num")) * _UNITS[match.group("unit").lower()]
    if value > 2**50:
        raise InputError(f"{text} is larger than any machine.", "Use a realistic size.")
    if value < _MIN_MEMORY:
        raise InputError(f"{text} is below the 6 MiB the engine needs.", "Give at least 6m.")
    return int(value)


def parse_cpus(text: str, host_cpus: int | None = None) -> int:
    """Parse a CPU limit (``1.5``) into nano-CPUs for the API."""
    try:
        value = float((text or "").strip())
    except ValueError:
        raise InputError(f"{text!r} is not a number of CPUs.", "Write e.g. 0.5 or 2.") from None
    if not value > 0 or value != value or value == float("inf"):
        raise InputError("The CPU limit must be more than 0.", "Write e.g. 0.5 or 2.")
    if host_cpus is not None and value > host_cpus:
        raise InputError(
            f"{text} CPUs is more than this engine has ({host_cpus}).", f"Use at most {host_cpus}."
        )
    if value > 1024:
        raise InputError(f"{text} CPUs is not realistic.", "Use at most the engine's CPU count.")
    return int(value * 1e9)


def parse_container_name(text: str) -> str:
    """Validate a container name (empty means: let the engine pick one)."""
    name = text.strip()
    if name and not _NAME.match(name):
        raise InputError(
            f"{name!r} is not a valid container name.",
            "Start with a letter or digit; then letters, digits, _ . and - only.",
        )
    return name.lstrip("/")


@dataclass(frozen=True)
class RestartPolicy:
    name: str  # "no", "always", "unless-stopped", "on-failure"
    max_retries: int = 0

    def for_api(self) -> dict[str, object] | None:
        if self.name == "no":
            return None
        policy: dict[str, object] = {"Name": self.name}
        if self.name == "on-failure" and self.max_retries:
            policy["MaximumRetryCount"] = self.max_retries
        return policy

    def __str__(self) -> str:
        if self.name == "on-failure" and self.max_retries:
            return f"on-failure:{self.max_retries}"
        return self.name


def parse_restart_policy(text: str) -> RestartPolicy:
    value = (text or "no").strip()
    name, _, count = value.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise InputError(
            f"Restart policy {name!r} is unknown.", "Use no, always, unless-stopped or on-failure."
        )
    if count and name != "on-failure":
        raise InputError(f"Only on-failure takes a retry count, not {name}.", "")
    retries = 0
    if count:
        if not count.isdigit() or int(count) > 10_000:
            raise InputError(f"Retry count {count!r} is not a small number.", "e.g. on-failure:3")
        retries = int(count)
    return RestartPolicy(name, retries)


def parse_command(text: str) -> list[str]:
    """Split a command line like a POSIX shell would (quotes honoured, nothing expanded)."""
    try:
        return shlex.split(text or "")
    except ValueError as err:
        raise InputError(f"The command cannot be split: {err}.", "Check the quotes.") from None
