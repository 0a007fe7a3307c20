"""Backups of a deployed release: its user-supplied values (and, optionally, Redis state).

The values file is exactly what the deployment guide's `helm get values qlens -n NS >
backup/values-YYYYMMDD.yaml` produces, so `helm upgrade qlens charts/qlens --values FILE` still
works with it by hand. What qlensctl adds lives in a comment header (comments are invisible to
Helm): release, namespace, environment, revision, chart version and time, which `restore` checks
before it changes anything. A second backup the same day gets a `-HHMMSS` suffix; nothing is
ever overwritten (files are created with O_EXCL).

The header's last line is `# sha256: <hex>` of the body (everything after the header). A backup
cut short at a line boundary (a full disk, an interrupted copy) is still valid YAML with a good
header, and restoring it would deploy what is left with the chart's defaults standing in for the
lost keys; the checksum is how `restore` tells, and it refuses such a file (and one edited by
hand) before anything changes. There is deliberately no way around it: whoever wants to deploy
values they edited can take a fresh backup of what they deploy, or run `helm upgrade --values`.

Values should never hold secrets (credentials live in Secrets / Key Vault); as a second line of
defence any string under a secret-looking key is dropped and credentials in URLs are masked, and
the header names what was dropped.

The state file (`--state`) holds every `qlens:*` Redis key (usage counters, cache entries) as
Redis DUMP payloads with their absolute expiry, so a restore gives each key the time it had left.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import yaml

from qlensctl.errors import ConfigError, OperationError, first_line
from qlensctl.helm import RELEASE

if TYPE_CHECKING:
    from qlensctl.release import DeployResult

FORMAT = "qlens-values-backup/1"
STATE_FORMAT = "qlens-state-backup/1"
STATE_PATTERN = "qlens:*"
MAX_STATE_KEYS = 1_000_000  # a bound on the scan, far above any real deployment

# -- secret defence ------------------------------------------------------------------------------
# a key "looks secret" when one of these words is in it (case and separators ignored) ...
_SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "credential")
# ... unless it names or points at a secret rather than holding one (secretName, keysFile, vaultUrl),
# or names something else (a model's tokenParameter: "max_tokens")
_REFERENCE_SUFFIXES = ("name", "ref", "url", "uri", "file", "path", "enabled", "backend", "mount",
                       "mountpath", "interval", "seconds", "ttl", "header", "prefix", "store", "vault",
                       "parameter")
# ... and the Secret key each provider credential is stored under (`secrets.credentials[i].key`:
# "azure-openai-api-key" names where the value is, the chart maps it to the container's env)
_REFERENCE_PATHS = re.compile(r"^secrets\.credentials\[\d+\]\.key$")
_URL_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)


class HelmValues(Protocol):
    """What backups need from the Helm adapter (qlensctl.helm implements it)."""

    def get_values(self, release: str, namespace: str) -> dict[str, Any]: ...

    def status(self, release: str, namespace: str) -> Any: ...


@dataclass(frozen=True)
class Backup:
    """A parsed backup file: the header facts and the values Helm gets."""

    path: Path
    values: dict[str, Any]
    release: str
    namespace: str
    environment: str
    revision: int | None
    chart: str
    taken: str
    redacted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreResult:
    """What `restore` did: the backup it deployed, the deploy (a release upgrade, like `deploy`'s)
    and, with --state, the Redis keys it put back."""

    backup: Backup
    deployed: DeployResult
    state_file: Path | None = None
    restored: int = 0  # keys put back
    expired: int = 0  # keys left out: their time ran out since the backup

    def as_dict(self) -> dict[str, Any]:
        deployed = self.deployed.as_dict()
        # the values the upgrade replaced, saved first: named apart from `file`, the backup deployed
        previous = deployed.pop("backup")
        state = None if self.state_file is None else {
            "file": str(self.state_file), "restored": self.restored, "expired": self.expired}
        return {**deployed, "file": str(self.backup.path), "taken": self.backup.taken,
                "backupRevision": self.backup.revision, "previousValues": previous, "state": state}


def is_secret_key(key: str) -> bool:
    norm = re.sub(r"[-_.\s]", "", str(key)).lower()
    if not any(word in norm for word in _SECRET_WORDS):
        return False
    return not norm.endswith(_REFERENCE_SUFFIXES)


def mask_url_credentials(value: str) -> str:
    """`redis://:pw@host:6379/0` -> `redis://:***@host:6379/0` (user names stay, passwords go)."""
    if not _URL_CREDENTIALS.match(value):
        return value
    parts = urlsplit(value)
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact(values: Any, path: str = "") -> tuple[Any, list[str]]:
    """A copy of `values` without secret-looking strings; returns it and the dropped/masked paths."""
    dropped: list[str] = []
    if isinstance(values, Mapping):
        out: dict[str, Any] = {}
        for k, v in values.items():
            where = f"{path}.{k}" if path else str(k)
            if isinstance(v, str) and v and is_secret_key(k) and not _REFERENCE_PATHS.match(where):
                dropped.append(where)
                continue
            clean, more = redact(v, where)
            out[k] = clean
            dropped.extend(more)
        return out, dropped
    if isinstance(values, list):
        items = []
        for i, v in enumerate(values):
            clean, more = redact(v, f"{path}[{i}]")
            items.append(clean)
            dropped.extend(more)
        return items, dropped
    if isinstance(values, str):
        masked = mask_url_credentials(values)
        if masked != values:
            return masked, [path]
    return values, dropped


# -- file names ------------------------------------------------------------------------------------


def _create_exclusive(directory: Path, stem: str, suffix: str, now: datetime, text: str) -> Path:
    """Write `stem-YYYYMMDD<suffix>`; if taken, `-HHMMSS`, then `-HHMMSS-2`...: never overwrite."""
    day = now.strftime("%Y%m%d")
    candidates = [f"{stem}-{day}{suffix}", f"{stem}-{day}-{now.strftime('%H%M%S')}{suffix}"]
    candidates += [f"{stem}-{day}-{now.strftime('%H%M%S')}-{n}{suffix}" for n in range(2, 100)]
    for name in candidates:
        path = directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path
    raise OperationError(f"too many backups in {directory} for {day}", "move old backups elsewhere")


def _ensure_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create backup folder {directory}: {exc.strerror}",
                          "pick another with --dir") from None
    if not os.access(directory, os.W_OK):
        raise ConfigError(f"backup folder {directory} is not writable", "pick another with --dir")


# -- values backup -------------------------------------------------------------------------------


def _release_facts(helm: HelmValues, namespace: str) -> tuple[int | None, str]:
    """Revision and chart (name-version) of the deployed release, from the adapter's status."""
    info = helm.status(RELEASE, namespace)
    get = info.get if isinstance(info, Mapping) else lambda k, d=None: getattr(info, k, d)
    revision = get("revision")
    chart = get("chart") or ""
    version = get("chart_version") or get("chartVersion")
    if isinstance(chart, Mapping):  # raw Helm JSON: {"metadata": {"name", "version"}}
        meta = chart.get("metadata", chart)
        chart = f"{meta.get('name', '')}-{meta.get('version', '')}".strip("-")
    elif version and not str(chart).endswith(str(version)):
        chart = f"{chart}-{version}" if chart else str(version)
    return (int(revision) if revision is not None else None), str(chart)


def body_checksum(body: str) -> str:
    """sha256 hex of a backup's body (the text after its header), as the `# sha256:` line holds it."""
    return hashlib.sha256(body.encode()).hexdigest()


def split_backup(text: str) -> tuple[str, str]:
    """A backup's header (its leading `#` lines) and its body (the rest, verbatim)."""
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    return "".join(lines[:n]), "".join(lines[n:])


def render_backup(values: dict[str, Any], *, namespace: str, environment: str, revision: int | None,
                  chart: str, taken: datetime, redacted: list[str]) -> str:
    header = [
        "# QLens values backup, written by `qlensctl backup`; restore with",
        f"#   qlensctl restore {environment} <this file>",
        f"# format: {FORMAT}",
        f"# release: {RELEASE}",
        f"# namespace: {namespace}",
        f"# environment: {environment}",
        f"# revision: {revision if revision is not None else 'unknown'}",
        f"# chart: {chart or 'unknown'}",
        f"# taken: {taken.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"# redacted: {', '.join(redacted) if redacted else 'none'}",
    ]
    body = yaml.safe_dump(values, sort_keys=True, default_flow_style=False) if values else "{}\n"
    header.append(f"# sha256: {body_checksum(body)}")  # last: a cut inside the header loses it too
    return "\n".join(header) + "\n" + body


def backup_values(helm: HelmValues, environment: Any, directory: Path | str,
                  *, now: datetime | None = None) -> Path:
    """Save the release's user-supplied values to `directory/values-YYYYMMDD[-HHMMSS].yaml`.

    `environment` is a qlensctl.environments.Environment (name, namespace). Raises ClusterError
    (from the adapter) when the release cannot be read; the file is written only when it can.
    """
    directory = Path(directory)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    values = helm.get_values(RELEASE, environment.namespace) or {}
    revision, chart = _release_facts(helm, environment.namespace)
    clean, redacted = redact(values)
    text = render_backup(clean, namespace=environment.namespace, environment=environment.name,
                         revision=revision, chart=chart, taken=now, redacted=redacted)
    _ensure_dir(directory)
    return _create_exclusive(directory, "values", ".yaml", now, text)


_USE_BACKUP = "pass a file written by `qlensctl backup`"
_INTACT_BACKUP = ("use an intact copy of it, or another backup (`ls backup/`); to deploy edited values, "
                  "deploy them and take a fresh backup with `qlensctl backup ENV`")
_HEADER_LINE = re.compile(r"^#\s*([a-z][a-z0-9-]*):\s*(.*?)\s*$")


def read_backup(path: Path | str) -> Backup:
    """Parse and check a backup file; every problem is a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", "list your backups with `ls backup/`") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise ConfigError(f"{path}: cannot read: {reason}", "pass a values-YYYYMMDD.yaml backup") from None
    head, body = split_backup(text)
    header: dict[str, str] = {}
    for line in head.splitlines():
        m = _HEADER_LINE.match(line)
        if m:
            header.setdefault(m.group(1), m.group(2))
    ours = header.get("format") == FORMAT
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        if ours and header.get("sha256", "").lower() != body_checksum(body):  # cut mid-line: say why
            raise ConfigError(f"{path}: not valid YAML{where}: the backup is truncated or was edited "
                              "(checksum mismatch)", _INTACT_BACKUP) from None
        raise ConfigError(f"{path}: not valid YAML{where}", _USE_BACKUP) from None
    if not ours:
        raise ConfigError(f"{path}: not a QLens values backup (no '# format: {FORMAT}' header)",
                          _USE_BACKUP)
    _verify_checksum(path, header.get("sha256"), body)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the values must be a YAML mapping", _USE_BACKUP)
    missing = [k for k in ("release", "namespace", "environment") if not header.get(k)]
    if missing:
        raise ConfigError(f"{path}: backup header lacks {', '.join(missing)}", _USE_BACKUP)
    rev = header.get("revision", "")
    listed = header.get("redacted", "none")
    redacted = [] if listed == "none" else [p.strip() for p in listed.split(",")]
    return Backup(path=path, values=values, release=header["release"], namespace=header["namespace"],
                  environment=header["environment"], revision=int(rev) if rev.isdigit() else None,
                  chart=header.get("chart", ""), taken=header.get("taken", ""), redacted=redacted)


def _verify_checksum(path: Path, recorded: str | None, body: str) -> None:
    """The body must be exactly what `backup` wrote: not cut short, not edited."""
    if not recorded:
        raise ConfigError(f"{path}: backup is truncated or was edited: it has no '# sha256:' checksum line "
                          "(cut short inside its header, or written by an older qlensctl)", _INTACT_BACKUP)
    if recorded.lower() != body_checksum(body):
        raise ConfigError(f"{path}: backup is truncated or was edited: checksum mismatch", _INTACT_BACKUP)


def check_backup_for(backup: Backup, environment: Any) -> None:
    """Refuse a backup of another environment, namespace or release (nothing has changed yet)."""
    problems = []
    if backup.environment != environment.name:
        problems.append(f"environment {backup.environment!r}")
    if backup.namespace != environment.namespace:
        problems.append(f"namespace {backup.namespace!r}")
    if backup.release != RELEASE:
        problems.append(f"release {backup.release!r}")
    inner_env = backup.values.get("environment")
    if isinstance(inner_env, str) and inner_env != environment.name:
        problems.append(f"values for environment {inner_env!r}")
    inner_ns = backup.values.get("namespace")
    if isinstance(inner_ns, str) and inner_ns != environment.namespace:
        problems.append(f"values for namespace {inner_ns!r}")
    if problems:
        raise ConfigError(
            f"{backup.path} is a backup of {', '.join(problems)}, not of {environment.name} "
            f"({environment.namespace})",
            f"pass a backup taken with `qlensctl backup {environment.name}`",
        )


# -- Redis state ---------------------------------------------------------------------------------


def redis_location(url: str) -> str:
    """host:port/db of a Redis URL, never its password: safe to print."""
    try:
        parts = urlsplit(url)
        db = parts.path.lstrip("/") or "0"
        return f"{parts.hostname or '?'}:{parts.port or 6379}/{db}"
    except ValueError:
        return "(unparseable Redis URL)"


def _redis(url: str) -> Any:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
        client.ping()
        return client
    except (redis.RedisError, ValueError) as exc:
        raise OperationError(f"Redis at {redis_location(url)} is not reachable ({type(exc).__name__})",
                             "check QLENS_REDIS_URL / --redis-url, or port-forward to it") from None


def backup_state(redis_url: str, values_file: Path | str,
                 progress: Callable[[int], None] | None = None) -> tuple[Path, int]:
    """Dump every `qlens:*` key (DUMP payload + absolute expiry) beside a values backup.

    The file is `state_file_for(values_file)` (`values-X.yaml` -> `state-X.json`), created
    exclusively: an existing one is never overwritten.
    """
    import redis

    path = state_file_for(Path(values_file))
    client = _redis(redis_url)
    entries = []
    try:
        for n, key in enumerate(client.scan_iter(match=STATE_PATTERN, count=500)):
            if n >= MAX_STATE_KEYS:
                raise OperationError(f"more than {MAX_STATE_KEYS} qlens:* keys in Redis",
                                     "back up the values without --state, and Redis with its own tools")
            pipe = client.pipeline()
            pipe.dump(key)
            pipe.pttl(key)
            payload, pttl = pipe.execute()
            if payload is None:  # expired between SCAN and DUMP
                continue
            expires = None if pttl is None or pttl < 0 else int(time.time() * 1000) + int(pttl)
            entries.append({"key": base64.b64encode(key).decode(), "dump": base64.b64encode(payload).decode(),
                            "expiresAtMs": expires})
            if progress:
                progress(len(entries))
    except redis.RedisError as exc:
        raise OperationError(f"reading Redis at {redis_location(redis_url)} failed ({type(exc).__name__})",
                             "check that Redis is up and answering, then run the backup again") from None
    finally:
        client.close()
    taken = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {"format": STATE_FORMAT, "taken": taken, "keys": entries}
    _ensure_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OperationError(f"{path} already exists; not overwriting it",
                             "move it away and try again") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(doc) + "\n")
    return path, len(entries)


def state_file_for(values_file: Path) -> Path:
    """The state file written alongside a values backup (`values-X.yaml` -> `state-X.json`)."""
    name = values_file.name
    if name.startswith("values-") and name.endswith(".yaml"):
        return values_file.with_name("state-" + name[len("values-"):-len(".yaml")] + ".json")
    return values_file.with_suffix(".state.json")


def read_state(state_file: Path | str) -> dict[str, Any]:
    """Parse and check a whole state file; "keys" becomes [(key, dump, expiresAtMs | None)]."""
    state_file = Path(state_file)
    try:
        doc = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{state_file}: no such state file",
                          "restore without --state, or back up with `qlensctl backup ENV --state`") from None
    except (OSError, ValueError):
        raise ConfigError(f"{state_file}: not a QLens state backup (not JSON)",
                          "pass a state-*.json written by `backup --state`") from None
    valid = isinstance(doc, dict) and doc.get("format") == STATE_FORMAT and isinstance(doc.get("keys"), list)
    if not valid:
        raise ConfigError(f"{state_file}: not a QLens state backup",
                          "pass a state-*.json written by `backup --state`")
    entries = []
    try:
        for entry in doc["keys"]:
            expires = entry.get("expiresAtMs")
            if expires is not None and not isinstance(expires, int):
                raise TypeError
            entries.append((base64.b64decode(entry["key"], validate=True),
                            base64.b64decode(entry["dump"], validate=True), expires))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(f"{state_file}: entry {len(entries) + 1} is malformed; nothing was restored",
                          "pass a state-*.json written by `backup --state`") from None
    return {**doc, "keys": entries}


def restore_state(redis_url: str, state_file: Path | str) -> tuple[int, int]:
    """RESTORE each saved key (REPLACE) with the time it had left; returns (restored, expired)."""
    import redis

    doc = read_state(state_file)
    client = _redis(redis_url)
    restored = expired = 0
    now_ms = int(time.time() * 1000)
    try:
        pipe = client.pipeline(transaction=False)
        for key, payload, expires in doc["keys"]:
            if expires is not None and expires <= now_ms:
                expired += 1
                continue
            ttl = 0 if expires is None else expires - now_ms
            pipe.restore(key, ttl, payload, replace=True)
            restored += 1
        pipe.execute()
    except redis.ResponseError as exc:  # e.g. a DUMP payload from an incompatible Redis version
        raise OperationError(f"Redis at {redis_location(redis_url)} refused a saved key ({first_line(exc)})",
                             "restore into a Redis of the same or a newer version") from None
    except redis.RedisError as exc:
        raise OperationError(f"writing Redis at {redis_location(redis_url)} failed ({type(exc).__name__})",
                             "check that Redis is up and accepts writes, then run the restore again "
                             "(restoring the same keys twice is harmless)") from None
    finally:
        client.close()
    return restored, expired
