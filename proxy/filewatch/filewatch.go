// Package filewatch polls a configuration file by the sha256 of its
// content. Polling the content's hash, rather than watching inotify events,
// sees Kubernetes ConfigMap and Secret updates (an atomic swap of a symbolic
// link two levels up), editors that replace files, and bind mounts alike.
// The routing file and the API keys file both reload through it.
package filewatch

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"time"
)

// Load reads the file at path and parses it, and returns the sha256 of what
// it read too, even when parse fails: Poll's starting point. name says
// which file it is in errors ("the routing file (ROUTING_FILE)").
// Symbolic links are followed: a Kubernetes ConfigMap or Secret volume swaps
// its ..data link on update, and the file read is always the whole new one.
func Load[T any](path, name string, parse func([]byte) (T, error)) (T, [32]byte, error) {
	var zero T
	data, err := readCapped(path)
	if err != nil {
		return zero, [32]byte{}, fmt.Errorf("cannot read %s: %w", name, err)
	}
	sum := sha256.Sum256(data)
	v, err := parse(data)
	if err != nil {
		return zero, sum, fmt.Errorf("%s: %w", path, err)
	}
	return v, sum, nil
}

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
		data, err := readCapped(path)
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

// MaxSize is the most of a file read: the files' own parsers refuse far
// smaller ones (the routing file 1 MiB, the keys file 4 MiB), and a file
// past it is not read whole to find that out.
const MaxSize = 16 << 20

// readCapped reads path, at most MaxSize bytes of it.
func readCapped(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err == nil && len(data) > MaxSize {
		err = fmt.Errorf("larger than %d bytes", MaxSize)
	}
	return data, err
}
