module github.com/batchgate/batchgate

go 1.26.0

require (
	github.com/VictoriaMetrics/metrics v1.45.0
	github.com/hashicorp/golang-lru/v2 v2.0.7
	github.com/valyala/fasthttp v1.78.0
	github.com/yalue/onnxruntime_go v1.27.0
	go.uber.org/automaxprocs v1.6.0
	golang.org/x/image v0.48.0
)

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/molecule-man/go-brrr v1.3.1 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
	github.com/valyala/fastrand v1.1.0 // indirect
	github.com/valyala/histogram v1.2.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
