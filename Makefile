# One task runner. `make run` and `make test` are the two commands of the README.
SHELL := /bin/bash
ENV := source scripts/env.sh &&
TEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test unit bootstrap fmt lint bench bench-kube

run: bootstrap
	bash scripts/run-local.sh

# The tests also need SeaweedFS, the S3-compatible server of the object storage tests
# (testkit::s3); `make run` does not, so it is built here and not by bootstrap.
test: bootstrap
	bash scripts/seaweedfs.sh
	$(ENV) hadolint Dockerfile.middleman Dockerfile.watchman Dockerfile.gateway
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	bash scripts/check-protocol-types.sh
	$(ENV) python3 scripts/python/jupyter_ws_vectors.py --check
	$(ENV) bash scripts/with-kube-cluster.sh cargo test --workspace $(TEST_ARGS)
	$(ENV) NBP_OPS_BUILD=0 bash scripts/test-ops.sh
	$(ENV) bash scripts/test-deploy.sh
	$(ENV) NBP_WEB_BUILD=0 bash scripts/test-web.sh

# The unit tier: pure logic only (no Python, Redis, kernel or cluster), in seconds: every crate's
# library tests (the reactor's rules, the protocol, the hub's parts, the pool's decisions, loss
# classification, the sandbox's policies and filter, the workspace's path rules). They take about
# a second. It builds exactly what `make test`'s `cargo test --workspace` builds (the same
# packages, so the same features): after `make test`, or after an edit, it is a relink. Selecting
# packages with -p instead unifies features differently and rebuilt middleman and watchman (20 s).
# Only a cold target directory compiles the dependencies first.
unit:
	cargo test --workspace --lib

bootstrap:
	bash scripts/bootstrap.sh

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings

bench: bootstrap
	bash scripts/bootstrap-bench.sh
	cargo build --release -p middleman -p gateway -p loadtest
	$(ENV) ./target/release/exec-bench $(BENCH_ARGS)
	$(ENV) ./target/release/exec-bench --kernel deno $(BENCH_ARGS)
	$(ENV) ./target/release/exec-bench --kernel deno --starts 10
	$(ENV) ./target/release/exec-bench --kernel python3 --starts 10
	$(ENV) ./target/release/gateway-bench $(GATEWAY_BENCH_ARGS)
	$(ENV) ./target/release/allocate-bench
	$(ENV) ./target/release/collab-bench
	$(ENV) ./target/release/graph-bench
	$(MAKE) bench-kube

# Watchman's Kubernetes backend at scale against the local control plane (docs/benchmarks.md).
bench-kube: bootstrap
	cargo build --release -p watchman -p loadtest --bin watchman --bin kube-bench
	$(ENV) bash scripts/with-kube-cluster.sh ./target/release/kube-bench $(KUBE_BENCH_ARGS)
