# boardlink's developer recipes. `just` is optional: every recipe only wraps
# go commands, and each can be typed by hand (see the recipe's body).
#
#   just build    binaries into bin/
#   just test     the README's test command
#   just race     the concurrency packages under the race detector
#   just ota-kills  10,000 power cuts during OTA prepares (OTA_KILLS to change)
#   just e2e      every test, the long stress tests too, with skips that need a missing tool turned into failures
#   just bench    every benchmark in the module (BENCH, BENCHTIME to narrow or lengthen), then bench/*/ programs
#   just bench-peers  boardlink against ssh, scp and a local fork/exec in one run (ARGS, e.g. -smoke)
#   just fuzz     every fuzz target, FUZZTIME each (default 30s)
#   just demo     the demo
#   just lint     gofmt and go vet
#   just cross    static boardlinkd for the four board architectures, into dist/
#   just package  the .deb packages (boardlinkd, boardlink) for the four architectures, into dist/

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Build boardlink and boardlinkd into bin/.
build:
    go build -o bin/ ./cmd/...

# Run the tests (the README's test command).
test:
    go test ./...

# Run the concurrency-heavy packages under the race detector (needs cgo: gcc).
race:
    go test -race ./transport/... ./agent/... ./board/... ./dispatcher/... ./internal/... ./proto/...

# Run every test, uncached, with BOARDLINK_E2E=1: the long stress tests run, and a test which would skip for a missing tool fails.
e2e:
    BOARDLINK_E2E=1 go test -count=1 -timeout 30m ./...

# boardlink against ssh, scp and a local fork/exec in one run: one table of ratios (docs/benchmarks.md); ARGS e.g. -smoke.
bench-peers *ARGS:
    go run ./bench/peers {{ARGS}}

# Run every benchmark in the module; BENCH=regexp and BENCHTIME=5s|100x narrow or lengthen the run.
bench:
    #!/usr/bin/env bash
    set -euo pipefail
    # Only packages whose tests hold a benchmark, so that a package without
    # one (or a folder such as bench/ that has none yet) costs nothing.
    pkgs=()
    while read -r dir pkg; do
        if grep -qs '^func Benchmark' "$dir"/*_test.go; then
            pkgs+=("$pkg")
        fi
    done < <(go list -e -f '{{{{.Dir}} {{{{.ImportPath}}' ./...)
    if [ ${#pkgs[@]} -eq 0 ]; then
        echo "bench: no benchmarks in this module"
        exit 0
    fi
    echo "bench: ${pkgs[*]}"
    go test -run '^$' -bench "${BENCH:-.}" -benchtime "${BENCHTIME:-1s}" -benchmem "${pkgs[@]}"
    # Programs under bench/ measure against an outside peer (scp, say).
    for dir in bench/*/; do
        [ -f "$dir/main.go" ] || continue
        echo "==> go run ./$dir"
        go run "./$dir"
    done

# Run every fuzz target in turn, each for FUZZTIME (default 30s).
fuzz:
    #!/usr/bin/env bash
    set -euo pipefail
    fuzztime="${FUZZTIME:-30s}"
    ran=0
    while read -r dir pkg; do
        # Skip packages without a fuzz target before compiling their tests.
        grep -qs '^func Fuzz' "$dir"/*_test.go || continue
        # go test -fuzz takes one target in one package at a time. A package
        # whose tests do not compile fails here rather than being skipped.
        list=$(go test -list 'Fuzz.*' "$pkg")
        for target in $(grep '^Fuzz' <<<"$list" || true); do
            echo "==> fuzz $pkg $target for $fuzztime"
            go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
            ran=$((ran + 1))
        done
    done < <(go list -e -f '{{{{.Dir}} {{{{.ImportPath}}' ./...)
    echo "fuzz: $ran target(s) ran for $fuzztime each"

# Kill the agent at OTA_KILLS (default 10000) random points of an update's prepare, checking the board after each; SHARDS (default 4) boards in parallel.
ota-kills:
    #!/usr/bin/env bash
    set -euo pipefail
    total=${OTA_KILLS:-10000} shards=${SHARDS:-4}
    go test -c -o /tmp/boardlink-ota-kills.test ./cmd/boardlink
    pids=()
    for i in $(seq "$shards"); do
        (cd cmd/boardlink && OTA_KILLS=$((total / shards)) /tmp/boardlink-ota-kills.test \
            -test.count=1 -test.timeout=0 -test.run '^TestOTAKilledDuringPrepare$' -test.v) > "/tmp/ota-kills-$i.log" 2>&1 &
        pids+=($!)
    done
    failed=0
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then failed=1; echo "shard $((i + 1)) failed: /tmp/ota-kills-$((i + 1)).log"; fi
    done
    grep -h 'cuts during prepare' /tmp/ota-kills-*.log
    exit $failed

# Run the demo.
demo:
    go run ./cmd/boardlink demo

# Check formatting (gofmt) and run go vet.
lint:
    #!/usr/bin/env bash
    set -euo pipefail
    unformatted=$(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*' -not -path './vendor/*' -print0 | xargs -0 gofmt -l)
    if [ -n "$unformatted" ]; then
        echo "gofmt: these files are not formatted (run gofmt -w on them):"
        echo "$unformatted"
        exit 1
    fi
    go vet ./...

# Build a static boardlinkd (CGO_ENABLED=0) for linux amd64, arm64, arm v7 and riscv64 into dist/, and check each is static.
cross:
    #!/usr/bin/env bash
    set -euo pipefail
    mkdir -p dist
    have_readelf=1
    if ! command -v readelf >/dev/null; then
        have_readelf=0
        echo "cross: readelf not found (Debian package binutils): skipping the ELF interpreter check"
    fi
    for target in amd64 arm64 armv7 riscv64; do
        arch=$target goarm=
        if [ "$target" = armv7 ]; then arch=arm goarm=7; fi
        out=dist/boardlinkd-linux-$target
        echo "==> $out"
        CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOARM=$goarm go build -trimpath -o "$out" ./cmd/boardlinkd
        # The build info records how the binary was built.
        if ! go version -m "$out" | grep -q 'CGO_ENABLED=0'; then
            echo "cross: $out was not built with CGO_ENABLED=0" >&2
            exit 1
        fi
        # A static binary has no program interpreter and needs no shared library.
        if [ $have_readelf = 1 ]; then
            if readelf -lW "$out" | grep -q 'INTERP'; then
                echo "cross: $out asks for a program interpreter: not static" >&2
                exit 1
            fi
            if readelf -dW "$out" 2>/dev/null | grep -q '(NEEDED)'; then
                echo "cross: $out needs shared libraries: not static" >&2
                exit 1
            fi
        fi
        echo "    static, $(du -h "$out" | cut -f1)"
    done

# Build the Debian packages boardlinkd_VERSION_ARCH.deb and boardlink_VERSION_ARCH.deb for amd64, arm64, armhf and riscv64 into dist/ (ARCH=amd64,arm64 to narrow), and print each binary's size.
package:
    go run ./packaging -o dist -arch "${ARCH:-amd64,arm64,armhf,riscv64}"
