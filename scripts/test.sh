#!/usr/bin/env bash
# Runs every test of the workspace. Installs the system tools the tests drive
# (SIPp, from the Debian package sip-tester; Kamailio, package kamailio, which
# tests/kamailio.rs runs as proxy and registrar; espeak-ng, which
# tests/signal_path.rs speaks its recording with; chromium, the headless
# browser tests/dashboard.rs loads the dashboard in) and the libopus the build
# links (libopus-dev, found through pkg-config) with apt-get when they are
# missing, and Asterisk 22 for tests/asterisk.rs (the prebuilt tree in
# ../shared/tools/asterisk, extracted to /opt/asterisk-emonav by its
# install.sh); the SRTP build's libssl-dev, libclang-dev and make, and
# baresip-core for tests/srtp.rs; run as root or with sudo on a fresh Debian/Ubuntu machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v chromium >/dev/null || need+=(chromium)
pkg-config --exists opus 2>/dev/null || need+=(libopus-dev pkg-config)
# Debian puts kamailio in /usr/sbin, which is not on every user's PATH.
command -v kamailio >/dev/null || [ -x /usr/sbin/kamailio ] || need+=(kamailio)
# SRTP: the srtp crate builds libsrtp2 from source (make, a C compiler) with
# OpenSSL's AES (libssl-dev) and generates its bindings with bindgen (libclang);
# tests/srtp.rs calls with baresip and its srtp module (baresip-core).
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev pkg-config)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(gcc)
{ command -v baresip >/dev/null && [ -f /usr/lib/baresip/modules/srtp.so ]; } || need+=(baresip-core)
# tests/history.rs starts a throw-away PostgreSQL cluster; Debian puts initdb
# under /usr/lib/postgresql/*/bin.
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# tests/kamailio.rs serves NAPTR/SRV records for RFC 3263 from a throw-away dnsmasq.
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
# tests/load.rs drives benches/load/ramp.py (python3, standard library only).
command -v python3 >/dev/null || need+=(python3)
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

# tests/stateless.rs asks for 4 MiB SIP socket buffers ([sip] udp_buffer_kib)
# and checks that a burst is absorbed; Linux caps them at these limits (208 KiB
# on many systems), so raise them if lower.
for key in net.core.rmem_max net.core.wmem_max; do
  if [ "$(sysctl -n "$key")" -lt 4194304 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setting: $key = 4194304"
    $SUDO sysctl -q -w "$key=4194304"
  fi
done

cargo test --workspace --locked "$@"
