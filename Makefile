# batchgate: `make run` starts the system, `make test` runs every test.
# Both fetch what they need into .deps/ (git-ignored) and reuse it.
#
#   make run    needs only what serving needs: Go modules, ONNX Runtime and the
#               model (deps-run). No root, no Kubernetes tools.
#   make test   also installs and builds the test tools (deps-test): apt
#               packages as root, helm, kube-apiserver, kubectl and etcd.

GO        ?= go
DEPS      := .deps
ORT_LIB   := $(DEPS)/onnxruntime/libonnxruntime.so.1
SWAGGER_UI := proxy/docs/swagger-ui/swagger-ui-bundle.js
export ORT_LIBRARY ?= $(abspath $(ORT_LIB))
FUZZTIME  ?= 10s
# Every parser a client (or the runtime's socket) reaches: package:target.
FUZZ_TARGETS := runtime/wire:FuzzDecode proxy/oip:FuzzParseInfer proxy/imageprep:FuzzInspect \
                proxy/imageprep:FuzzVP8LHuffmanCost proxy/imageprep:FuzzPNG \
                proxy/imageprep/turbojpeg:FuzzDecode \
                proxy/httpapi:FuzzReadImage proxy/httpapi:FuzzRequestParams proxy/httpapi:FuzzHandler \
                proxy/httpapi:FuzzTraceHeaders proxy/auth:FuzzCheck proxy/oipgrpc:FuzzDecodeInfer
# JPEG decodes through libjpeg-turbo (cgo, static libturbojpeg.a), PNG's
# image data inflates through libdeflate (static libdeflate.a) and lossy
# WebP decodes through libwebp (static libwebp.a) when their headers and
# libraries are installed (Debian: libturbojpeg0-dev, libdeflate-dev and
# libwebp-dev; `make test` installs them), else with Go's decoders (the
# nojpegturbo, nolibdeflate and nolibwebp tags, with a note).
# Recursive (=), so it is checked again after deps-test installed it; the
# caller's own GOFLAGS are kept.
GOFLAGS_USER := $(GOFLAGS)
export GOFLAGS = $(strip $(GOFLAGS_USER) $(shell scripts/cgo-tags.sh))

.PHONY: run run-ab test deps deps-run deps-test tools check unit fuzz smoke containers-test bench perf perf-full clean

run: deps-run
	scripts/run.sh

# Two model versions (fp32 and int8) behind one proxy, 90/10 (docs/versions.md).
run-ab: deps-run
	scripts/run-ab.sh

test: deps-test check smoke unit fuzz containers-test

# What serving needs: pinned and verified.
deps-run: $(ORT_LIB) $(SWAGGER_UI)
	@$(GO) mod download

# What the tests need on top: system packages (apt, as root) and the
# Kubernetes tools built from their Go modules.
deps-test: deps-run tools

deps: deps-test

tools:
	@scripts/install-tools.sh
	@scripts/build-tools.sh $(DEPS)/tools
	@scripts/build-jaeger.sh $(DEPS)/tools

$(ORT_LIB): scripts/fetch-onnxruntime.sh
	scripts/fetch-onnxruntime.sh $(DEPS)/onnxruntime

# Swagger UI for /docs, embedded in the proxy (git-ignored; see its README.md).
$(SWAGGER_UI): scripts/fetch-swagger-ui.sh
	scripts/fetch-swagger-ui.sh proxy/docs/swagger-ui

check:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

# The packages that run whole clusters (./helm: real nodes, KEDA,
# Prometheus, controller-manager; ./internal/kubenode) run after the others,
# one at a time: beside them on 2 cores, the timing checks of the chaos and
# gateway tests starve.
CLUSTER_PKGS := ./helm ./internal/kubenode
unit:
	$(GO) test -race -count=1 -timeout 45m $$($(GO) list ./... | grep -v -e '/helm$$' -e '/internal/kubenode$$')
	@echo "unit: the cluster tests, one package at a time"
	$(GO) test -race -count=1 -timeout 45m -p 1 $(CLUSTER_PKGS)
	@echo "unit: the JPEG, PNG and WebP paths again with Go's decoders (-tags nojpegturbo,nolibdeflate,nolibwebp), and the proxy without cgo"
	$(GO) test -race -count=1 -tags nojpegturbo,nolibdeflate,nolibwebp ./proxy/imageprep/... ./proxy/classify/...
	CGO_ENABLED=0 $(GO) build -o /dev/null ./proxy

# Each fuzz target for FUZZTIME, after its seed corpus; internal/fuzzrun
# fails on a finding, not on Go 1.26's end-of-fuzztime race (go.dev/issue/75804).
fuzz:
	@GO=$(GO) $(GO) run ./internal/fuzzrun -fuzztime $(FUZZTIME) $(FUZZ_TARGETS)

# The README's first command, run as a user runs it: `make run` on a free
# port, a prediction with curl, then Ctrl-C (SIGINT to its process group).
smoke:
	scripts/smoke-make-run.sh

# Both images built from the Dockerfiles with podman on local bases, run as a pod.
containers-test:
	containers/test.sh

# Raw ONNX Runtime throughput at batch 1, 4 and 8, fp32 against int8 (each
# variant's model, pinned or generated offline as `make run` gets it), with
# load time, RSS, the kernels ONNX Runtime runs and the int8 model's
# agreement with the fp32 one: the reference for the stack. Three rounds, the
# variants in turn, each batch size keeping its best (about 1.5 minutes).
bench: deps-run
	$(GO) build -o bin/runtime ./runtime
	bin/runtime bench -variants fp32,int8 -rounds 3 -dir $(DEPS)/models -ort-cache-dir $(DEPS)/ort-cache

# The perf harness (perf/): a quick sweep with the image-size axis (about 6
# minutes) and the whole grid.
perf: deps-run
	$(GO) run ./perf -quick

perf-full: deps-run
	$(GO) run ./perf

clean:
	rm -rf bin
