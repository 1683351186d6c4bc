#!/usr/bin/env bash
# Two hosts, one central journal: app's entries travel from host A (the .deb, and
# systemd-journal-upload) to host B (systemd-journal-remote) over a private network, with the
# stock tools README "Fleets" describes. Two systemd-nspawn containers, each a real systemd as
# PID 1, on a veth pair between two network namespaces this script creates (10.99.0.1 and
# 10.99.0.2, nothing else reachable), over HTTPS with the keys made by the openssl commands of
# README "Fleets" (copied out of README.md). Prints one PASS/FAIL line per check.
#
# Needs root, debootstrap and systemd-container. The Debian rootfs (minbase + systemd, socat,
# systemd-journal-remote) is cached in $APP_E2E_CACHE/fleet-rootfs; each run boots two
# throwaway overlays of it, inside private mount, pid and network namespaces.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${APP_E2E_CACHE:-/var/cache/app-e2e}
MIRROR=${APP_E2E_MIRROR:-http://deb.debian.org/debian}
ROOTFS=$CACHE/fleet-rootfs
A_IP=10.99.0.1
B_IP=10.99.0.2

if [ "$(id -u)" != 0 ]; then
    echo "tests/e2e/fleet.sh needs root (debootstrap, mounts, network namespaces, systemd-nspawn); CI runs it as root" >&2
    exit 2
fi

if [ -z "${APP_E2E_INNER:-}" ]; then
    "$ROOT/packaging/build-deb" >/dev/null
    cp "$ROOT"/target/debian/app_*-1_amd64.deb /tmp/app-fleet.deb
    . "$ROOT/tests/e2e/lib.sh"
    rootfs "$ROOTFS" systemd,systemd-sysv,dbus,socat,systemd-journal-remote,iproute2
    exec env APP_E2E_INNER=1 timeout 900 unshare --mount --pid --net --fork --kill-child \
        --mount-proc --propagation private "$0" "$@"
fi

. "$ROOT/tests/e2e/lib.sh"
WORK=$(mktemp -d /tmp/app-fleet.XXXXXX)
NSPAWNS=()
cleanup() {
    local p
    for p in "${NSPAWNS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    umount -l "$WORK"/*/merged 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The private network: two namespaces joined by a veth pair, no route anywhere else. Their
# names live on a tmpfs of our own, so that nothing is left in the machine's /run/netns.
mkdir -p /run/netns
mount -t tmpfs tmpfs /run/netns
ip netns add fleet-a
ip netns add fleet-b
ip link add veth-a netns fleet-a type veth peer name veth-b netns fleet-b
ip -n fleet-a addr add "$A_IP/24" dev veth-a
ip -n fleet-b addr add "$B_IP/24" dev veth-b
for ns in fleet-a fleet-b; do
    ip -n "$ns" link set lo up
done
ip -n fleet-a link set veth-a up
ip -n fleet-b link set veth-b up

# boot NAME NETNS: boots an overlay of the rootfs as host NAME; sets BOOTED to its PID 1.
boot() {
    local name=$1 netns=$2 dir=$WORK/$1
    mkdir -p "$dir/upper" "$dir/work" "$dir/merged"
    mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged"
    echo "$name" >"$dir/merged/etc/hostname"
    systemd-nspawn -q -D "$dir/merged" -b --register=no --keep-unit --console=read-only \
        --machine="$name" --network-namespace-path="/run/netns/$netns" \
        >"$dir/console.log" 2>&1 </dev/null &
    NSPAWNS+=($!)
    container_init "$name" "$dir/console.log"
    BOOTED=$INIT_PID
}

boot fleet-a fleet-a
A=$BOOTED
boot fleet-b fleet-b
B=$BOOTED
cp /tmp/app-fleet.deb "$WORK/fleet-a/merged/root/app.deb"

# TLS keys exactly as README "Fleets" makes them: its openssl block, run in a directory of ours;
# run again in another directory, it makes a CA the collector does not trust.
tls_commands() {
    awk '/^## Fleets/ { on = 1 } /^## / && !/^## Fleets/ { on = 0 }
         on && /^\*\*TLS keys/ { tls = 1 } on && /^\*\*Collector/ { tls = 0 }
         tls && /^    / { print substr($0, 5) }' "$ROOT/README.md"
}
grep -q '^openssl req -x509' <(tls_commands) || { echo "FAIL: no openssl commands in README \"Fleets\""; exit 1; }
for dir in tls rogue; do
    mkdir -p "$WORK/$dir"
    (cd "$WORK/$dir" && tls_commands | bash -e) >"$WORK/$dir.log" 2>&1 \
        || { echo "FAIL: README's openssl commands:"; cat "$WORK/$dir.log"; exit 1; }
done
# collector.example is B; the installs README "Fleets" describes.
echo "$B_IP collector.example" >>"$WORK/fleet-a/merged/etc/hosts"
install -D -m 0644 "$WORK/tls/collector.example.pem" "$WORK/fleet-b/merged/etc/ssl/certs/journal-remote.pem"
install -D -m 0640 "$WORK/tls/collector.example.key" "$WORK/fleet-b/merged/etc/ssl/private/journal-remote.pem"
install -D -m 0644 "$WORK/tls/ca.pem" "$WORK/fleet-b/merged/etc/ssl/ca/trusted.pem"
install -D -m 0644 "$WORK/tls/web1.example.pem" "$WORK/fleet-a/merged/etc/ssl/certs/journal-upload.pem"
install -D -m 0640 "$WORK/tls/web1.example.key" "$WORK/fleet-a/merged/etc/ssl/private/journal-upload.pem"
install -D -m 0644 "$WORK/tls/ca.pem" "$WORK/fleet-a/merged/etc/ssl/ca/trusted.pem"
cp "$WORK/rogue/web1.example.key" "$WORK/fleet-a/merged/root/rogue.key"
cp "$WORK/rogue/web1.example.pem" "$WORK/fleet-a/merged/root/rogue.pem"
cp "$WORK/rogue/ca.pem" "$WORK/fleet-a/merged/root/rogue-ca.pem"

# Runs a command on host A or B, as root, with a timeout.
on() { local pid=$1; shift; timeout 60 nsenter --target "$pid" --all -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
onsh() { on "$1" sh -c "$2"; }
echo "hosts booted: fleet-a (pid $A, $A_IP) $(booted "$A"), fleet-b (pid $B, $B_IP) $(booted "$B")"

FAILED=0
PASSED=0
pass() { echo "PASS: $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $*"; FAILED=$((FAILED + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
# await SECONDS HOST 'shell condition'
await() { local i; for i in $(seq $(($1 * 5))); do onsh "$2" "$3" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
# What B holds from A, one MESSAGE per line.
remote_messages() { onsh "$B" "journalctl -D /var/log/journal/remote -o cat --output-fields=MESSAGE _HOSTNAME=fleet-a"; }

# 1. B: systemd-journal-remote (the stock unit: HTTPS) on the private address.
setup_b() {
    onsh "$B" "chgrp systemd-journal-remote /etc/ssl/private/journal-remote.pem
mkdir -p /etc/systemd/system/systemd-journal-remote.socket.d
printf '[Socket]\nListenStream=\nListenStream=$B_IP:19532\n' >/etc/systemd/system/systemd-journal-remote.socket.d/fleet.conf
printf '[Remote]\nServerKeyFile=/etc/ssl/private/journal-remote.pem\nServerCertificateFile=/etc/ssl/certs/journal-remote.pem\nTrustedCertificateFile=/etc/ssl/ca/trusted.pem\n' >/etc/systemd/journal-remote.conf
systemctl daemon-reload && systemctl enable --now systemd-journal-remote.socket" || return 1
    [ "$(on "$B" systemctl is-active systemd-journal-remote.socket)" = active ]
}
check "1. B: systemd-journal-remote.socket listening on $B_IP:19532 (HTTPS, keys from the README's CA)" setup_b

# 2. A: app from its .deb, systemd-journal-upload pointed at B.
setup_a() {
    on "$A" dpkg -i /root/app.deb >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log"; return 1; }
    # The stock unit restarts a failed upload 5 times in 10 s, then gives up for good: a
    # collector down for longer would stop the upload. README "Fleets" ships this drop-in.
    onsh "$A" "mkdir -p /etc/systemd/journal-upload.conf.d /etc/systemd/system/systemd-journal-upload.service.d
chgrp systemd-journal /etc/ssl/private/journal-upload.pem
printf '[Upload]\nURL=https://collector.example:19532\nServerKeyFile=/etc/ssl/private/journal-upload.pem\nServerCertificateFile=/etc/ssl/certs/journal-upload.pem\nTrustedCertificateFile=/etc/ssl/ca/trusted.pem\n' >/etc/systemd/journal-upload.conf.d/collector.conf
printf '[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=always\nRestartSec=5s\n' >/etc/systemd/system/systemd-journal-upload.service.d/retry.conf
systemctl daemon-reload && systemctl enable --now systemd-journal-upload.service" || return 1
    [ "$(on "$A" systemctl is-active app.socket)" = active ] \
        && [ "$(on "$A" systemctl is-active systemd-journal-upload.service)" = active ]
}
check "2. A: app.socket active, systemd-journal-upload.service running towards https://collector.example:19532" setup_a

# 3. One line on A, on B with its fields.
step3() {
    onsh "$A" 'echo fleet-hello | socat - UNIX-CONNECT:/run/app.sock' || return 1
    await 30 "$B" "journalctl -D /var/log/journal/remote -o cat MESSAGE=fleet-hello | grep -qx fleet-hello" || return 1
    local local_json remote_json field
    local_json=$(onsh "$A" "journalctl -u app.service -o json MESSAGE=fleet-hello")
    remote_json=$(onsh "$B" "journalctl -D /var/log/journal/remote -o json MESSAGE=fleet-hello")
    echo "$remote_json" | grep -q '"_HOSTNAME":"fleet-a"' || return 1
    echo "$remote_json" | grep -q '"PRIORITY":"6"' || return 1
    for field in CLIENT_PID CLIENT_UID CLIENT_GID SYSLOG_IDENTIFIER _SYSTEMD_UNIT; do
        local value
        value=$(echo "$local_json" | grep -o "\"$field\":\"[^\"]*\"")
        [ -n "$value" ] && echo "$remote_json" | grep -qF "$value" || { echo "  $field: A has '$value'"; return 1; }
    done
    echo "  on B: $(echo "$remote_json" | grep -o '"\(CLIENT_[A-Z]*\|_HOSTNAME\|PRIORITY\)":"[^"]*"' | tr '\n' ' ')"
}
check "3. a line sent on A is on B with MESSAGE, PRIORITY, CLIENT_PID/UID/GID as on A, _HOSTNAME=fleet-a" step3

# exactly_once PREFIX N: B holds PREFIX-lines 0..N-1 from A, each once.
exactly_once() {
    local got
    got=$(remote_messages | grep "^$1-" | sort)
    [ "$(echo "$got" | grep -c .)" = "$2" ] && [ "$(echo "$got" | uniq | grep -c .)" = "$2" ]
}

# 4. 5,000 lines from 10 clients.
step4() {
    onsh "$A" 'for c in 0 1 2 3 4 5 6 7 8 9; do
        (i=0; while [ $i -lt 500 ]; do echo "bulk-$c-$i"; i=$((i + 1)); done | socat -u - UNIX-CONNECT:/run/app.sock) &
    done; wait' || return 1
    await 60 "$B" "[ \$(journalctl -D /var/log/journal/remote -o cat _HOSTNAME=fleet-a | grep -c '^bulk-') -ge 5000 ]" || true
    sleep 2
    exactly_once bulk 5000 || { echo "  B holds $(remote_messages | grep -c '^bulk-') bulk lines"; return 1; }
}
check "4. 5,000 lines from 10 clients on A: all 5,000 on B, each once" step4

# 5. B away for a while: A keeps logging, the upload resumes from its cursor when B is back.
step5() {
    on "$B" systemctl stop systemd-journal-remote.socket systemd-journal-remote.service || return 1
    onsh "$A" 'i=0; while [ $i -lt 1000 ]; do echo "gap-$i"; i=$((i + 1)); done | socat -u - UNIX-CONNECT:/run/app.sock' || return 1
    await 20 "$A" "journalctl -u app.service -o cat | grep -c '^gap-' | grep -qx 1000" \
        || { echo "  A logged $(onsh "$A" "journalctl -u app.service -o cat | grep -c '^gap-'") gap lines"; return 1; }
    sleep 15
    echo "  while B was down: upload service $(on "$A" systemctl is-active systemd-journal-upload.service || true), $(remote_messages | grep -c '^gap-' || true) gap lines on B"
    on "$B" systemctl start systemd-journal-remote.socket || { echo "  cannot start B's socket"; return 1; }
    await 120 "$B" "[ \$(journalctl -D /var/log/journal/remote -o cat _HOSTNAME=fleet-a | grep -c '^gap-') -ge 1000 ]" || true
    sleep 2
    exactly_once gap 1000 || { echo "  B holds $(remote_messages | grep -c '^gap-') gap lines"; return 1; }
    # Delivery is at least once: systemd-journal-upload (252) resumes *at* its saved cursor, so
    # the last entry it sent before the outage may come again. Lost is never acceptable.
    local bulk dups
    bulk=$(remote_messages | grep '^bulk-' | sort)
    dups=$(echo "$bulk" | uniq -d | grep -c . || true)
    echo "  after the outage: $(echo "$bulk" | uniq | grep -c .) of 5000 earlier lines on B, $dups sent again by the upload's resume"
    [ "$(echo "$bulk" | uniq | grep -c .)" = 5000 ] && [ "$dups" -le 1 ]
}
check "5. B stopped, 1,000 lines sent on A meanwhile, B started: all 1,000 arrive, each once; nothing earlier lost" step5

# 6. Another CA. The upload checks the collector: told to trust another CA, it refuses to send.
# The collector cannot check the upload's certificate: Debian 12 builds systemd-journal-remote
# without GnuTLS ("Option --trust is not available"; it logs "Certificate checking disabled."),
# so a client certificate from another CA is taken — README "Fleets" says so, and this prints
# what it saw.
step6() {
    # One-shot uploads of one entry; the config file's URL and keys hidden (it may be given once).
    local upload="unshare -m sh -c 'mount -t tmpfs tmpfs /etc/systemd/journal-upload.conf.d && exec /lib/systemd/systemd-journal-upload -u https://collector.example:19532 \"\$@\"' upload"
    local own="--key=/etc/ssl/private/journal-upload.pem --cert=/etc/ssl/certs/journal-upload.pem"
    # Each probe: a journal file of one entry, MESSAGE=its name, uploaded with --file.
    local m
    for m in trusting-rogue from-rogue-client; do
        onsh "$A" "printf '__REALTIME_TIMESTAMP=1700000000000000\n__MONOTONIC_TIMESTAMP=1\n_BOOT_ID=0123456789abcdef0123456789abcdef\nMESSAGE=$m\n\n' | /lib/systemd/systemd-journal-remote -o /root/$m.journal -" >/dev/null 2>&1 || return 1
    done
    if onsh "$A" "$upload $own --trust=/root/rogue-ca.pem --file=/root/trusting-rogue.journal" >"$WORK/rogue-trust.log" 2>&1; then
        echo "  the upload sent to a collector whose certificate is not from the CA it trusts"; return 1
    fi
    echo "  trusting another CA: $(grep -m1 -i 'fail\|error\|certificate' "$WORK/rogue-trust.log" || tail -n 1 "$WORK/rogue-trust.log")"
    # (Uploads with the right CA are what checks 3 to 5 saw.) Nothing of the refused one on B.
    sleep 2
    [ -z "$(onsh "$B" "journalctl -D /var/log/journal/remote -o cat MESSAGE=trusting-rogue")" ] || return 1
    # What a client certificate from another CA meets, as seen (not judged: a one-shot upload of
    # a file with the right certificate did not succeed either in this set-up, see the report).
    local rc=0
    onsh "$A" "$upload --key=/root/rogue.key --cert=/root/rogue.pem --trust=/etc/ssl/ca/trusted.pem --file=/root/from-rogue-client.journal" >"$WORK/rogue-client.log" 2>&1 || rc=$?
    echo "  client certificate from another CA: upload exit $rc $(head -n 1 "$WORK/rogue-client.log")"
    echo "  collector: $(onsh "$B" "journalctl -u systemd-journal-remote.service -o cat | grep -m1 'Certificate checking'" || true)"
}
check "6. the upload refuses a collector whose certificate is not from the CA it trusts (nothing sent)" step6

echo "fleet e2e: $PASSED passed, $FAILED failed"
if [ "$FAILED" -gt 0 ]; then
    for h in fleet-a fleet-b; do echo "== $h console"; tail -n 20 "$WORK/$h/console.log"; done
    echo "== upload on A"; on "$A" journalctl -u systemd-journal-upload.service -n 30 --no-pager || true
    echo "== remote on B"; on "$B" journalctl -u systemd-journal-remote.service -n 30 --no-pager || true
fi
[ "$FAILED" -eq 0 ]
