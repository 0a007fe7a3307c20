"""The three service images, built from the project's Dockerfile for the real node.

`build_images(tag, out_dir)` runs `scripts/build-images` (buildah, no Docker engine; base: the
Debian Python image `tests/k8s/node build` makes) and returns the archives to import into a node.
buildah's layer cache makes a second tag cost seconds: only the label layer differs.

Deploy them with the chart values `image: {repository: REPOSITORY, tag: TAG, pullPolicy: Never}`
(`ServiceImages.values()`).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-images"
REPOSITORY = "localhost"  # images localhost/qlens-<service>:<tag>: local only, never pulled
SERVICES = ("gateway", "router", "cache")


class ImageBuildError(RuntimeError):
    """scripts/build-images failed; the message ends with its output."""


@dataclass(frozen=True)
class ServiceImages:
    tag: str
    repository: str
    archives: dict[str, Path]  # service -> OCI archive

    def image(self, service: str) -> str:
        return f"{self.repository}/qlens-{service}:{self.tag}"

    def values(self) -> dict[str, dict[str, str]]:
        """The chart values that run these images on a node that cannot pull."""
        return {"image": {"repository": self.repository, "tag": self.tag, "pullPolicy": "Never"}}


def build_images(tag: str, out_dir: Path, repository: str = REPOSITORY,
                 timeout: float = 1200) -> ServiceImages:
    proc = subprocess.run(
        [str(BUILD_SCRIPT), "--tag", tag, "--repository", repository, "--out", str(out_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise ImageBuildError(f"scripts/build-images --tag {tag} failed (exit {proc.returncode}):\n{tail}")
    archives = {}
    for line in proc.stdout.splitlines():
        service, _image, archive, _size = line.split()
        archives[service] = Path(archive)
    if set(archives) != set(SERVICES):
        raise ImageBuildError(f"scripts/build-images printed {sorted(archives)}, expected {list(SERVICES)}")
    return ServiceImages(tag=tag, repository=repository, archives=archives)
