package routing

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	"github.com/batchgate/batchgate/proxy/filewatch"
)

// Load reads and parses the routing file at path, and returns its sha256
// too. Symbolic links are followed: a Kubernetes ConfigMap volume swaps its
// ..data link on update, and the file read is always the whole new one.
func Load(path string) (*File, [32]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("cannot read the routing file (ROUTING_FILE): %w", err)
	}
	sum := sha256.Sum256(data)
	f, err := Parse(data)
	if err != nil {
		return nil, sum, fmt.Errorf("%s: %w", path, err)
	}
	return f, sum, nil
}

// Watch polls path every interval (filewatch.Poll) and calls apply with
// each new valid content, and rejected with the error of each new invalid
// or unreadable one; the caller keeps its current configuration then. last
// is the sha256 of the content already applied.
//
// Watch runs on its caller's goroutine and returns when ctx ends; apply and
// rejected are called on that goroutine, one at a time.
func Watch(ctx context.Context, path string, interval time.Duration, last [32]byte,
	apply func(*File), rejected func(error)) {
	filewatch.Poll(ctx, path, interval, last, func(data []byte) {
		f, err := Parse(data)
		if err != nil {
			rejected(fmt.Errorf("%s: %w\nkeeping the current routing; fix the file and it is read again within %v", path, err, interval))
			return
		}
		apply(f)
	}, func(err error) {
		rejected(fmt.Errorf("cannot read the routing file %s: %w; keeping the current routing", path, err))
	})
}
