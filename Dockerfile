# The operator's image: a static binary on an empty (scratch) base, run as non-root.
#
# Images cannot be built on the machine this project is developed on (no container
# engine runs there), so this file is not exercised by the tests; build it where Docker
# or BuildKit runs:
#   docker build -t <registry>/kong-fallback-operator:0.1.0 .

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake clang \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The test-support workspace member is not built into the image.
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p kong-fallback-operator --bin kong-fallback-operator \
    && cp target/x86_64-unknown-linux-musl/release/kong-fallback-operator /kong-fallback-operator

FROM scratch
# CA roots for the object stores' and the control plane's TLS (pki mode uses the policy's CA).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /kong-fallback-operator /usr/local/bin/kong-fallback-operator
USER 65532:65532
EXPOSE 8080 9443
ENTRYPOINT ["/usr/local/bin/kong-fallback-operator"]
CMD ["run"]
