# batchgate: `make run` starts the system, `make test` runs every test.
# Both fetch what they need into .deps/ (git-ignored) and reuse it.

GO        ?= go
DEPS      := .deps
ORT_LIB   := $(DEPS)/onnxruntime/libonnxruntime.so.1
export ORT_LIBRARY ?= $(abspath $(ORT_LIB))
FUZZTIME  ?= 15s

.PHONY: run test deps tools check unit fuzz containers-test bench perf perf-full clean

run: deps
	scripts/run.sh

test: deps check unit fuzz containers-test

# Everything downloaded or generated, pinned and verified.
deps: tools $(ORT_LIB)
	@$(GO) mod download

tools:
	@scripts/install-tools.sh
	@scripts/build-k8s-tools.sh $(DEPS)/tools

$(ORT_LIB): scripts/fetch-onnxruntime.sh
	scripts/fetch-onnxruntime.sh $(DEPS)/onnxruntime

check:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 30m ./...

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME) ./runtime/wire

# Both images built from the Dockerfiles with podman on local bases, run as a pod.
containers-test:
	containers/test.sh

# Raw ONNX Runtime throughput per batch size: the reference for the stack.
bench: deps
	$(GO) build -o bin/runtime ./runtime
	bin/runtime bench -model "$$(bin/runtime fetch-model -dir $(DEPS)/models)" -ort-cache-dir $(DEPS)/ort-cache

# The perf harness (perf/): a quick sweep (about 3 minutes) and the whole grid.
perf: deps
	$(GO) run ./perf -quick

perf-full: deps
	$(GO) run ./perf

clean:
	rm -rf bin
