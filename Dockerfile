# Builds the volt binary. Used by docker-compose.yml; no Docker engine runs in CI here.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p volt

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/volt /usr/local/bin/volt
ENV ELECTRIC_STORAGE_DIR=/var/lib/volt
VOLUME /var/lib/volt
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/volt"]
