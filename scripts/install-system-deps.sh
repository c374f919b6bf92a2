#!/usr/bin/env bash
# Install the Debian packages the test suite needs (Mosquitto), if they are missing.
# Runs as root or through sudo; a no-op when everything is already there.
set -euo pipefail

need=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
# The Debian package starts a broker on 1883; the tests start their own on free ports.
