"""What the Helm operations return, and the names and limits every caller shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RELEASE = "qlens"
DEFAULT_TIMEOUT = 300  # seconds, for waits on rollouts
HISTORY_MAX = 10  # revisions Helm keeps per release


@dataclass(frozen=True)
class Release:
    """One revision of a release, as `helm history` / `helm status` describe it."""

    name: str
    namespace: str
    revision: int
    status: str  # deployed, superseded, failed, pending-install, pending-upgrade, uninstalled, ...
    chart: str  # name-version, e.g. qlens-0.1.0
    chart_version: str
    # the version of QLens this revision runs: its values' image.tag (what `deploy --version` sets);
    # the chart's appVersion only when the values name no tag (the chart then falls back to it)
    app_version: str
    updated: str  # ISO 8601, UTC
    description: str = ""  # "qlensctl deploy staging v2", "Rollback to 3", "Upgrade ... failed: ..."
    manifest: str = field(default="", repr=False)  # filled by status and upgrade_or_install

    def to_dict(self) -> dict[str, Any]:
        """For `--json`: everything but the manifest."""
        data = asdict(self)
        data.pop("manifest")
        return data


@dataclass(frozen=True)
class LintMessage:
    severity: str  # info, warning, error
    path: str
    message: str


@dataclass(frozen=True)
class LintReport:
    messages: tuple[LintMessage, ...]

    @property
    def errors(self) -> list[LintMessage]:
        return [m for m in self.messages if m.severity == "error"]

    @property
    def warnings(self) -> list[LintMessage]:
        return [m for m in self.messages if m.severity == "warning"]

    @property
    def ok(self) -> bool:
        """Clean: no error and no warning (info lines, like "icon is recommended", are fine)."""
        return not self.errors and not self.warnings


def image_tag(values: Any) -> str:
    """The image tag a revision's user-supplied values deploy (`image.tag`), "" when they set none."""
    image = values.get("image") if isinstance(values, dict) else None
    tag = image.get("tag") if isinstance(image, dict) else None
    return str(tag) if tag not in (None, "") else ""
