#!/usr/bin/env bash
# End to end, as a user meets app: the .deb installed with dpkg into a minimal Debian 12 booted
# with systemd-nspawn (real systemd as PID 1, real journald), then the whole user story.
# Prints one PASS/FAIL line per check; exits non-zero if any failed.
#
# Needs root, debootstrap and systemd-container. The Debian rootfs is cached in
# $APP_E2E_CACHE (default /var/cache/app-e2e); each run boots a throwaway overlay of it.
# Everything runs in private mount and pid namespaces, so nothing outlives a failed run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${APP_E2E_CACHE:-/var/cache/app-e2e}
MIRROR=${APP_E2E_MIRROR:-http://deb.debian.org/debian}

if [ "$(id -u)" != 0 ]; then
    echo "tests/e2e/deb.sh needs root (debootstrap, mounts, systemd-nspawn); CI runs it as root" >&2
    exit 2
fi

if [ -z "${APP_E2E_INNER:-}" ]; then
    # Build both packages first (out here, where cargo's caches are), then re-run ourselves in
    # fresh namespaces: the container, its mounts and every process die with this script.
    "$ROOT/packaging/build-deb" >/dev/null
    cp "$ROOT"/target/debian/app_*-1_amd64.deb /tmp/app-e2e-v1.deb
    "$ROOT/packaging/build-deb" --deb-revision 2 >/dev/null
    cp "$ROOT"/target/debian/app_*-2_amd64.deb /tmp/app-e2e-v2.deb
    "$ROOT/packaging/build-deb" --deb-revision 3 >/dev/null
    cp "$ROOT"/target/debian/app_*-3_amd64.deb /tmp/app-e2e-v3.deb
    . "$ROOT/tests/e2e/lib.sh"
    rootfs "$CACHE/rootfs" systemd,systemd-sysv,dbus,socat
    exec env APP_E2E_INNER=1 timeout 900 \
        unshare --mount --pid --fork --kill-child --mount-proc --propagation private "$0" "$@"
fi

WORK=$(mktemp -d /tmp/app-e2e.XXXXXX)
NSPAWN=
cleanup() {
    [ -n "$NSPAWN" ] && kill "$NSPAWN" 2>/dev/null && wait "$NSPAWN" 2>/dev/null || true
    umount -l "$WORK/merged" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/upper" "$WORK/work" "$WORK/merged"
mount -t overlay overlay \
    -o "lowerdir=$CACHE/rootfs,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/merged"
cp /tmp/app-e2e-v1.deb /tmp/app-e2e-v2.deb /tmp/app-e2e-v3.deb "$WORK/merged/root/"
# journald's own rate limit turned down, so that only the unit's LogRateLimit* settings can
# explain 20,000 lines getting through (journald scales its burst with free disk space).
mkdir -p "$WORK/merged/etc/systemd/journald.conf.d"
printf '[Journal]\nRateLimitIntervalSec=30s\nRateLimitBurst=2500\n' \
    >"$WORK/merged/etc/systemd/journald.conf.d/e2e.conf"
echo e2e >"$WORK/merged/etc/hostname"

systemd-nspawn -q -D "$WORK/merged" -b --register=no --keep-unit --console=read-only \
    >"$WORK/console.log" 2>&1 </dev/null &
NSPAWN=$!

. "$ROOT/tests/e2e/lib.sh"
container_init e2e "$WORK/console.log"
CPID=$INIT_PID

# Runs a command in the container, as root, with a timeout.
c() { timeout 60 nsenter --target "$CPID" --all -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
csh() { c sh -c "$1"; }

echo "container booted (pid $CPID): $(booted "$CPID" || true)"

FAILED=0
PASSED=0
pass() { echo "PASS: $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $*"; FAILED=$((FAILED + 1)); }
# check "description" command...: PASS if the command succeeds.
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
# Waits up to 20 s for a shell condition inside the container.
await() { local i; for i in $(seq 100); do csh "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
journal_count() { csh "journalctl -u app.service -o cat --no-pager | grep -c '$1'" || true; }

# 1. install
step1() {
    c dpkg -i /root/app-e2e-v1.deb >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log"; return 1; }
    [ "$(c systemctl is-enabled app.socket)" = enabled ] || return 1
    [ "$(c systemctl is-active app.socket)" = active ] || return 1
    [ "$(c systemctl is-active app.service || true)" = inactive ] || return 1
    [ "$(c stat -c '%A %U %G' /run/app.sock)" = "srw-rw---- root app" ] || return 1
}
check "1. dpkg -i: app.socket enabled and active, app.service not running, /run/app.sock srw-rw---- root app" step1

# 2. socket activation and the journal
step2() {
    csh 'echo hello-e2e | socat - UNIX-CONNECT:/run/app.sock' || return 1
    await "journalctl -u app.service -o cat | grep -qx hello-e2e" || return 1
    local json main
    json=$(csh "journalctl -u app.service -o json MESSAGE=hello-e2e")
    echo "$json" | grep -q '"CLIENT_PID":"[0-9]' || return 1
    echo "$json" | grep -q '"CLIENT_UID":"0"' || return 1
    echo "$json" | grep -q '"CLIENT_GID":"0"' || return 1
    main=$(c systemctl show -p MainPID --value app.service)
    [ "$main" != 0 ] || return 1
    # The daemon unsets LISTEN_*, but /proc/PID/environ keeps what it was started with.
    c cat "/proc/$main/environ" | tr '\0' '\n' | grep -qx "LISTEN_PID=$main"
}
check "2. the first line starts app.service (LISTEN_PID = its pid) and is in journalctl -u app.service with CLIENT_*" step2

# 3. group app may write; others may not
step3() {
    c useradd -m -G app alice && c useradd -m bob || return 1
    local alice_uid
    alice_uid=$(c id -u alice)
    csh "runuser -u alice -- sh -c 'echo from-alice | socat - UNIX-CONNECT:/run/app.sock'" || return 1
    await "journalctl -u app.service -o json MESSAGE=from-alice | grep -q '\"CLIENT_UID\":\"$alice_uid\"'" || return 1
    local err
    err=$(csh "runuser -u bob -- sh -c 'echo from-bob | socat - UNIX-CONNECT:/run/app.sock'" 2>&1) && return 1
    echo "$err" | grep -q "Permission denied" || return 1
    sleep 1
    [ "$(journal_count from-bob)" = 0 ]
}
check "3. a member of group app is logged with its CLIENT_UID; a non-member gets Permission denied and logs nothing" step3

# 3b. app send, as a user, finds the system socket by itself
step3b() {
    local alice_uid err
    alice_uid=$(c id -u alice)
    csh "runuser -u alice -- env XDG_RUNTIME_DIR=/run/user/$alice_uid app send from-alice-app-send" || return 1
    await "journalctl -u app.service -o json MESSAGE=from-alice-app-send | grep -q '\"CLIENT_UID\":\"$alice_uid\"'" || return 1
    err=$(csh "runuser -u bob -- app send from-bob-app-send" 2>&1) && return 1
    echo "   bob: $err"
    echo "$err" | grep -q "/run/app.sock: Permission denied"
}
check "3b. 'app send' with no --socket: alice (group app) reaches /run/app.sock; bob's error names the path tried" step3b

# 3c. the datagram socket (ListenDatagram=/run/app.dgram, PassCredentials=yes)
step3c() {
    [ "$(c stat -c '%A %U %G' /run/app.dgram)" = "srw-rw---- root app" ] || return 1
    local alice_uid
    alice_uid=$(c id -u alice)
    csh "runuser -u alice -- logger -d --socket-errors=on -u /run/app.dgram -t e2edgram -p local0.warning dgram-e2e" || return 1
    await "journalctl -u app.service -o json MESSAGE=dgram-e2e | grep -q '\"CLIENT_UID\":\"$alice_uid\"'" || return 1
    local json
    json=$(csh "journalctl -u app.service -o json MESSAGE=dgram-e2e")
    echo "$json" | grep -q '"SYSLOG_IDENTIFIER":"e2edgram"' || return 1
    echo "$json" | grep -q '"SYSLOG_FACILITY":"16"' || return 1
    echo "$json" | grep -q '"SOCKET":"/run/app.dgram"'
}
check "3c. logger -u /run/app.dgram (one datagram, as alice) is under journalctl -u app.service with CLIENT_UID, tag, facility, SOCKET" step3c

# 4. 20 × 1000 lines with app's limiter off; a flood cut at the shipped burst
step4() {
    csh "sed -i 's/^# rate_limit_burst = 10000\$/rate_limit_burst = 0/' /etc/app/app.toml" || return 1
    c grep -qx 'rate_limit_burst = 0' /etc/app/app.toml || return 1
    c systemctl reload app.service || return 1
    csh 'for i in $(seq 20); do (for j in $(seq 1000); do echo "flood c$i l$j"; done | socat - UNIX-CONNECT:/run/app.sock) & done; wait' || return 1
    await "[ \$(journalctl -u app.service -o cat | grep -c '^flood ') -ge 20000 ]" || true
    local n unique
    n=$(journal_count '^flood ')
    unique=$(csh "journalctl -u app.service -o cat | grep '^flood ' | sort -u | wc -l")
    echo "   20 clients x 1000 lines: $n in the journal, $unique distinct"
    [ "$n" = 20000 ] && [ "$unique" = 20000 ]
}
check "4a. with limits.rate_limit_burst = 0: 20 concurrent clients x 1000 lines = 20000 entries, each once (journald burst 2500)" step4

step4b() {
    # Back to the shipped defaults (10000 per 30 s per uid), and a uid that has sent nothing yet.
    csh "sed -i 's/^rate_limit_burst = 0\$/# rate_limit_burst = 10000/' /etc/app/app.toml" || return 1
    c systemctl reload app.service || return 1
    c useradd -m -G app carol || return 1
    local carol_uid
    carol_uid=$(c id -u carol)
    sleep 1
    # The 10000th line spends the budget: what that read held beyond it is dropped and counted,
    # and the connection is not read again until the window ends (socat's writes block), so the
    # rest is logged in the next window. socat therefore takes about 30 s.
    csh "runuser -u carol -- sh -c 'for j in \$(seq 12000); do echo \"burst l\$j\"; done | socat - UNIX-CONNECT:/run/app.sock'" || return 1
    # The report comes when the first window ends.
    local report i dropped=0
    for i in $(seq 45); do
        report=$(csh "journalctl -u app.service -o cat | grep -x 'suppressed [0-9]* messages from uid $carol_uid'" || true)
        [ -n "$report" ] && break
        sleep 1
    done
    [ -n "$report" ] && dropped=$(echo "$report" | awk '{ s += $2 } END { print s }')
    await "[ \$(journalctl -u app.service -o cat | grep -c '^burst ') -ge $((12000 - dropped)) ]" || true
    # Entries of the first window: within 25 s of the first one (the next window opens at 30 s).
    local n first_window
    n=$(journal_count '^burst ')
    first_window=$(csh "journalctl -u app.service -o short-unix --no-pager | grep ': burst l'" |
        awk 'NR == 1 { t0 = $1 } $1 < t0 + 25 { n++ } END { print n + 0 }')
    echo "   one uid, 12000 lines: $first_window logged in the first window, $n in all, $dropped dropped and reported${report:+ ($report)}"
    # A read that ended exactly at the 10000th line drops nothing, and then there is no report.
    [ "$first_window" = 10000 ] && [ $((n + dropped)) = 12000 ] && { [ -n "$report" ] || [ "$n" = 12000 ]; }
}
check "4b. with the shipped defaults, a flood of 12000 from one uid: 10000 in the first window, the rest after it, and 'suppressed N messages from uid U' for what the spending read dropped (logged + N = 12000)" step4b

# 5. reload, status, watchdog
step5() {
    csh "sed -i 's/^# identifier = \"app\"\$/identifier = \"reloaded\"/' /etc/app/app.toml" || return 1
    c grep -qx 'identifier = "reloaded"' /etc/app/app.toml || return 1
    c systemctl reload app.service || return 1
    csh 'echo after-reload | socat - UNIX-CONNECT:/run/app.sock' || return 1
    await "journalctl -u app.service -o json MESSAGE=after-reload | grep -q '\"SYSLOG_IDENTIFIER\":\"reloaded\"'" || return 1
    c systemctl status app.service --no-pager | grep -qE 'Status: "[0-9]+ clients?, [0-9]+ messages, [0-9]+ suppressed"' || return 1
    [ "$(c systemctl show -p WatchdogUSec --value app.service)" = 30s ] || return 1
    # Up for longer than the watchdog interval, never restarted.
    local since now
    since=$(c systemctl show -p ActiveEnterTimestampMonotonic --value app.service)
    now=$(csh 'cut -d" " -f1 /proc/uptime')
    awk -v s="$since" -v n="$now" 'BEGIN { exit !((n * 1000000 - s) > 30000000) }' || return 1
    [ "$(c systemctl show -p NRestarts --value app.service)" = 0 ]
}
check "5. systemctl reload applies app.toml; status shows the STATUS line; watchdog armed (30s) and no restart after > 30 s" step5

# 5b. `systemctl reload` returns once the new settings are in force (ExecReload=app reload), and
# fails when they are rejected.
step5b() {
    local i
    for i in 1 2 3; do
        csh "sed -i 's/^identifier = .*\$/identifier = \"again$i\"/' /etc/app/app.toml" || return 1
        c systemctl reload app.service || return 1
        csh "echo right-after-reload-$i | socat - UNIX-CONNECT:/run/app.sock" || return 1
        await "journalctl -u app.service -o json MESSAGE=right-after-reload-$i | grep -q '\"SYSLOG_IDENTIFIER\":\"again$i\"'" || return 1
    done
    csh "cp /etc/app/app.toml /root/app.toml.good && printf '[limits\n' >> /etc/app/app.toml" || return 1
    c systemctl reload app.service && return 1
    csh "cp /root/app.toml.good /etc/app/app.toml" || return 1
    c systemctl reload app.service || return 1
    [ "$(c systemctl is-active app.service)" = active ]
}
check "5b. systemctl reload then an immediate send sees the new journal.identifier (3 times); a rejected config fails the reload" step5b

# 6. stop while streaming, start again, kill -9
step6() {
    csh '(for j in $(seq 3000); do echo "stream l$j"; done; sleep 3) | socat - UNIX-CONNECT:/run/app.sock' &
    local client=$!
    sleep 1
    c systemctl stop app.service || return 1
    wait "$client" || true
    [ "$(c systemctl show -p Result --value app.service)" = success ] || return 1
    local n
    n=$(journal_count '^stream ')
    echo "   streamed 3000 lines, stopped mid-connection: $n in the journal"
    [ "$n" = 3000 ] || return 1
    csh 'echo restarted | socat - UNIX-CONNECT:/run/app.sock' || return 1
    await "journalctl -u app.service -o cat | grep -qx restarted" || return 1
    [ "$(c systemctl is-active app.service)" = active ] || return 1
    local main
    main=$(c systemctl show -p MainPID --value app.service)
    before=$main
    csh "kill -9 $main" || return 1  # the shell's kill: no procps here
    sleep 1
    csh 'echo after-kill | socat - UNIX-CONNECT:/run/app.sock' || return 1
    await "journalctl -u app.service -o cat | grep -qx after-kill"
}
check "6. stop while a client streams: nothing lost, Result=success; the next connection starts it; after kill -9 it serves again" step6

# 7. upgrade, remove, purge
step7() {
    local socket_since main_before main_after
    socket_since=$(c systemctl show -p ActiveEnterTimestampMonotonic --value app.socket)
    main_before=$(c systemctl show -p MainPID --value app.service)
    c dpkg -i /root/app-e2e-v2.deb >"$WORK/dpkg2.log" 2>&1 || { cat "$WORK/dpkg2.log"; return 1; }
    [ "$(c dpkg-query -W -f '${Version}' app)" = 0.1.0-2 ] || return 1
    [ "$(c systemctl is-active app.socket)" = active ] || return 1
    [ "$(c systemctl show -p ActiveEnterTimestampMonotonic --value app.socket)" = "$socket_since" ] || return 1
    csh 'echo after-upgrade | socat - UNIX-CONNECT:/run/app.sock' || return 1
    await "journalctl -u app.service -o cat | grep -qx after-upgrade" || return 1
    main_after=$(c systemctl show -p MainPID --value app.service)
    [ "$main_after" != "$main_before" ] || return 1
    echo "   upgraded: app.socket never restarted; app.service pid $main_before -> $main_after"
}
check "7a. upgrade to 0.1.0-2: app.socket stays active throughout (not restarted) and a new process serves" step7

# 8. hardening and health (before removal)
step8() {
    local exposure
    exposure=$(c systemd-analyze security app.service --no-pager | awk '/Overall exposure level/ { print $(NF-2) }')
    echo "   systemd-analyze security app.service: exposure ${exposure:-(none)}"
    [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e + 0 <= 1.0) }' || return 1
    local failed
    failed=$(c systemctl list-units --failed --no-legend --plain | wc -l)
    [ "$failed" = 0 ] || { c systemctl list-units --failed --no-pager; return 1; }
}
check "8. systemd-analyze security app.service <= 1.0, and no failed unit in the container" step8

# 9. which unit a client is (issue 16): the default unit (User=app) and the root drop-in
#
# The escalation probe: root without capabilities is still uid 0 to PID 1's private socket, the
# system bus and polkit (one `systemd-run` would start a unit with every capability). A unit
# built from app.service and the drop-in runs a shell that tries them: each must fail, and it
# must still reach what app needs.
step9_probe() {
    cat >"$WORK/merged/usr/local/bin/app-probe" <<'PROBE'
#!/bin/sh
reached() { echo "PROBE-REACHED $1"; }
id; grep '^Cap' /proc/self/status
systemd-run --wait --unit=escalated sh -c 'id > /etc/pwned' && reached systemd-run
systemctl --no-block start escalated2.service && reached systemctl
busctl --system list >/dev/null && reached busctl
command -v dbus-send >/dev/null && dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.ListNames >/dev/null && reached dbus-send
for s in /run/systemd/private /var/run/systemd/private /run/dbus/system_bus_socket /run/systemd/userdb /run/systemd/io.system.ManagedOOM /run/udev/control /run/user /run/systemd/journal/stdout \
    /run/log /var/log /var/lib /var/run/dbus; do
    [ -e "$s" ] && reached "$s"
done
# Root processes with capabilities: the kernel refuses their environ/mem (ptrace rules: the
# target's capabilities must be a subset of ours).
cat /proc/1/environ >/dev/null && reached /proc/1/environ
# What app needs, still there:
[ -S /run/systemd/journal/socket ] && echo PROBE-NEEDS journal
[ -S /run/systemd/notify ] && echo PROBE-NEEDS notify  # Type=oneshot: no $NOTIFY_SOCKET here
[ -d "$RUNTIME_DIRECTORY" ] && touch "$RUNTIME_DIRECTORY/x" && echo PROBE-NEEDS runtime
[ -r /etc/app/app.toml ] && echo PROBE-NEEDS config
[ -r /proc/1/comm ] && echo PROBE-NEEDS proc
echo PROBE-DONE
PROBE
    chmod 755 "$WORK/merged/usr/local/bin/app-probe"
    # Its own runtime directory: stopping the probe must not remove app's /run/app.
    sed -e 's|^ExecStart=.*|ExecStart=/usr/local/bin/app-probe|' -e 's|^Type=notify|Type=oneshot|' \
        -e 's|^RuntimeDirectory=app$|RuntimeDirectory=app-probe|' -e '/^WatchdogSec/d' \
        -e '/^After=app.socket/d' -e '/^Requires=/d' \
        "$WORK/merged/lib/systemd/system/app.service" >"$WORK/merged/etc/systemd/system/probe.service"
    grep -q '^ExecStart=/usr/local/bin/app-probe$' "$WORK/merged/etc/systemd/system/probe.service" || return 1
    mkdir -p "$WORK/merged/etc/systemd/system/probe.service.d"
    sed 's|/run/app$|/run/app-probe|' "$WORK/merged/etc/systemd/system/app.service.d/attribute-to-units.conf" \
        >"$WORK/merged/etc/systemd/system/probe.service.d/attribute-to-units.conf"
    c systemctl daemon-reload || return 1
    c systemctl start probe.service
    local out
    out=$(csh "journalctl -u probe.service -o cat --no-pager")
    echo "$out" | sed 's/^/   probe: /'
    echo "$out" | grep -qx PROBE-DONE || return 1
    ! echo "$out" | grep -q PROBE-REACHED || return 1
    [ "$(echo "$out" | grep -c '^PROBE-NEEDS ')" = 5 ] || return 1
    ! c test -e /etc/pwned || return 1
    [ "$(c systemctl show -p LoadState --value escalated.service)" = not-found ] || return 1
    # It ran as root without capabilities, as app does under the drop-in.
    echo "$out" | grep -q '^uid=0(root)' || return 1
    echo "$out" | grep -qx 'CapEff:[[:space:]]*0000000000000000' || return 1
    c systemctl stop probe.service 2>/dev/null || true
}
step9() {
    c useradd -m -G app dave || return 1
    local dave_uid json
    dave_uid=$(c id -u dave)
    csh "systemd-run --unit=demo --wait -q -p User=dave sh -c 'echo from-demo | socat - UNIX-CONNECT:/run/app.sock'" || return 1
    await "journalctl -u app.service -o json MESSAGE=from-demo | grep -q '\"CLIENT_UNIT\":\"demo.service\"'" || return 1
    json=$(csh "journalctl -u app.service -o json MESSAGE=from-demo")
    echo "$json" | grep -q "\"CLIENT_UID\":\"$dave_uid\"" || return 1
    echo "$json" | grep -q '"CLIENT_COMM":"socat"' || return 1
    echo "$json" | grep -q '"CLIENT_SLICE":"system.slice"' || return 1
    # As user app, no OBJECT_*: journalctl -u demo.service would not honour them anyway.
    ! echo "$json" | grep -q '"OBJECT_' || return 1
    # The drop-in: root without capabilities; then journalctl -u demo.service lists the line.
    c mkdir -p /etc/systemd/system/app.service.d || return 1
    c cp /usr/share/doc/app/examples/attribute-to-units.conf /etc/systemd/system/app.service.d/ || return 1
    c systemctl daemon-reload && c systemctl restart app.service || return 1
    local main
    main=$(c systemctl show -p MainPID --value app.service)
    c grep -q '^CapEff:[[:space:]]*0000000000000000$' "/proc/$main/status" || return 1
    c grep -q '^Uid:[[:space:]]*0[[:space:]]' "/proc/$main/status" || return 1
    csh "systemd-run --unit=demo --wait -q -p User=dave sh -c 'echo from-demo-as-root | socat - UNIX-CONNECT:/run/app.sock'" || return 1
    await "journalctl -u demo.service -o cat | grep -qx from-demo-as-root" || return 1
    csh "journalctl -u app.service -o cat | grep -qx from-demo-as-root" || return 1
    json=$(csh "journalctl -u app.service -o json MESSAGE=from-demo-as-root")
    # Each once (journalctl shows a repeated field as an array), and no OBJECT_PID: journald
    # added no OBJECT_* of its own.
    echo "$json" | grep -q '"OBJECT_SYSTEMD_UNIT":"demo.service"' || return 1
    echo "$json" | grep -q '"OBJECT_COMM":"socat"' || return 1
    echo "$json" | grep -q '"CLIENT_UNIT":"demo.service"' || return 1
    ! echo "$json" | grep -q '"OBJECT_PID"' || return 1
    step9_probe || return 1
    # Reload under the drop-in (its ExecReload runs outside the sandbox: kill is filtered in it).
    csh "cp /etc/app/app.toml /root/app.toml.pre9 && sed -i 's/^identifier = .*\$/identifier = \"dropin\"/' /etc/app/app.toml" || return 1
    c systemctl reload app.service || return 1
    csh "echo after-dropin-reload | socat - UNIX-CONNECT:/run/app.sock" || return 1
    await "journalctl -u app.service -o json MESSAGE=after-dropin-reload | grep -q '\"SYSLOG_IDENTIFIER\":\"dropin\"'" || return 1
    csh "cp /root/app.toml.pre9 /etc/app/app.toml" && c systemctl reload app.service || return 1
    [ "$(c systemctl show -p MainPID --value app.service)" = "$main" ] || return 1
    local exposure
    exposure=$(c systemd-analyze security app.service --no-pager | awk '/Overall exposure level/ { print $(NF-2) }')
    echo "   systemd-analyze security app.service with attribute-to-units.conf: exposure ${exposure:-(none)}"
    c rm /etc/systemd/system/app.service.d/attribute-to-units.conf
    c systemctl daemon-reload && c systemctl restart app.service
}
check "9. CLIENT_UNIT=demo.service for a systemd-run client of another user; with attribute-to-units.conf (root, no capabilities) journalctl -u demo.service lists its line, and -u app.service still does; systemctl reload works under it; a shell under it reaches neither PID 1 (systemd-run) nor the system bus" step9

# 10. connections carried across restarts, an upgrade and a crash (issue 18): 20 clients, each a
# transient unit streaming numbered lines through one socat connection for the whole step.
carry_clients_active() {
    local k n=0
    for k in "$@"; do
        [ "$(c systemctl is-active "carry$k.service" || true)" = active ] && n=$((n + 1))
    done
    echo "$n"
}
carry_start() {
    # IgnoreSIGPIPE=no: when socat ends (the connection closed under it), the writer dies of
    # SIGPIPE at its next line, so the unit is active exactly as long as its connection lives.
    c systemd-run --unit="carry$1" -q -p IgnoreSIGPIPE=no sh -c \
        "i=0; while :; do i=\$((i + 1)); echo \"carry c$1 l\$i\"; sleep 0.1; done | socat -u - UNIX-CONNECT:/run/app.sock"
}
# Every entry of a carryK unit must be "carry cK lN": N from 1 up, each once, in order, all with
# one CLIENT_CONNECTION. Prints the figures; fails on a duplicate, a fragment, disorder, a second
# connection number, or a gap.
carry_verify() {
    csh "journalctl -u app.service -o json --no-pager --output-fields=MESSAGE,CLIENT_UNIT,CLIENT_CONNECTION" |
        python3 -c '
import json, re, sys
clients = {}
for raw in sys.stdin:
    e = json.loads(raw)
    unit = e.get("CLIENT_UNIT") or ""
    m = re.fullmatch(r"carry(\d+)\.service", unit if isinstance(unit, str) else "")
    if not m:
        continue
    c = clients.setdefault(m.group(1), {"seen": [], "bad": 0, "conn": set()})
    c["conn"].add(str(e.get("CLIENT_CONNECTION")))
    msg = e.get("MESSAGE")
    mm = re.fullmatch(r"carry c(\d+) l(\d+)", msg) if isinstance(msg, str) else None
    if not mm or mm.group(1) != m.group(1):
        c["bad"] += 1
        continue
    c["seen"].append(int(mm.group(2)))
lines = dup = bad = disorder = gaps = conns = 0
for c in clients.values():
    s = c["seen"]
    lines += len(s); bad += c["bad"]; dup += len(s) - len(set(s))
    disorder += sum(1 for a, b in zip(s, s[1:]) if b <= a)
    gaps += (max(s) - len(set(s))) if s else 0
    conns += len(c["conn"]) - 1
print(f"   {len(clients)} clients: {lines} lines, {dup} duplicated, {bad} broken, {disorder} out of order, {gaps} missing, {conns} extra CLIENT_CONNECTION values")
sys.exit(0 if len(clients) == int(sys.argv[1]) and lines > 0 and dup == bad == disorder == gaps == conns == 0 else 1)
' "$1"
}
# carried_over N: a new app.service process (not $before) that says it took N connections over.
carried_over() {
    local pid
    pid=$(c systemctl show -p MainPID --value app.service)
    [ "$pid" != "$before" ] && [ "$pid" != 0 ] || return 1
    await "journalctl _PID=$pid -o cat | grep -qx '$1 connections carried over from the previous instance'"
}
step10() {
    [ "$(c systemctl show -p FileDescriptorStoreMax --value app.service)" -ge 4096 ] || return 1
    local k clients=() main before
    for k in $(seq 20); do carry_start "$k" || return 1; clients+=("$k"); done
    sleep 2
    for k in 1 2 3; do
        before=$(c systemctl show -p MainPID --value app.service)
        c systemctl restart app.service || return 1
        sleep 1
        carried_over 20 || return 1
        echo "   restart $k: $(c systemctl show -p StatusText --value app.service)"
    done
    before=$(c systemctl show -p MainPID --value app.service)
    c dpkg -i /root/app-e2e-v3.deb >"$WORK/dpkg3.log" 2>&1 || { cat "$WORK/dpkg3.log"; return 1; }
    [ "$(c dpkg-query -W -f '${Version}' app)" = 0.1.0-3 ] || return 1
    sleep 1
    carried_over 20 || return 1
    echo "   upgraded to 0.1.0-3: $(c systemctl show -p StatusText --value app.service)"
    # A client that was never handed over: it is in the store only because it lives.
    carry_start 21 || return 1
    clients+=(21)
    sleep 3
    echo "   before kill -9: $(carry_clients_active "${clients[@]}") of ${#clients[@]} clients connected"
    # The writers paused and everything they wrote read and logged, kill -9 should lose nothing.
    for k in "${clients[@]}"; do c systemctl kill -s STOP "carry$k.service" || return 1; done
    sleep 1
    main=$(c systemctl show -p MainPID --value app.service)
    before=$main
    csh "kill -9 $main" || return 1
    await "[ \"\$(systemctl show -p MainPID --value app.service)\" != $main ] && [ \"\$(systemctl show -p MainPID --value app.service)\" != 0 ]" || return 1
    for k in "${clients[@]}"; do c systemctl kill -s CONT "carry$k.service" || return 1; done
    carried_over 21 || return 1
    echo "   after kill -9 (pid $main): $(c systemctl show -p StatusText --value app.service), NRestarts=$(c systemctl show -p NRestarts --value app.service)"
    sleep 3
    local alive
    alive=$(carry_clients_active "${clients[@]}")
    echo "   at the end: $alive of ${#clients[@]} clients still connected and writing"
    [ "$alive" = "${#clients[@]}" ] || return 1
    c systemctl stop app.service || return 1
    await "[ \$(for k in ${clients[*]}; do systemctl is-active carry\$k.service; done | grep -cx active) = 0 ]" || {
        echo "   after systemctl stop app.service: $(carry_clients_active "${clients[@]}") clients still connected"
        return 1
    }
    carry_verify "${#clients[@]}"
}
check "10. 20 streaming socat clients across 3 restarts, an upgrade and a kill -9 (plus one that connected after the upgrade): none disconnected, every line once, whole, in order, one CLIENT_CONNECTION each; systemctl stop app.service then closes them" step10

step7b() {
    c apt-get remove -y app >/dev/null 2>&1 || return 1
    [ "$(c systemctl is-active app.socket || true)" = inactive ] || return 1
    [ "$(c systemctl is-active app.service || true)" = inactive ] || return 1
    c apt-get purge -y app >/dev/null 2>&1 || return 1
    ! c test -e /etc/app || return 1
    # Purge removes only the package's own files: an administrator's file stays.
    c dpkg -i /root/app-e2e-v2.deb >/dev/null 2>&1 || return 1
    c sh -c 'echo mine > /etc/app/local.notes' || return 1
    c apt-get purge -y app >/dev/null 2>&1 || return 1
    c test -e /etc/app/local.notes || return 1
    ! c test -e /etc/app/app.toml || return 1
    c rm -rf /etc/app
}
check "7b. apt remove stops both units; apt purge removes only the package's own files" step7b

if [ "$FAILED" != 0 ]; then
    echo "== diagnostics"
    c systemctl status app.socket app.service --no-pager -l 2>&1 | tail -n 40 || true
    c journalctl -b --no-pager -n 60 -u app.service -u app.socket 2>&1 || true
fi
echo "e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
