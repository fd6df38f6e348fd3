// hello: the tiny HTTP server of kubenode's test image
// (localhost/kubenode-hello:test). It answers every request with
// "hello from <hostname>" on :8080, so a test can reach a pod's IP and a
// Service's ClusterIP. Built static (CGO_ENABLED=0) by the test.
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", host)
	})
	if err := http.ListenAndServe(":8080", nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
