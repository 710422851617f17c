#!/usr/bin/env bash
# SeaweedFS's `weed`: the S3-compatible server the tests run (testkit's S3Server), for the
# kernel checkpoints that go to object storage (issue 17). SeaweedFS is Apache-2.0; MinIO and
# Garage, the usual test servers, are AGPL and must not be used here.
#
# Built once from the Go module proxy (no release downloads are needed) and cached as
# ~/.cache/nbplat/bin/weed-VERSION with a `weed` symlink; quiet when it is there. SeaweedFS's
# go.mod has a replace directive, so `go install ...@VERSION` refuses it: a throwaway module
# requires it with the same replace and SeaweedFS's own go.sum (its dependencies at exactly the
# versions it names; `go mod tidy` would also fetch every optional backend, over 1.5 GB more) and
# `go install`s the command from there. Pure Go (CGO_ENABLED=0), -trimpath, stripped. The
# default build tags are already the small build: the optional filer stores (elastic, gocdk,
# rclone, sqlite, tarantool, tikv, ydb, rocksdb, foundationdb) are opt-in tags, and no tag
# leaves out the rest (weed/command/imports.go links them all). The first build took 12 minutes
# on two cores shared with another build (14 CPU-minutes; 1.7 GB of modules, downloaded in about
# a minute, and 1.8 GB of build cache) for a 164 MB binary; set NBP_GO_PARALLEL (default 2) to
# build with fewer.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

# A pseudo-version: SeaweedFS's release tags (3.xx) are not module versions.
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6
bin="$NBP_CACHE/bin"
want="$bin/weed-$SEAWEEDFS_VERSION"

die() {
  echo "seaweedfs: $*" >&2
  exit 1
}

build() {
  command -v go >/dev/null || die "Go is needed to build SeaweedFS (https://go.dev; Debian: golang-go)"
  local src="$NBP_CACHE/seaweedfs"
  mkdir -p "$bin" "$src"
  exec 8>"$src/.build.lock"
  flock 8
  [ -x "$want" ] && return 0
  export GOMODCACHE="$NBP_CACHE/gomod" GOCACHE="$NBP_CACHE/gobuild" GOTOOLCHAIN=local \
    CGO_ENABLED=0 GOFLAGS="-mod=mod -p=${NBP_GO_PARALLEL:-2}" GOWORK=off GOBIN="$src/bin"
  local buildlog="$src/build.log" started=$SECONDS dir
  : >"$buildlog"
  quiet() {
    # A go command, its output in the build log, shown only when it fails.
    "$@" </dev/null >>"$buildlog" 2>&1 || {
      tail -n 40 "$buildlog" >&2
      die "failed: $* (whole log: $buildlog)"
    }
  }
  echo "seaweedfs: building weed $SEAWEEDFS_VERSION (cached after this)"
  cd "$src"
  dir="$(go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" </dev/null |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  [ -f "$dir/go.mod" ] || die "could not download github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION from the Go module proxy"
  {
    echo "module nbplat.local/weedbuild"
    echo
    grep '^go ' "$dir/go.mod"
    echo
    echo "require github.com/seaweedfs/seaweedfs $SEAWEEDFS_VERSION"
    echo
    # SeaweedFS's replaces of one module by another (not of local paths), as in its own build.
    awk '/=>/ && $1 !~ /^\/\// {
      line = $0; sub(/^replace[ \t]+/, "", line); sub(/^[ \t]+/, "", line)
      split(line, side, "=>"); sub(/^[ \t]+/, "", side[2])
      if (side[2] !~ /^[.\/]/) print "replace " line
    }' "$dir/go.mod"
  } >go.mod
  cp "$dir/go.sum" go.sum
  chmod u+w go.sum
  rm -rf "$GOBIN"
  quiet go install -trimpath -ldflags "-s -w" github.com/seaweedfs/seaweedfs/weed
  mv "$GOBIN/weed" "$want"
  echo "seaweedfs: built in $((SECONDS - started))s: $want"
}

[ -x "$want" ] || (build)
ln -sfn "weed-$SEAWEEDFS_VERSION" "$bin/weed"
