#!/bin/sh
# gen.sh [OUT]: generates the Go code of grpc_service.proto into OUT
# (default: this folder) with protoc (Debian's protobuf-compiler) and the
# plugins pinned as go.mod tools (protoc-gen-go, protoc-gen-go-grpc).
set -eu
cd "$(dirname "$0")"
out=${1:-.}
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bin/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc
protoc -I . \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  grpc_service.proto
