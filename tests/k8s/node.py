"""A real Kubernetes node for the test control plane, from Python: start, stop, import images.

The work is done by the `node` script beside this file (containerd + runc, kubelet, kube-proxy,
kube-scheduler and dnsmasq in a network namespace of their own); this module only runs it and
reads what it reports, so the fixture, the tests and a person at a shell share one implementation.

    node = RealNode.start(state_dir, kubeconfig)   # ~12-20 s until the Node is Ready
    node.import_image(tar)                         # an OCI archive, e.g. from scripts/build-images
    node.stop()                                    # kills everything, undoes every host change

Root is needed (network namespaces, cgroups, mounts). Standard library only.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.k8s.controlplane import SERVICE_CIDR, assets_dir

NODE_SCRIPT = Path(__file__).resolve().parent / "node"
BUILD_HINT = "run `tests/k8s/node build` as root (once per machine; scripts/test does it)"
NODE_BINARIES = ("kubelet", "kube-proxy", "kube-scheduler")
# The node registers with this taint, so the scheduler places there only pods that tolerate it:
# never the fake kubelet's pods (its namespaces have no toleration) when both run in one session.
# `TOLERATION_ANNOTATION` on a namespace makes every pod in it tolerate the taint (the control
# plane runs the PodTolerationRestriction admission plugin), so charts need no tolerations value.
TAINT_KEY = "qlens.test/real-node"
TOLERATION_ANNOTATION = {
    "scheduler.alpha.kubernetes.io/defaultTolerations":
        f'[{{"key": "{TAINT_KEY}", "operator": "Exists", "effect": "NoSchedule"}}]',
}


class NodeError(RuntimeError):
    """The node could not be started or stopped; the message says why and where the logs are."""


def missing_assets() -> list[str]:
    """What `node build` still has to make (binaries, pause image, build base image)."""
    assets = assets_dir()
    wanted = [*(assets / b for b in NODE_BINARIES), assets / "images" / "pause.tar",
              assets / "python-base.tar"]
    return [str(p) for p in wanted if not (p.exists() and p.stat().st_size > 0)]


def _env() -> dict[str, str]:
    return {**os.environ, "K8S_ASSETS": str(assets_dir()), "NODE_SERVICE_CIDR": SERVICE_CIDR,
            "NODE_TAINTS": f"{TAINT_KEY}=true:NoSchedule"}


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NODE_SCRIPT), *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class RealNode:
    """A running node: its state dir (logs in `logs/`), name (= its IP) and the admin kubeconfig."""

    state: Path
    kubeconfig: Path
    name: str
    start_seconds: float

    @classmethod
    def start(cls, state: Path, kubeconfig: Path, timeout: float = 180) -> RealNode:
        if os.geteuid() != 0:
            raise NodeError("the real node needs root (network namespace, cgroups, mounts)")
        missing = missing_assets()
        if missing:
            raise NodeError(f"node assets missing ({', '.join(missing)}): {BUILD_HINT}")
        t0 = time.monotonic()
        proc = _run("start", str(state), str(kubeconfig), timeout=timeout)
        elapsed = time.monotonic() - t0
        name = next((line.split("=", 1)[1] for line in proc.stdout.splitlines()
                     if line.startswith("NODE_NAME=")), "")
        if proc.returncode != 0 or not name:
            _run("stop", str(state), timeout=60)  # undo whatever half-started
            raise NodeError(f"node start failed (exit {proc.returncode}; logs in {state / 'logs'}):\n"
                            f"{_tail(proc.stderr)}")
        return cls(state=state, kubeconfig=kubeconfig, name=name, start_seconds=elapsed)

    @property
    def netns(self) -> str:
        return self._env_file().get("NS", "")

    def _env_file(self) -> dict[str, str]:
        path = self.state / "node.env"
        if not path.exists():
            return {}
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)

    def import_image(self, tar: Path) -> None:
        """Put an OCI (or docker) image archive into the node's containerd, where the kubelet finds
        it with `imagePullPolicy: Never`; the name comes from the archive's annotations."""
        proc = _run("image-import", str(tar), str(self.state), timeout=300)
        if proc.returncode != 0:
            raise NodeError(f"image import of {tar} failed: {_tail(proc.stderr or proc.stdout)}")

    def stop(self) -> None:
        proc = _run("stop", str(self.state), timeout=120)
        if proc.returncode != 0:
            raise NodeError(f"node stop failed (exit {proc.returncode}): {_tail(proc.stderr)}")


def leftovers(state: Path, netns: str) -> list[str]:
    """What a stopped node could leave on the host: its netns and host veth, its cgroups, mounts
    under its state dir, processes started from it. Empty when `node stop` cleaned up."""
    found = []
    index = netns.rsplit("-", 1)[-1]
    if Path("/run/netns", netns).exists():
        found.append(f"netns {netns}")
    if Path("/sys/class/net", f"qln{index}-h").exists():
        found.append(f"veth qln{index}-h")
    found += [f"cgroup {c / netns}" for c in Path("/sys/fs/cgroup").glob("*/") if (c / netns).exists()]
    prefix = f"{state.resolve()}/"
    found += [f"mount {m.split()[4]}" for m in Path("/proc/self/mountinfo").read_text().splitlines()
              if m.split()[4].startswith(prefix)]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            zombie = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if prefix in cmdline and not zombie:
            found.append(f"process {proc.name}: {cmdline[:120]}")
    return found
