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
