package routing

import (
	"context"
	"fmt"
	"time"

	"github.com/batchgate/batchgate/proxy/filewatch"
)

// Load reads and parses the routing file at path, and returns its sha256
// too (filewatch.Load).
func Load(path string) (*File, [32]byte, error) {
	return filewatch.Load(path, "the routing file (ROUTING_FILE)", Parse)
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
