# The Next Chat image: next-chat-server (the entrypoint), the console client
# next-chat, the black-box test runner next-chat-autotest and next-chat-bench.
#
#   docker build -t next-chat .
#   docker run --rm -p 5000:5000 -e NEXT_CHAT_AUTH=jwt -e NEXT_CHAT_JWT_SECRET=... next-chat
#   docker run --rm --entrypoint next-chat-autotest next-chat --url http://HOST:5000/next-chat
#
# Authentication is an explicit choice here (see ENV below). The default is
# auth header in protected mode: the header is the user id, so the server
# answers only clients on the container's own loopback (docker exec, or
# --network container:ID); any other client, the host's published port
# included, gets 403 saying what to set. Serve others with NEXT_CHAT_AUTH=jwt
# and a key, or, behind a proxy that authenticates its users and sets the
# header (and only then), NEXT_CHAT_ALLOW_REMOTE_HEADER_AUTH=true.
#
# The build command below is scripts/test's build command plus --release;
# deploy/check.py fails when the two differ, so they cannot drift apart.

# The builder and the runtime must share a Debian release (glibc).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target directory between builds
# (locked: two builds at once take turns rather than share a target dir); the
# binaries are copied out of the target cache in the same step because a cache
# mount is not part of the image. The release profile keeps line tables for
# backtraces; here they move to separate files (/out/debug, the debug-symbols
# stage) and the binaries keep only their symbol table, which names functions
# in a panic's backtrace.
#
# Cargo tells a changed source by its mtime being newer than the cached
# output's, and the target cache outlives the sources it was built from: a
# fresh clone makes every file new (everything rebuilt), and a file edited
# before the previous build finished looks older than its output (a stale
# binary kept). So the mtimes are set from content instead: target/sources.sha256
# lists what the cached output was built from; a source listed there unchanged
# gets an old mtime, any other one the current time. Only the crates whose
# sources changed are rebuilt, and the dependencies come from the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    find crates web -type f -print0 | sort -z | xargs -0 sha256sum > /tmp/sources.sha256 \
    && find crates web -type f -exec touch -d @1 {} + \
    && if [ -f target/sources.sha256 ]; then \
         { grep -vxFf target/sources.sha256 /tmp/sources.sha256 || true; } | cut -c67- | xargs -r -d '\n' touch; \
       else \
         find crates web -type f -exec touch {} +; \
       fi \
    && cargo build --locked --release --workspace --bins \
    && mkdir -p /out/bin /out/debug \
    && cp target/release/next-chat-server target/release/next-chat \
          target/release/next-chat-autotest target/release/next-chat-bench /out/bin/ \
    && cp /tmp/sources.sha256 target/sources.sha256 \
    && for bin in /out/bin/*; do \
         debug="/out/debug/${bin##*/}.debug" \
         && objcopy --only-keep-debug "$bin" "$debug" \
         && objcopy --strip-debug --add-gnu-debuglink="$debug" "$bin"; \
       done

# The binaries' debug info, for symbolizing a crash report of a released image:
#   DOCKER_BUILDKIT=1 docker build --target debug-symbols --output type=local,dest=debug .
FROM scratch AS debug-symbols
COPY --from=build /out/debug/ /

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# On top of the base (glibc and libgcc_s, all the binaries link) only the
# binaries, the release's CA bundle (for TLS backends such as rediss:// or
# MySQL over TLS, should they be enabled) and a numeric, non-root user, so
# that Kubernetes' runAsNonRoot can verify it.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN groupadd --system --gid 10001 nextchat \
    && useradd --system --uid 10001 --gid nextchat --home-dir /var/lib/next-chat \
       --shell /usr/sbin/nologin nextchat \
    && install -d -o nextchat -g nextchat -m 0750 /var/lib/next-chat
COPY --from=build /out/bin/ /usr/local/bin/
# Embedded mode keeps its SQLite file (sqlite://next-chat.db) in the working
# directory; mount a volume here to keep it.
WORKDIR /var/lib/next-chat
USER 10001:10001
ENV NEXT_CHAT_LISTEN=0.0.0.0:5000
# Listening on every address, the image states how it authenticates: header
# mode answering loopback clients only (see the top of this file).
ENV NEXT_CHAT_AUTH=header NEXT_CHAT_ALLOW_REMOTE_HEADER_AUTH=false
EXPOSE 5000
# SIGTERM starts the graceful shutdown (Close with allowReconnect, drain, exit 0
# within 10 s); the server handles it itself as PID 1.
STOPSIGNAL SIGTERM
ENTRYPOINT ["next-chat-server"]
