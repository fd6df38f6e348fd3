// Package filewatch polls a configuration file by the sha256 of its
// content. Polling the content's hash, rather than watching inotify events,
// sees Kubernetes ConfigMap and Secret updates (an atomic swap of a symbolic
// link two levels up), editors that replace files, and bind mounts alike.
// The routing file and the API keys file both reload through it.
package filewatch

import (
	"context"
	"crypto/sha256"
	"os"
	"time"
)

// Poll reads path every interval and calls changed with each new content:
// one whose sha256 differs from the last one seen (last is the sha256 of
// the content the caller already uses). A read error is passed to
// unreadable once per distinct error, not at every poll: a file missing
// for a moment during a swap is reported once.
//
// Poll runs on its caller's goroutine, calls changed and unreadable on it,
// one at a time, and returns when ctx ends.
func Poll(ctx context.Context, path string, interval time.Duration, last [32]byte,
	changed func(data []byte), unreadable func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			if sum := sha256.Sum256([]byte("unreadable: " + err.Error())); sum != last {
				last = sum
				unreadable(err)
			}
			continue
		}
		if sum := sha256.Sum256(data); sum != last {
			last = sum
			changed(data)
		}
	}
}
