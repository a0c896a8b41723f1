# The appliance as a container: `docker run … appliance train`.
#
# The runtime base is a build argument. The default, an NVIDIA CUDA runtime
# image, provides cuBLAS and NCCL; the host's NVIDIA container runtime
# (`--gpus all`) provides the driver and NVML. The binary itself needs only
# glibc (libc, libm, libgcc_s) and opens the CUDA driver, cuBLAS, NCCL and
# NVML at run time when they are present.
ARG RUNTIME_BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# Target `prebuilt`: wrap a binary built on the host (placed in the build
# context as `appliance`) without a Rust stage. Tests use this with a
# locally built base image, since no registry serves a Rust image there.
# It comes first so that building it never touches the Rust stage.
FROM ${RUNTIME_BASE} AS prebuilt
COPY appliance /usr/local/bin/appliance
ENTRYPOINT ["/usr/local/bin/appliance"]

# The documented path for users: build in a Rust stage, copy the binary alone.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin appliance

FROM ${RUNTIME_BASE} AS runtime
COPY --from=build /src/target/release/appliance /usr/local/bin/appliance
ENTRYPOINT ["/usr/local/bin/appliance"]
