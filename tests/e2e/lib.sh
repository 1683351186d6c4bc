# Shared by the container tests (deb.sh, fleet.sh, fresh.sh): the cached Debian 12 root
# filesystems they boot. Source it; it uses $CACHE and $MIRROR.

# rootfs DIR PACKAGES: debootstraps a minimal Debian 12 (minbase plus the comma-separated
# PACKAGES) into DIR, once: later runs reuse it (each boots a throwaway overlay of it).
rootfs() {
    local dir=$1 include=$2 log=$1.debootstrap.log
    [ -d "$dir" ] && return 0
    echo "== debootstrap a minimal Debian 12 with $include into $dir (cached for later runs)"
    rm -rf "$dir.new"
    mkdir -p "$(dirname "$dir")"
    timeout 900 debootstrap --variant=minbase --include="$include" \
        bookworm "$dir.new" "$MIRROR" >"$log" 2>&1 || { tail -n 30 "$log"; exit 1; }
    mv "$dir.new" "$dir"
}

# container_init NAME CONSOLE_LOG: waits for the PID 1 of the container booted with hostname
# NAME (the first process named systemd whose root holds that hostname and whose mount namespace
# is not ours: PID 1 forks short-lived children that carry its name until they exec) and sets
# INIT_PID to it. Every check runs commands as root through nsenter: this makes
# sure they land in the container, never on the machine running the test. Exits (FAIL, with the
# container's console) if none appears within 10 s.
container_init() {
    local name=$1 console=$2 p
    INIT_PID=
    for _ in $(seq 100); do
        for p in $(pgrep -x systemd | sort -n || true); do
            if [ "$(cat "/proc/$p/root/etc/hostname" 2>/dev/null)" = "$name" ] \
                && [ "$(readlink "/proc/$p/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]; then
                INIT_PID=$p
                break
            fi
        done
        [ -n "$INIT_PID" ] && return 0
        sleep 0.1
    done
    echo "FAIL: container $name did not boot"
    cat "$console"
    exit 1
}

# booted PID: waits for the boot of the container whose PID 1 is PID to finish and prints its
# state (running or degraded); fails after 30 s. `systemctl is-system-running --wait` waits for
# the boot, but fails at once while PID 1 has not yet opened its private bus: ask again until it
# answers.
booted() {
    local state=
    for _ in $(seq 150); do
        state=$(timeout 60 nsenter --target "$1" --all -- systemctl is-system-running --wait 2>/dev/null || true)
        case $state in running | degraded) echo "$state"; return 0 ;; esac
        sleep 0.2
    done
    echo "not booted (${state:-no answer})"
    return 1
}
