#!/usr/bin/env bash
# Prepare everything tests/hub/test_jupyterhub_isolation.py needs (run as root; idempotent).
#
#   QW_HUB_PREFIX (default /opt/qw-hub) receives:
#     venv/          a venv built from Debian's /usr/bin/python3, readable and executable by every
#                    uid (single-user servers run as the users), with jupyterhub, jupyterlab,
#                    ipykernel and this project installed NON-editable (users must not depend on
#                    the repo checkout, and an editable install would point into root's tree)
#     node_modules/  configurable-http-proxy@5.3.0 from npm (local install, no global -g)
#
# A second run only re-installs the project itself (a few seconds).
set -euo pipefail
umask 022

PREFIX="${QW_HUB_PREFIX:-/opt/qw-hub}"
CHP_VERSION="5.3.0"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=/usr/bin/python3

if [ "$(id -u)" != 0 ]; then
    echo "setup-hub.sh: must run as root (it installs into $PREFIX and may apt-get install)" >&2
    exit 1
fi

# System prerequisites: useradd/userdel (passwd), node + npm for the proxy, python3-venv.
missing=()
command -v useradd >/dev/null || missing+=(passwd)
command -v npm >/dev/null || missing+=(nodejs npm)
"$PY" -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-hub.sh: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$PREFIX"
chmod 0755 "$PREFIX"

# configurable-http-proxy, pinned; skip when the pinned version is already there.
chp_pkg="$PREFIX/node_modules/configurable-http-proxy/package.json"
if [ ! -f "$chp_pkg" ] || ! grep -q "\"version\": \"$CHP_VERSION\"" "$chp_pkg"; then
    echo "setup-hub.sh: npm install configurable-http-proxy@$CHP_VERSION into $PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
        "configurable-http-proxy@$CHP_VERSION" >/dev/null
fi
test -x "$PREFIX/node_modules/.bin/configurable-http-proxy"

# The venv: built from /usr/bin/python3 (root's pyenv Python under /root is not reachable by users).
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    echo "setup-hub.sh: creating $PREFIX/venv from $PY"
    "$PY" -m venv "$PREFIX/venv"
fi
vpip() {
    # pip warns about every configured local index that lacks a package; keep real errors only
    "$PREFIX/venv/bin/python" -m pip --disable-pip-version-check --no-input -q "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}
vpip install "jupyterhub>=5,<7" "jupyterlab>=4.2,<5" "ipykernel>=6" "ipywidgets>=8.1"
# Runtime dependencies of the project first, then the project itself, non-editable and always
# re-installed so the hub runs the code of this checkout.
vpip install "$REPO"
vpip install --no-deps --force-reinstall "$REPO"
# pip's in-tree build leaves build/ and *.egg-info in the checkout; both are git-ignored.

# Widget uploads (ipywidgets.FileUpload) reach the kernel as one websocket message, and tornado
# closes any message over 10 MiB by default: a 34 MB .weights upload would just fail. Raise the
# limit above the workspace's 512 MiB weights limit for every server started from this venv.
# (jupyter_server_config.d/*.json is only read for extension switches, so this is the main file
# of the venv's config path, read by every jupyter server and jupyterhub-singleuser.)
mkdir -p "$PREFIX/venv/etc/jupyter"
printf '%s\n' '{"ServerApp": {"tornado_settings": {"websocket_max_message_size": 629145600}}}' \
    > "$PREFIX/venv/etc/jupyter/jupyter_server_config.json"

# The tutorial notebooks, read-only for everybody; the hub's pre-spawn hook copies them into each
# user's workspace on first use (engine.workspace.store.ensure_tutorials).
rm -rf "$PREFIX/tutorials"
mkdir -p "$PREFIX/tutorials"
cp "$REPO"/notebooks/*.ipynb "$PREFIX/tutorials/"
chmod -R a+rX,a-w "$PREFIX/tutorials"
chmod u+w "$PREFIX/tutorials"   # root may refresh it on the next run

chmod -R a+rX "$PREFIX"
(cd / && "$PREFIX/venv/bin/python" -c "import engine.workspace.store, jupyterhub, ipykernel") \
    || { echo "setup-hub.sh: the venv cannot import engine.workspace.store" >&2; exit 1; }
echo "setup-hub.sh: ready: $PREFIX/venv, $PREFIX/node_modules/.bin/configurable-http-proxy"
