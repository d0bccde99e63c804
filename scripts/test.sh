#!/usr/bin/env bash
# Runs every test of the workspace. Installs the system tools the tests drive
# (SIPp, from the Debian package sip-tester; Kamailio, package kamailio, which
# tests/kamailio.rs runs as proxy and registrar; espeak-ng, which
# tests/signal_path.rs speaks its recording with) and the libopus the build
# links (libopus-dev, found through pkg-config) with apt-get when they are
# missing, and Asterisk 22 for tests/asterisk.rs (the prebuilt tree in
# ../shared/tools/asterisk, extracted to /opt/asterisk-emonav by its
# install.sh); run as root or with sudo on a fresh Debian/Ubuntu machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
pkg-config --exists opus 2>/dev/null || need+=(libopus-dev pkg-config)
# Debian puts kamailio in /usr/sbin, which is not on every user's PATH.
command -v kamailio >/dev/null || [ -x /usr/sbin/kamailio ] || need+=(kamailio)
# Kamailio's tls module (tests/kamailio.rs, the SIP over TLS call) is a package of its own.
dpkg-query -W -f='${Status}' kamailio-tls-modules 2>/dev/null | grep -q "ok installed" \
  || need+=(kamailio-tls-modules)

if ((${#need[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x /opt/asterisk-emonav/sbin/asterisk ]; then
  installer=../shared/tools/asterisk/install.sh
  if [ -f "$installer" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing: Asterisk ($installer)"
    $SUDO bash "$installer"
  else
    echo "warning: no /opt/asterisk-emonav and no $installer: tests/asterisk.rs will fail" >&2
  fi
fi

cargo test --workspace --locked "$@"
