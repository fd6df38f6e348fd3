package filewatch

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// TestPoll: each new content is reported once, the content the caller
// started from never, and a missing file once per distinct error.
func TestPoll(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a")
	synctest.Test(t, func(t *testing.T) {
		var got []string
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			Poll(ctx, path, time.Second, sha256.Sum256([]byte("a")),
				func(data []byte) { got = append(got, string(data)) },
				func(error) { got = append(got, "unreadable") })
		}()
		for _, step := range []func(){
			func() {}, // "a": what the caller has
			func() { write("b") },
			func() {}, // unchanged
			func() { os.Remove(path) },
			func() {}, // still missing: reported once
			func() { write("b") },
			func() { write("a") },
		} {
			step()
			time.Sleep(time.Second)
			synctest.Wait()
		}
		cancel()
		<-done
		if want := []string{"b", "unreadable", "b", "a"}; !slices.Equal(got, want) {
			t.Errorf("reported %q, want %q", got, want)
		}
	})
}
