#!/usr/bin/env bash
# A newcomer's first hour, on a fresh machine: README "Quick start" — its commands copied out of
# README.md, not retyped here — in a booted minimal Debian 12 (systemd-nspawn, debootstrap
# minbase plus systemd to boot it; no socat, no compiler, no node) that has nothing of Rust but
# the toolchain: rustup's ~/.rustup bind-mounted read-only, its proxies (cargo, rustc …) copied
# into ~/.cargo/bin. No crate cache: cargo fetches from crates.io, apt-get from Debian, over the
# machine's network (the container shares it). The clone is this checkout's files (tracked and
# untracked, not ignored: no target/). Checks, one PASS/FAIL line each:
#   1. the test command passes on that machine — it installs what it needs, runs the whole suite;
#   2. run a second time, it installs nothing;
#   3. the daemon command runs the daemon, and it takes the socat line.
#
# Needs root, debootstrap and systemd-container; takes a while (a full build and the whole suite
# in the container): about as long as `cargo test` from nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${APP_E2E_CACHE:-/var/cache/app-e2e}
MIRROR=${APP_E2E_MIRROR:-http://deb.debian.org/debian}
ROOTFS=$CACHE/fresh-rootfs
RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_DIR=${CARGO_HOME:-$HOME/.cargo}

if [ "$(id -u)" != 0 ]; then
    echo "tests/e2e/fresh.sh needs root (debootstrap, mounts, systemd-nspawn); CI runs it as root" >&2
    exit 2
fi

if [ -z "${APP_E2E_INNER:-}" ]; then
    [ -x "$CARGO_DIR/bin/rustup" ] && [ -d "$RUSTUP_DIR/toolchains" ] \
        || { echo "FAIL: no rustup toolchain in $RUSTUP_DIR to copy in"; exit 1; }
    . "$ROOT/tests/e2e/lib.sh"
    rootfs "$ROOTFS" systemd,systemd-sysv,dbus
    exec env APP_E2E_INNER=1 timeout 3600 \
        unshare --mount --pid --fork --kill-child --mount-proc --propagation private "$0" "$@"
fi

WORK=$(mktemp -d /tmp/app-fresh.XXXXXX)
NSPAWN=
cleanup() {
    [ -n "$NSPAWN" ] && kill "$NSPAWN" 2>/dev/null && wait "$NSPAWN" 2>/dev/null || true
    umount -l "$WORK/merged" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# README "Quick start": its indented command lines, comments dropped.
quick_start() {
    awk '/^## Quick start/ { on = 1; next } /^## / { on = 0 } on && /^    [^ ]/' "$ROOT/README.md" \
        | sed -e 's/^    //' -e 's/ \{2,\}#.*$//'
}
DAEMON_CMD=$(quick_start | grep -m1 '^cargo run ' || true)
TEST_CMD=$(quick_start | grep -m1 'tests/setup' || true)
CLIENT_CMD=$(quick_start | grep -m1 'socat ' || true)
if [ -z "$DAEMON_CMD" ] || [ -z "$TEST_CMD" ] || [ -z "$CLIENT_CMD" ]; then
    echo "FAIL: README \"Quick start\" has no daemon (cargo run), test (tests/setup) or socat command:"
    quick_start
    exit 1
fi
echo "README quick start: daemon '$DAEMON_CMD', tests '$TEST_CMD', client '$CLIENT_CMD'"

mkdir -p "$WORK/upper" "$WORK/work" "$WORK/merged"
mount -t overlay overlay \
    -o "lowerdir=$ROOTFS,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/merged"
echo fresh >"$WORK/merged/etc/hostname"
# The clone.
mkdir -p "$WORK/merged/root/app"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
    | (cd "$ROOT" && tar --null -T - -cf - 2>/dev/null) | tar -C "$WORK/merged/root/app" -xf -
# Rust's toolchain and nothing else of ~/.cargo: rustup's proxies (the same binary as rustup),
# not what `cargo install` put there, nor the crate cache.
mkdir -p "$WORK/merged/root/.cargo/bin" "$WORK/merged/root/.rustup"
for f in "$CARGO_DIR"/bin/*; do
    cmp -s "$f" "$CARGO_DIR/bin/rustup" && cp "$f" "$WORK/merged/root/.cargo/bin/"
done
echo "toolchain: $(ls "$WORK/merged/root/.cargo/bin" | tr '\n' ' ')+ $RUSTUP_DIR (read-only)"

# The machine's own network settings come along: certificate authorities it added locally (a
# proxy's that re-signs HTTPS, say) are trusted once tests/setup installs ca-certificates.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$WORK/merged/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$WORK/merged/usr/local/share/ca-certificates/"
fi

# /proc/sys/net writable, as on a machine: the tests set max_dgram_qlen in namespaces of theirs.
SYSTEMD_NSPAWN_API_VFS_WRITABLE=network systemd-nspawn -q -D "$WORK/merged" -b \
    --register=no --keep-unit --console=read-only --bind-ro="$RUSTUP_DIR:/root/.rustup" \
    >"$WORK/console.log" 2>&1 </dev/null &
NSPAWN=$!

. "$ROOT/tests/e2e/lib.sh"
container_init fresh "$WORK/console.log"
CPID=$INIT_PID
echo "container booted (pid $CPID): $(booted "$CPID" || true)"

# In the clone, as root, with a login's environment (rustup's PATH as ~/.cargo/env sets it).
in_clone() {
    local limit=$1; shift
    timeout "$limit" nsenter --target "$CPID" --all -- env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
        PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        sh -c "cd /root/app && $1"
}

FAILED=0
PASSED=0
pass() { echo "PASS: $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $*"; FAILED=$((FAILED + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

# Each output line prefixed with the seconds since START (where the time goes: apt-get, systemfd,
# the build, each test binary).
stamp() {
    local line
    while IFS= read -r line; do printf '%5d s  %s\n' $((SECONDS - $1)) "$line"; done
}

step1() {
    local start=$SECONDS rc=0
    { in_clone 3000 "$TEST_CMD" 2>&1 || echo "exit $?"; } | stamp "$start" >"$WORK/setup1.log"
    rc=$(sed -n 's/^ *[0-9]* s  exit \([0-9]*\)$/\1/p' "$WORK/setup1.log" | tail -n 1)
    rc=${rc:-0}
    grep -E '^ *[0-9]+ s  (== |test result:|tests/setup: |  pid |.*Finished |.*Running )' "$WORK/setup1.log" \
        | sed 's/^/   /'
    echo "   '$TEST_CMD' exited $rc after $((SECONDS - start)) s"
    [ "$rc" = 0 ] || { tail -n 60 "$WORK/setup1.log"; return 1; }
}
check "1. on the fresh machine, '$TEST_CMD' installs what the tests need and the whole suite passes" step1

step2() {
    local rc=0
    in_clone 600 "$TEST_CMD --lib" >"$WORK/setup2.log" 2>&1 || rc=$?
    grep -E '^== |^test result:' "$WORK/setup2.log" | sed 's/^/   /'
    [ "$rc" = 0 ] || { tail -n 30 "$WORK/setup2.log"; return 1; }
    ! grep -qE '^== (apt-get|cargo install)' "$WORK/setup2.log"
}
check "2. run again ('$TEST_CMD --lib'), it installs nothing" step2

step3() {
    in_clone 30 "($DAEMON_CMD) >/root/daemon.log 2>&1 </dev/null &" || return 1
    local i
    for i in $(seq 300); do
        in_clone 10 "test -S app.sock" && break
        sleep 1
    done
    in_clone 10 "test -S app.sock" || { in_clone 10 "cat /root/daemon.log"; return 1; }
    in_clone 30 "$CLIENT_CMD" || return 1
    # A journald runs in the booted container: the line is in the journal (journalctl -t app).
    for i in $(seq 50); do
        in_clone 10 "journalctl -t app -o cat --no-pager | grep -qx hi" && break
        sleep 0.2
    done
    echo "   journal: $(in_clone 10 "journalctl -t app -o json --no-pager MESSAGE=hi" \
        | grep -o '"\(MESSAGE\|CLIENT_UID\|PRIORITY\)":"[^"]*"' | tr '\n' ' ')"
    in_clone 10 "journalctl -t app -o cat --no-pager | grep -qx hi"
}
check "3. '$DAEMON_CMD' serves ./app.sock and '$CLIENT_CMD' lands in the journal" step3

echo "fresh e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
