# syntax=docker/dockerfile:1
#
# flowlens container image: flowlens-collector, flowlens-enricher and flowlens-sink in one image.
#
#   docker build -t flowlens:local .
#   docker run --rm flowlens:local flowlens-sink --help
#
# The build needs BuildKit (the default builder of Docker >= 23 and of `docker compose`; with the
# legacy docker-compose 1.x set DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1): the cargo registry
# and target directory are cache mounts, so a rebuild after a source change recompiles only the
# changed crates.
#
# The collector embeds its eBPF programs (collector-ebpf, target bpfel-unknown-none), which
# collector/build.rs builds through aya-build with a nightly toolchain + rust-src and links with
# bpf-linker. bpf-linker 0.13 is built against LLVM 22 (Debian bookworm-security: llvm-22-dev).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

############################################################################################
# builder: stable Rust for the user-space binaries, nightly + rust-src + bpf-linker for eBPF
############################################################################################
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

# aya-build (collector/build.rs) runs `cargo +nightly`, so the eBPF objects are built with the
# nightly of the day the image is built.
ARG BPF_LINKER_VERSION=0.13.0

RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        llvm-22-dev libzstd-dev zlib1g-dev libssl-dev; \
    rm -rf /var/lib/apt/lists/*

RUN set -eux; \
    rustup toolchain install nightly --profile minimal --component rust-src; \
    rustup run nightly rustc --version

# Its own layer: the LLVM build of bpf-linker takes minutes and changes only with its version.
RUN --mount=type=cache,id=flowlens-cargo-registry,target=/usr/local/cargo/registry \
    set -eux; \
    PATH="/usr/lib/llvm-22/bin:${PATH}" LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
        cargo install "bpf-linker@${BPF_LINKER_VERSION}" --locked \
            --no-default-features --features llvm-22; \
    bpf-linker --version

WORKDIR /src
# The workspace (bench/ included: cargo must see every member's manifest for --locked, though
# only the three services are built; .dockerignore leaves out bench/results and deploy/).
COPY . .

# The target directory is a cache mount, so the binaries are copied out in the same step.
RUN --mount=type=cache,id=flowlens-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=flowlens-target,target=/src/target \
    set -eux; \
    export PATH="/usr/lib/llvm-22/bin:${PATH}"; \
    cargo build --release --locked \
        -p flowlens-collector -p flowlens-enricher -p flowlens-sink; \
    mkdir -p /out; \
    cp target/release/flowlens-collector target/release/flowlens-enricher \
       target/release/flowlens-sink /out/

############################################################################################
# runtime: the three binaries, the SQL files and the example configurations
############################################################################################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: the system's CAs for https:// ClickHouse and TLS Kafka; libssl3: librdkafka's
# TLS and SASL (linked against the system OpenSSL).
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
        libssl3; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 flowlens; \
    useradd --system --uid 10001 --gid flowlens --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin flowlens

COPY --from=builder /out/ /usr/local/bin/
# The sink embeds sql/migrations at build time (sink/build.rs); the files are shipped for
# reference and for the queries in sql/queries.
COPY sql/ /usr/share/flowlens/sql/
COPY collector/collector.example.toml enricher/enricher.example.toml sink/sink.example.toml \
     /etc/flowlens/

# Enricher and sink run unprivileged. The collector needs root with CAP_BPF, CAP_NET_ADMIN,
# CAP_PERFMON (+ CAP_SYS_ADMIN for other network namespaces): run it with `--user 0` and
# those capabilities (see docker-compose.yml).
USER flowlens:flowlens
# Every binary exits 2 on a configuration error; `--help` lists its options.
CMD ["flowlens-sink", "--help"]
