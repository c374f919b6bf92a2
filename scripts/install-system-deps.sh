#!/usr/bin/env bash
# Install the Debian packages the test suite needs (Mosquitto; PowerDNS 4.7 with its LMDB
# backend and dig for the PowerDNS end-to-end test; Chromium for the status page test;
# Prometheus for promtool), if they are missing.
# Runs as root or through sudo; a no-op when everything is already there.
set -euo pipefail

need=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
[ -x /usr/sbin/pdns_server ] || need+=(pdns-server)
ls /usr/lib/*/pdns/liblmdbbackend.so >/dev/null 2>&1 || need+=(pdns-backend-lmdb)
command -v dig >/dev/null 2>&1 || need+=(dnsutils)
# headless Chromium renders the status page (tests/integration/test_statuspage.py)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# promtool checks and unit-tests packaging/prometheus/evsync-rules.yml
command -v promtool >/dev/null 2>&1 || need+=(prometheus)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
how="apt-get (as root)"
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
    how="sudo apt-get (you may be asked for your password)"
fi
echo "The test suite needs these Debian packages, which are missing: ${need[*]}"
echo "Installing them now with ${how}: apt-get update; apt-get install --no-install-recommends ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
# The Debian packages may start a broker on 1883, pdns on 53 and (under systemd)
# Prometheus on 9090; the tests start their own servers on free loopback ports.
