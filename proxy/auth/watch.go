package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"
)

// Run polls Config.File every Config.Poll and applies each new valid
// content (one whose sha256 differs from the last one seen, valid or not);
// a new invalid or unreadable content is logged and counted, and the
// current keys stay. Polling the content's hash, rather than watching
// inotify events, sees Secret and ConfigMap updates (an atomic swap of a
// symbolic link two levels up), editors that replace files, and bind mounts
// alike.
//
// Run runs on its caller's goroutine and returns when ctx ends, or at once
// when Config.File is "". Call it once.
func (a *Authenticator) Run(ctx context.Context) {
	if a.cfg.File == "" {
		return
	}
	t := time.NewTicker(a.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.poll()
	}
}

// poll reads the file once and applies or rejects a new content.
func (a *Authenticator) poll() {
	path := a.cfg.File
	data, err := os.ReadFile(path)
	if err != nil {
		// A missing file during a swap is transient: report it once per
		// distinct state.
		sum := sha256.Sum256([]byte("unreadable: " + err.Error()))
		if sum != a.last {
			a.last = sum
			a.rejectFile(fmt.Errorf("cannot read the keys file: %w", err))
		}
		return
	}
	sum := sha256.Sum256(data)
	if bytes.Equal(sum[:], a.last[:]) {
		return
	}
	a.last = sum
	keys, err := Parse(data)
	if err != nil {
		a.rejectFile(fmt.Errorf("%s: %w", path, err))
		return
	}
	a.apply(keys)
	a.reloads.applied.Inc()
}

func (a *Authenticator) rejectFile(err error) {
	a.reloads.rejected.Inc()
	a.cfg.Log.Error("keys file rejected; keeping the current keys: fix the file and it is read again",
		"error", err.Error(), "keys", a.state.Load().keys.Len(), "poll", a.cfg.Poll.String())
}
