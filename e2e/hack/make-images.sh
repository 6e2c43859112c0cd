#!/usr/bin/env bash
# Makes the local container image of the e2e worker (nautilus_e2e::worker) without any download:
# a docker-archive tarball (the format `docker save` writes and `ctr images import` reads) whose
# only layer is Debian's statically linked /bin/busybox (package busybox-static) with a symlink
# per applet. One image serves as both
#   - the pause (sandbox) image: its default command sleeps until SIGTERM or SIGINT, then exits 0
#     (PID 1 of a PID namespace ignores signals it has no handler for, so it traps them), and
#   - the workload image: any busybox applet, e.g. `sh -c 'echo hello; sleep 3600'`.
#
# Usage: make-images.sh OUT.tar [TAG [STATIC_BINARY...]]
#   TAG defaults to nautilus.local/busybox:1.35. Each STATIC_BINARY (a statically linked program
#   of this machine, e.g. kubectl, for a pod that talks to the API server over TLS) is copied to
#   /bin in the image.
# Import: ctr --address SOCKET -n k8s.io images import OUT.tar
#
# The output is reproducible: the same busybox binary gives the same image digest.
set -euo pipefail

out="${1:?usage: make-images.sh OUT.tar [TAG]}"
tag="${2:-nautilus.local/busybox:1.35}"
shift $(($# < 2 ? $# : 2))
busybox="${BUSYBOX:-/bin/busybox}"

if ! "$busybox" --list >/dev/null 2>&1; then
  echo "make-images.sh: $busybox is not a busybox binary (install busybox-static)" >&2
  exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
  echo "make-images.sh: $busybox is dynamically linked; the image has no libc (install busybox-static)" >&2
  exit 1
fi
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch="$(uname -m)" ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
for binary in "$@"; do
  if ldd "$binary" >/dev/null 2>&1; then
    echo "make-images.sh: $binary is dynamically linked; the image has no libc" >&2
    exit 1
  fi
  cp -L "$binary" "$root/bin/$(basename "$binary")"
  chmod 0755 "$root/bin/$(basename "$binary")"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"

# A deterministic layer: sorted names, fixed times and owners.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$root" -cf "$work/layer.tar" .
layer_sha="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"

mkdir -p "$work/image/$layer_sha"
mv "$work/layer.tar" "$work/image/$layer_sha/layer.tar"

# The pause behaviour as the default command: exit 0 on TERM/INT, otherwise sleep forever.
pause='trap "exit 0" TERM INT; while :; do sleep 2147483647 & wait $!; done'
config="{\"architecture\":\"$arch\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\
\"config\":{\"Env\":[\"PATH=/bin\"],\"Cmd\":[\"/bin/sh\",\"-c\",\"$(printf '%s' "$pause" | sed 's/"/\\"/g')\"],\"WorkingDir\":\"/\"},\
\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer_sha\"]},\
\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"e2e/hack/make-images.sh (busybox-static)\"}]}"
config_sha="$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)"
printf '%s' "$config" >"$work/image/$config_sha.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
  "$config_sha" "$tag" "$layer_sha" >"$work/image/manifest.json"
repo="${tag%:*}"
printf '{"%s":{"%s":"%s"}}' "$repo" "${tag##*:}" "$config_sha" >"$work/image/repositories"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/image" -cf "$out.partial" .
mv "$out.partial" "$out"
echo "$out: $tag (sha256:$config_sha, $arch)"
