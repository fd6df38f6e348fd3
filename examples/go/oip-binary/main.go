// Command oip-binary classifies images with the Open Inference Protocol v2
// binary-data extension: one request holds a JSON header followed by the
// images themselves, with no base64.
//
//	go run ./examples/go/oip-binary -url http://localhost:9999 photo.jpg [more.jpg ...]
//
// The body is the JSON inference header, then, for the BYTES input, each image
// as a 4-byte little-endian length and its bytes. The header's length goes in
// the Inference-Header-Content-Length header and the binary part's in the
// input's binary_data_size parameter. All images go in one request (shape
// [N]); the "classification" output parameter asks for the top k of each as
// "score:index:label" strings, the score being the logit.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

type tensor struct {
	Name       string         `json:"name"`
	Shape      []int          `json:"shape,omitempty"`
	Datatype   string         `json:"datatype,omitempty"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

type inferRequest struct {
	Inputs  []tensor `json:"inputs"`
	Outputs []tensor `json:"outputs"`
}

type inferResponse struct {
	ModelName string `json:"model_name"`
	Outputs   []struct {
		Name  string   `json:"name"`
		Shape []int    `json:"shape"`
		Data  []string `json:"data"`
	} `json:"outputs"`
}

func main() {
	url := flag.String("url", "http://localhost:9999", "batchgate server")
	model := flag.String("model", "resnet50", "model name")
	k := flag.Int("k", 5, "top classes per image")
	timeout := flag.Duration("timeout", 30*time.Second, "HTTP timeout for the whole request")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: oip-binary [flags] IMAGE...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	client := &http.Client{Timeout: *timeout}
	if err := run(client, *url, *model, *k, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "oip-binary:", err)
		os.Exit(1)
	}
}

func run(client *http.Client, url, model string, k int, paths []string) error {
	// The binary part: each image as <uint32 little-endian length><bytes>.
	var bin bytes.Buffer
	for _, p := range paths {
		img, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read image: %w", err)
		}
		bin.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(img))))
		bin.Write(img)
	}
	header, err := json.Marshal(inferRequest{
		Inputs: []tensor{{
			Name: "image", Shape: []int{len(paths)}, Datatype: "BYTES",
			Parameters: map[string]any{"binary_data_size": bin.Len()},
		}},
		Outputs: []tensor{{Name: "classification", Parameters: map[string]any{"classification": k}}},
	})
	if err != nil {
		return fmt.Errorf("encode inference header: %w", err)
	}

	endpoint := fmt.Sprintf("%s/v2/models/%s/infer", strings.TrimSuffix(url, "/"), model)
	req, err := http.NewRequest(http.MethodPost, endpoint, bytes.NewReader(append(header, bin.Bytes()...)))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(header)))
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("infer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		// batchgate's errors are always {"error": "..."}.
		return fmt.Errorf("POST %s: %s: %s", endpoint, resp.Status, bytes.TrimSpace(body))
	}

	var out inferResponse
	if err := json.Unmarshal(body, &out); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	if len(out.Outputs) != 1 || len(out.Outputs[0].Shape) != 2 || out.Outputs[0].Shape[0] != len(paths) ||
		len(out.Outputs[0].Data) != len(paths)*out.Outputs[0].Shape[1] {
		return errors.New("unexpected response: want one classification output of shape [N,k]")
	}
	o := out.Outputs[0]
	per := o.Shape[1]
	for i, p := range paths {
		fmt.Printf("%s (%s):\n", p, out.ModelName)
		for _, s := range o.Data[i*per : (i+1)*per] {
			fmt.Println("  " + s) // "score:index:label"
		}
	}
	return nil
}
