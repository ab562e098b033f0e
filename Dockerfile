# Multi-stage build of both images (for users with Docker; our CI packs images without it).
#   docker build --target kvserver -t docker.io/kvcluster/kvserver:0.1.0 .
#   docker build --target operator -t docker.io/kvcluster/kvcluster-operator:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kvserver -p kvcluster-operator \
 && cp target/release/kvserver target/release/kvctl target/release/kvcluster-operator /usr/local/bin/

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/kvserver kv \
 && mkdir -p /var/lib/kvserver && chown kv /var/lib/kvserver

FROM runtime AS kvserver
COPY --from=build /usr/local/bin/kvserver /usr/local/bin/kvctl /usr/local/bin/
USER 10001
EXPOSE 8080 8081
VOLUME /var/lib/kvserver
ENTRYPOINT ["/usr/local/bin/kvserver"]

FROM runtime AS operator
COPY --from=build /usr/local/bin/kvcluster-operator /usr/local/bin/kvcluster-operator
USER 10001
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/kvcluster-operator"]
