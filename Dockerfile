# The Next Chat image: next-chat-server (the entrypoint), the console client
# next-chat, the black-box test runner next-chat-autotest and next-chat-bench.
#
#   docker build -t next-chat .
#   docker run --rm -p 5000:5000 next-chat
#   docker run --rm --entrypoint next-chat-autotest next-chat --url http://HOST:5000/next-chat
#
# The build command below is scripts/test's build command plus --release;
# deploy/check.py fails when the two differ, so they cannot drift apart.

# The builder and the runtime must share a Debian release (glibc).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target directory between builds
# (locked: two builds at once take turns rather than share a target dir); the
# binaries are copied out of the target cache in the same step because a cache
# mount is not part of the image. The release profile keeps line tables for
# backtraces; here they move to separate files (/out/debug, the debug-symbols
# stage) and the binaries keep only their symbol table, which names functions
# in a panic's backtrace. The target cache outlives the sources it was built
# from, and cargo takes a file as built when it is older than the cached
# output: a source copied in with an older mtime (edited before the previous
# build finished, say) would keep a stale binary. So the workspace's sources
# are touched first: whenever this step runs (the sources changed), the
# workspace crates are rebuilt, and the dependencies come from the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    find crates web -type f -exec touch {} + \
    && cargo build --locked --release --workspace --bins \
    && mkdir -p /out/bin /out/debug \
    && cp target/release/next-chat-server target/release/next-chat \
          target/release/next-chat-autotest target/release/next-chat-bench /out/bin/ \
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
EXPOSE 5000
# SIGTERM starts the graceful shutdown (Close with allowReconnect, drain, exit 0
# within 10 s); the server handles it itself as PID 1.
STOPSIGNAL SIGTERM
ENTRYPOINT ["next-chat-server"]
