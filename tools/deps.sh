#!/bin/sh
# Installs the Debian packages listed in tools/deps/*.txt that are missing.
# Idempotent: does nothing (and needs no network) when all are present.
set -eu
cd "$(dirname "$0")/deps"
want=$(cat ${1:-*.txt} | sed -e 's/#.*//' | tr -s ' \n' '\n' | sort -u | grep -v '^$')
missing=
for p in $want; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
