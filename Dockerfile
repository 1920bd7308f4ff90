# syntax=docker/dockerfile:1
# Beam's container image: one static binary on distroless, running as a
# non-root user, `beam server` by default (see examples/compose).
#
#   docker build -t beam .
#   docker run -p 8080:8080 -p 80:80 -p 3478:3478/udp -v beam-data:/var/lib/beam \
#     beam server --data /var/lib/beam --domain example.com --https-addr ""

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X beam.dev/beam/internal/version.override=${VERSION}" \
	-o /out/beam ./cmd/beam \
	&& mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/beam /usr/bin/beam
# The data directory belongs to the image's user, so a new volume does too.
COPY --from=build --chown=65532:65532 /out/data /var/lib/beam
USER 65532:65532
WORKDIR /var/lib/beam
VOLUME ["/var/lib/beam"]
# Coordinator and relay, edge HTTP and HTTPS, STUN, the zone's DNS.
EXPOSE 8080/tcp 80/tcp 443/tcp 3478/udp 53/udp 53/tcp
ENTRYPOINT ["/usr/bin/beam"]
CMD ["server", "--data", "/var/lib/beam"]
