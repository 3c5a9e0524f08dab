#!/usr/bin/env bash
# Makes sure the services the test suite talks to are installed and running on loopback:
# PostgreSQL on 127.0.0.1:5432 (user postgres, database test, trust auth for local connections).
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "installing PostgreSQL from Debian's packages"
  apt_install postgresql
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
  # a cluster made by the Debian package: allow local trust auth and create the test database
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
  psql -h 127.0.0.1 -U postgres -tc "select 1 from pg_database where datname = 'test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c 'create database test' >/dev/null
fi
echo "PostgreSQL ready on 127.0.0.1:5432"

# Dovecot IMAP for the email channel tests: only the package is needed; tests/dovecot.py starts its own instance
# on a loopback port with a config in a temporary folder, and stops it at the end.
if ! command -v dovecot >/dev/null 2>&1 && [ ! -x /usr/sbin/dovecot ]; then
  echo "installing Dovecot IMAP from Debian's packages"
  apt_install dovecot-imapd
fi
echo "Dovecot $( (command -v dovecot >/dev/null 2>&1 && dovecot --version) || /usr/sbin/dovecot --version) installed"

# Chromium for the console's browser tests (driven by Playwright with executable_path; no browser is downloaded).
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Chromium from Debian's packages"
  apt_install chromium
fi
echo "$(chromium --version 2>/dev/null || echo 'Chromium missing') installed"
