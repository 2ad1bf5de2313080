# The operator's image: a static binary on an empty (scratch) base, run as non-root.
# Multi-arch: linux/amd64 and linux/arm64.
#
# Images cannot be built on the machine this project is developed on (no container
# engine runs there), so this file is not exercised by the tests; build it where Docker
# or BuildKit runs. One architecture:
#   docker build -t <registry>/kong-fallback-operator:0.1.0 .
# Both, pushed as one multi-arch image (what .github/workflows/release.yml does on a tag):
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t <registry>/kong-fallback-operator:0.1.0 --push .
#
# NB: the build stage runs on the *target* platform (under QEMU emulation when that is
# not the builder's own), not cross-compiled: aws-lc (TLS) compiles C code, and a native
# musl toolchain per architecture is what Debian ships. Slower under emulation, but the
# same steps on both architectures.

FROM rust:1.95.0-bookworm AS build
# Set by BuildKit from --platform: amd64 or arm64 (the build stage's own architecture
# when a builder does not set it).
ARG TARGETARCH
RUN case "${TARGETARCH:-$(dpkg --print-architecture)}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH '${TARGETARCH}' (amd64 or arm64)" >&2; exit 1 ;; \
    esac > /rust-target
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake clang \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The toolchain file pins 1.95.0, the base image's own toolchain; add the target to it.
COPY rust-toolchain.toml .
RUN rustup target add "$(cat /rust-target)"
COPY . .
# The test-support workspace member is not built into the image.
RUN target="$(cat /rust-target)" \
    && cargo build --release --locked --target "$target" \
      -p kong-fallback-operator --bin kong-fallback-operator \
    && cp "target/$target/release/kong-fallback-operator" /kong-fallback-operator

FROM scratch
# CA roots for the object stores' and the control plane's TLS (pki mode uses the policy's CA).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /kong-fallback-operator /usr/local/bin/kong-fallback-operator
USER 65532:65532
EXPOSE 8080 9443
ENTRYPOINT ["/usr/local/bin/kong-fallback-operator"]
CMD ["run"]
