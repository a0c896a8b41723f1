# The appliance as a container: `docker run … appliance train`.
# Needs a registry that serves the Rust and Debian images. The project's own
# CI machines have no registry; the node-operations issue adds an image built
# from local material and tests it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/appliance /usr/local/bin/appliance

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/appliance /usr/local/bin/appliance
ENTRYPOINT ["/usr/local/bin/appliance"]
