package testenv

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// AllocatedBy is the bytes f allocates, garbage included
// (runtime.MemStats.TotalAlloc, which never goes down). The count is the
// whole process's: run f on the calling goroutine with nothing else
// running. The allocation-bound tests of every parser a client reaches use
// it (docs/memory.md).
func AllocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// FillTo repeats unit between prefix and suffix until the whole is about
// size bytes: a generated worst-case input of that size.
func FillTo(prefix, unit, suffix string, size int) []byte {
	return []byte(prefix + strings.Repeat(unit, max(1, (size-len(prefix)-len(suffix))/len(unit))) + suffix)
}

// RaceEnabled reports whether the test binary runs with the race
// detector, which multiplies allocations and time.
func RaceEnabled() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" {
				return s.Value == "true"
			}
		}
	}
	return false
}
