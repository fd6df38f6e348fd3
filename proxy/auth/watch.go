package auth

import (
	"context"
	"fmt"

	"github.com/batchgate/batchgate/proxy/filewatch"
)

// Run polls Config.File every Config.Poll and applies each new valid
// content (one whose sha256 differs from the last one seen, valid or not:
// filewatch.Poll); a new invalid or unreadable content is logged and
// counted, and the current keys stay.
//
// Run runs on its caller's goroutine and returns when ctx ends, or at once
// when Config.File is "". Call it once.
func (a *Authenticator) Run(ctx context.Context) {
	if a.cfg.File == "" {
		return
	}
	filewatch.Poll(ctx, a.cfg.File, a.cfg.Poll, a.last, func(data []byte) {
		keys, err := Parse(data)
		if err != nil {
			a.rejectFile(fmt.Errorf("%s: %w", a.cfg.File, err))
			return
		}
		a.apply(keys)
		a.reloads.applied.Inc()
	}, func(err error) {
		a.rejectFile(fmt.Errorf("cannot read the keys file: %w", err))
	})
}

func (a *Authenticator) rejectFile(err error) {
	a.reloads.rejected.Inc()
	a.cfg.Log.Error("keys file rejected; keeping the current keys: fix the file and it is read again",
		"error", err.Error(), "keys", a.state.Load().keys.Len(), "poll", a.cfg.Poll.String())
}
